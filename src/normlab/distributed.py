"""Distributed, memory and precision policies, built from the ``trainer`` config; never in model code.

The task's ``configure_model`` hands the freshly built (meta-device) network to :func:`parallelize`,
which applies, in torchtitan's order, activation checkpointing per block and then, under
``trainer=fsdp``, FSDP2 ``fully_shard`` per unit of blocks and on the root, before any memory is
allocated; the declared init then runs on the sharded parameters (``models/init.py`` samples each
full tensor from the seeded generator and keeps this rank's shard, so sharded and unsharded runs
start from the same weights).

Why FSDP2 through Lightning's ``ModelParallelStrategy`` (see ``docs``/README "Scale"): Lightning's
FSDP1 ``FSDPStrategy`` refuses CPU accelerators and torch's FSDP1 needs an accelerator device, so it
could never be tested on the CPU/gloo CI machine; ``fully_shard`` in ``configure_model`` runs on CPU
with gloo and on GPUs with NCCL, and writes sharded (DCP) checkpoint directories on both.

Also here: :func:`validate_trainer_config` (precision x hardware x strategy, one-line ``ConfigError``
at start instead of a crash mid-run), reading sharded checkpoints for ``eval.py``, and the Hydra
resolvers that give all ranks of one job one run directory with only rank 0 writing into it.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from normlab.errors import ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
SHARDINGS = ("full", "hybrid")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FSDP1_NAMES = ("fsdp", "fsdp_cpu_offload")
SHARDED_METADATA = "meta.pt"  # what Lightning writes beside the DCP shards (non-tensor state)
# Entry points a task may call on the root network besides forward (FSDP2 must unshard for them).
ROOT_METHODS = ("encode", "decode", "hidden", "logits")


# --- the FSDP2 strategy -------------------------------------------------------------------------
class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism: ``ModelParallelStrategy`` with tensor-parallel size 1.

    Lightning's default (``data_parallel_size="auto"`` = nodes, ``tensor_parallel_size="auto"`` =
    devices per node) would give no sharding on one node; here the data-parallel size is always the
    world size. ``parallelize`` reads the fields below, so the YAML maps one-to-one onto them.

    Args:
        sharding: ``full`` shards every unit across all ranks (ZeRO-3); ``hybrid`` shards within a
            node and replicates across nodes (HSDP: a 2-D mesh nodes x devices), trading memory for
            intra-node all-gathers only.
        layers_per_unit: Transformer blocks per FSDP unit (1 = the block is the wrap unit). Every
            unit costs an all-gather forward and backward and a reduce-scatter, so deep, narrow
            models on slow links run faster with a few blocks per unit.
        reshard_after_forward: free the gathered weights of a unit after its forward (less memory,
            one more all-gather in backward). The root unit keeps FSDP's own choice.
        param_dtype / reduce_dtype: FSDP2's ``MixedPrecisionPolicy`` (``bfloat16``, ``float16``,
            ``float32`` or null): compute in ``param_dtype`` on gathered weights, reduce gradients
            in ``reduce_dtype``, keep fp32 sharded master weights. Use with ``precision=32-true``.
        save_distributed_checkpoint: each rank writes its shard (a checkpoint directory); false
            gathers full weights on rank 0 into one file.
    """

    def __init__(
        self,
        sharding: str = "full",
        layers_per_unit: int = 1,
        reshard_after_forward: bool = True,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        save_distributed_checkpoint: bool = True,
    ) -> None:
        check_fsdp_args(
            sharding=sharding,
            layers_per_unit=layers_per_unit,
            param_dtype=param_dtype,
            reshard_after_forward=reshard_after_forward,
            reduce_dtype=reduce_dtype,
            save_distributed_checkpoint=save_distributed_checkpoint,
        )
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
        )
        self.sharding, self.layers_per_unit = sharding, layers_per_unit
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype
        self._shard_mesh: Any = None

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # FSDP over every rank
        super().setup_environment()

    def shard_mesh(self) -> Any:
        """1-D mesh over all ranks (full) or 2-D (replicate across nodes, shard within a node)."""
        if self._shard_mesh is None:
            if self.sharding == "full" or self.num_nodes == 1:
                self._shard_mesh = self.device_mesh["data_parallel"]
            else:
                from torch.distributed.device_mesh import init_device_mesh

                self._shard_mesh = init_device_mesh(
                    self.root_device.type,
                    (self.num_nodes, self.num_processes),
                    mesh_dim_names=("replicate", "shard"),
                )
        return self._shard_mesh

    def mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=DTYPES.get(self.param_dtype or ""), reduce_dtype=DTYPES.get(self.reduce_dtype or "")
        )


def check_fsdp_args(**kwargs: Any) -> None:
    """One-line errors for ``trainer.strategy.*`` of ``trainer=fsdp`` (also used before instantiation)."""
    import inspect

    valid = [p for p in inspect.signature(FSDP2Strategy.__init__).parameters if p != "self"]
    for key, value in kwargs.items():
        where = f"trainer.strategy.{key}"
        if key not in valid:
            raise ConfigError(f"{where}: unknown key; valid keys are: {', '.join(valid)}")
        if key == "sharding" and value not in SHARDINGS:
            raise ConfigError(f"{where}: {value!r} is not a sharding; choose one of {', '.join(SHARDINGS)}")
        if key == "layers_per_unit" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}: must be an integer >= 1 (blocks per FSDP unit), got {value!r}")
        if key in ("param_dtype", "reduce_dtype") and value is not None and value not in DTYPES:
            raise ConfigError(f"{where}: {value!r} is not a dtype; choose one of {', '.join(DTYPES)} or null")
        if key in ("reshard_after_forward", "save_distributed_checkpoint") and not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")


# --- what configure_model applies ---------------------------------------------------------------
def transformer_blocks(net: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(container, index) of every Transformer block, the unit of checkpointing and sharding."""
    from normlab.models.transformer import transformer_stacks

    return [(stack.layers, i) for stack in transformer_stacks(net) for i in range(len(stack.layers))]


def apply_activation_checkpointing(net: nn.Module) -> nn.Module:
    """Recompute each block's activations in backward (non-reentrant torch checkpoint)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    for layers, i in transformer_blocks(net):
        layers[i] = checkpoint_wrapper(layers[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return net


def shard_units(net: nn.Module, layers_per_unit: int) -> list[list[nn.Module]]:
    """Consecutive blocks of one stack, ``layers_per_unit`` at a time: the FSDP units."""
    units: list[list[nn.Module]] = []
    last = None
    for layers, i in transformer_blocks(net):
        if layers is not last or len(units[-1]) == layers_per_unit:
            units.append([])
        units[-1].append(layers[i])
        last = layers
    return units


def apply_fsdp(net: nn.Module, strategy: FSDP2Strategy) -> nn.Module:
    """``fully_shard`` every unit of blocks, then the root (the module ``training_step`` calls)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh, policy = strategy.shard_mesh(), strategy.mp_policy()
    for unit in shard_units(net, strategy.layers_per_unit):
        fully_shard(
            unit if len(unit) > 1 else unit[0],
            mesh=mesh,
            mp_policy=policy,
            reshard_after_forward=strategy.reshard_after_forward,
        )
    fully_shard(net, mesh=mesh, mp_policy=policy)
    for name in ROOT_METHODS:
        if callable(getattr(net, name, None)):
            register_fsdp_forward_method(net, name)
    return net


def parallelize(net: nn.Module, task: Any) -> nn.Module:
    """Apply the run's memory / distribution policies to ``net`` (still on the meta device)."""
    if task.model_cfg.activation_checkpointing:
        apply_activation_checkpointing(net)
    strategy = _strategy(task)
    if isinstance(strategy, FSDP2Strategy):
        apply_fsdp(net, strategy)
    elif isinstance(strategy, ModelParallelStrategy):
        raise ConfigError(
            "trainer.strategy: plain ModelParallelStrategy is not supported; use trainer=fsdp "
            "(normlab.distributed.FSDP2Strategy)"
        )
    return net


def materialize_device(task: Any) -> torch.device:
    """Where ``configure_model`` allocates the weights: the strategy's device (the GPU of this rank,
    before Lightning moves the module), or the module's own device outside a Trainer."""
    strategy = _strategy(task)
    return strategy.root_device if strategy is not None else task.device


def _strategy(task: Any) -> Any:
    trainer = getattr(task, "_trainer", None)
    return None if trainer is None else trainer.strategy


# --- checking the trainer node before anything starts -------------------------------------------
def validate_trainer_config(node: Any) -> Any:
    """Refuse, in one line, combinations the hardware or strategy cannot run (not mid-run).

    Checked: precision is one of ``PRECISIONS``; a GPU accelerator needs a visible GPU; ``16-mixed``
    needs CUDA (on CPU Lightning would silently switch to bf16) and is refused by FSDP2; bf16 on a
    GPU needs bf16 support; Lightning's FSDP1 (``strategy: fsdp``) is GPU-only; FSDP2's own mixed
    precision excludes Lightning's; under torchrun ``num_nodes x devices`` must equal WORLD_SIZE.
    """
    precision = node.get("precision", "32-true")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision: {precision!r} is not supported; choose one of "
            f"{', '.join(PRECISIONS)} (16-mixed: CUDA only)"
        )
    device = _device_type(node.get("accelerator", "auto"))
    if precision == "16-mixed" and device != "cuda":
        raise ConfigError(
            f"trainer.precision: 16-mixed (fp16 AMP) needs a CUDA GPU, this run is on {device}; "
            "use bf16-mixed or 32-true"
        )
    if precision.startswith("bf16") and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"trainer.precision: {precision} needs a GPU with bfloat16 support; use 16-mixed or 32-true"
        )
    strategy = node.get("strategy", "auto")
    target = strategy.get("_target_", "") if hasattr(strategy, "get") else ""
    if isinstance(strategy, str) and strategy in FSDP1_NAMES and device != "cuda":
        raise ConfigError(
            f"trainer.strategy: Lightning's FSDP1 strategy {strategy!r} runs only on CUDA GPUs; "
            "use trainer=fsdp (FSDP2, runs on CPU and GPU)"
        )
    if target.endswith("FSDP2Strategy"):
        args = {k: v for k, v in strategy.items() if k != "_target_"}
        check_fsdp_args(**args)
        if precision == "16-mixed":
            raise ConfigError(
                "trainer.precision: 16-mixed is not supported under FSDP2; use bf16-mixed, "
                "or trainer.strategy.param_dtype=float16 with precision=32-true"
            )
        if args.get("param_dtype") is not None and precision != "32-true":
            raise ConfigError(
                f"trainer.strategy.param_dtype: FSDP2 mixed precision replaces trainer.precision="
                f"{precision}; set trainer.precision=32-true or param_dtype=null"
            )
    elif target.endswith("ModelParallelStrategy"):
        raise ConfigError("trainer.strategy: plain ModelParallelStrategy is not supported; use trainer=fsdp")
    _check_world_size(node)
    return node


def _device_type(accelerator: Any) -> str:
    """The device type a Trainer with this ``accelerator`` will use: cuda, mps or cpu."""
    name = str(accelerator)
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator: {name!r} but no CUDA GPU is visible; use trainer=cpu "
                "(or trainer.accelerator=cpu)"
            )
        return "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return name


def _check_world_size(node: Any) -> None:
    """Under an external launcher (torchrun sets WORLD_SIZE) Lightning needs nodes x devices = world."""
    world = os.environ.get("WORLD_SIZE")
    devices, nodes = node.get("devices", 1), node.get("num_nodes", 1)
    if world is None or not isinstance(devices, int) or not isinstance(nodes, int):
        return
    if devices * nodes != int(world):
        raise ConfigError(
            f"trainer.devices x trainer.num_nodes = {devices} x {nodes} but the launcher started "
            f"{world} processes; set trainer.num_nodes=<nodes> trainer.devices=<processes per node> "
            "(scripts/torchrun.sh does this)"
        )


# --- checkpoints: files and sharded directories -------------------------------------------------
def is_sharded_checkpoint(path: Any) -> bool:
    """A DCP directory written by FSDP2 (``save_distributed_checkpoint=true``)."""
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


def read_checkpoint_meta(path: Any) -> dict[str, Any]:
    """Everything but the tensors: a file's whole dict, or a sharded directory's ``meta.pt``."""
    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise ConfigError(
                f"ckpt_path: {path} is a directory without {SHARDED_METADATA}; pass a .ckpt file "
                "or a sharded checkpoint directory written by trainer=fsdp"
            )
        path = path / SHARDED_METADATA
    return torch.load(str(path), map_location="cpu", weights_only=False)


def read_checkpoint_extras(path: Any) -> dict[str, Any]:
    """The ``normlab`` entry of a checkpoint (task class, data config, tokenizer for eval.py)."""
    from normlab.tasks.base import CHECKPOINT_KEY

    return read_checkpoint_meta(path).get(CHECKPOINT_KEY) or {}


def load_task(task_cls: type, path: Any, overrides: dict[str, Any]) -> Any:
    """Rebuild a task from a checkpoint file or sharded directory, unsharded in this process."""
    if not Path(path).is_dir():
        return task_cls.load_from_checkpoint(str(path), map_location="cpu", **overrides)
    meta = read_checkpoint_meta(path)
    task = task_cls(**{**meta["hyper_parameters"], **overrides})
    task.on_load_checkpoint(meta)
    task.configure_model()
    load_sharded_weights(task, path)
    return task


def load_sharded_weights(module: nn.Module, path: Any) -> None:
    """Read a DCP directory's model weights into an ordinary (unsharded) module, in one process.

    DCP stores every tensor with its global shape, so the shards of any world size reassemble
    here; keys go through ``get_model_state_dict`` so wrapper prefixes (activation checkpointing)
    match the names FSDP saved.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    state = {"state_dict": get_model_state_dict(module)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(module, state["state_dict"])


# --- one run directory per job, written by rank 0 -----------------------------------------------
def launch_rank() -> int:
    """This process's global rank as the launcher announces it, before any process group exists.

    torchrun sets RANK, srun SLURM_PROCID; Lightning's own launcher sets LOCAL_RANK / NODE_RANK for
    the processes it starts. Anything non-zero means "not rank 0".
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0) or 0) + int(os.environ.get("LOCAL_RANK", 0) or 0)


def run_id(explicit: Any = None) -> str:
    """The run directory's name, identical on every rank and node of one job.

    First match: ``run_id=...`` on the command line, ``NORMLAB_RUN_ID``, ``<SLURM_JOB_ID>_<SLURM_STEP_ID>``
    inside an srun step (the step id keeps several runs of one allocation apart), torchrun's
    rendezvous id (``--rdzv-id``; random per ``--standalone`` job), else this process's start time
    (single-process runs only: separately launched ranks would not agree on it).
    """
    env = os.environ
    if explicit not in (None, ""):
        return str(explicit)
    if env.get("NORMLAB_RUN_ID"):
        return env["NORMLAB_RUN_ID"]
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        return f"{env['SLURM_JOB_ID']}_{env['SLURM_STEP_ID']}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return env["TORCHELASTIC_RUN_ID"]
    return _start_time()


@functools.cache
def _start_time() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def register_resolvers() -> None:
    """``${normlab.run_id:...}``, ``${normlab.rank_zero:value}`` (null on other ranks) and
    ``${normlab.rank_zero_log:path}`` (``os.devnull`` on other ranks) for configs/hydra/default.yaml."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("normlab.run_id", run_id, replace=True)
    OmegaConf.register_new_resolver(
        "normlab.rank_zero", lambda value: value if launch_rank() == 0 else None, replace=True
    )
    OmegaConf.register_new_resolver(
        "normlab.rank_zero_log", lambda path: path if launch_rank() == 0 else os.devnull, replace=True
    )
