"""Memory and distribution policies applied to a network before it has any memory; never in model code.

The task's ``configure_model`` hands the freshly built (meta-device) network to :func:`parallelize`
with the run's choices as explicit arguments: activation checkpointing per block (full, or a
selective policy that saves the matmul outputs and recomputes the cheap pointwise ops), then, under
``trainer=fsdp``, FSDP2 ``fully_shard`` per unit of blocks and on the root (torchtitan's order). The
declared init then runs on the sharded parameters (``models/init.py`` samples each full tensor from
the seeded generator and keeps this rank's shard, so sharded and unsharded runs start from the same
weights).

Why FSDP2 through Lightning's ``ModelParallelStrategy`` (README "Scale"): Lightning's FSDP1
``FSDPStrategy`` refuses CPU accelerators and torch's FSDP1 needs an accelerator device, so it could
never be tested on the CPU/gloo CI machine; ``fully_shard`` in ``configure_model`` runs on CPU with
gloo and on GPUs with NCCL, and writes sharded (DCP) checkpoint directories on both.

What the networks contribute: :func:`normlab.models.transformer.transformer_stacks` (the blocks, the
unit of checkpointing and sharding) and each network class's ``fsdp_entry_points`` (the methods a
task calls on the root besides ``forward``, e.g. ``encode``/``decode``, which FSDP2 must unshard for).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from normlab.checkpoints import swap_directories, write_failed
from normlab.errors import ConfigError
from normlab.models.transformer import transformer_stacks
from normlab.trainer_config import DTYPES, fsdp_args

Checkpointing = Literal["none", "full", "selective"]


# --- the FSDP2 strategy -------------------------------------------------------------------------
class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism: ``ModelParallelStrategy`` with tensor-parallel size 1.

    Lightning's default (``data_parallel_size="auto"`` = nodes, ``tensor_parallel_size="auto"`` =
    devices per node) would give no sharding on one node; here the data-parallel size is always the
    world size. The keyword arguments are :class:`normlab.trainer_config.FSDPArgs` (validated there,
    with their defaults), so the YAML maps one-to-one onto them:

    - ``sharding``: ``full`` shards every unit across all ranks (ZeRO-3); ``hybrid`` shards within a
      node and replicates across nodes (HSDP: a 2-D mesh nodes x devices);
    - ``layers_per_unit``: Transformer blocks per FSDP unit (1 = the block is the wrap unit). Every
      unit costs an all-gather forward and backward and a reduce-scatter, so deep, narrow models on
      slow links run faster with a few blocks per unit;
    - ``reshard_after_forward``: free the gathered weights of a unit after its forward;
    - ``param_dtype`` / ``reduce_dtype``: FSDP2's ``MixedPrecisionPolicy`` (with ``precision=32-true``);
    - ``save_distributed_checkpoint``: each rank writes its shard (a directory); false gathers full
      weights on rank 0 into one file.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.args = fsdp_args(kwargs)
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=self.args.save_distributed_checkpoint,
        )
        self._shard_mesh: Any = None

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # FSDP over every rank
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Sharded checkpoints are written into a temp directory beside the target, then swapped in
        (``normlab.checkpoints.swap_directories``), so ``last.ckpt`` is always a complete set of shards."""
        if not self.args.save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        target = Path(self.broadcast(str(filepath)))
        tmp = target.with_name(f".{target.name}.tmp")
        if self.is_global_zero and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier()
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
        except OSError as err:
            raise write_failed(target, err) from None
        self.barrier()
        if self.is_global_zero:
            swap_directories(tmp, target)
        self.barrier()

    def shard_mesh(self) -> Any:
        """1-D mesh over all ranks (full) or 2-D (replicate across nodes, shard within a node)."""
        if self._shard_mesh is None:
            if self.args.sharding == "full" or self.num_nodes == 1:
                self._shard_mesh = self.device_mesh["data_parallel"]
            else:
                self._shard_mesh = init_device_mesh(
                    self.root_device.type,
                    (self.num_nodes, self.num_processes),
                    mesh_dim_names=("replicate", "shard"),
                )
        return self._shard_mesh

    def mp_policy(self) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(
            param_dtype=DTYPES.get(self.args.param_dtype or ""),
            reduce_dtype=DTYPES.get(self.args.reduce_dtype or ""),
        )


# --- what configure_model applies ---------------------------------------------------------------
def transformer_blocks(net: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(container, index) of every Transformer block, the unit of checkpointing and sharding."""
    return [(stack.layers, i) for stack in transformer_stacks(net) for i in range(len(stack.layers))]


# ops whose outputs the selective policy keeps: the matmuls (the expensive part of a block); every
# other op (norms, GELU, residual adds, dropout, softmax scaling) is recomputed in backward
_SAVED_OPS = frozenset(
    getattr(torch.ops.aten, name).default
    for name in (
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)  # the attention kernels differ between torch builds
)


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def apply_activation_checkpointing(net: nn.Module, mode: Checkpointing = "full") -> nn.Module:
    """Recompute each block's activations in backward (non-reentrant torch checkpoint).

    ``full``: keep only each block's input (about half the memory at depth 1000, one extra forward).
    ``selective``: keep the matmul and attention outputs too and recompute only pointwise ops, so
    the extra work is small while the many small elementwise tensors are not stored.
    """
    if mode == "none":
        return net
    extra: dict[str, Any] = {}
    if mode == "selective":
        extra["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _selective_policy)
    for layers, i in transformer_blocks(net):
        layers[i] = checkpoint_wrapper(layers[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT, **extra)
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


def fsdp_entry_points(net: nn.Module) -> tuple[str, ...]:
    """The root methods a task calls besides ``forward``, as the network class declares them."""
    names = tuple(getattr(type(net), "fsdp_entry_points", ()))
    missing = [n for n in names if not callable(getattr(net, n, None))]
    if missing:
        raise TypeError(f"{type(net).__name__}.fsdp_entry_points names {missing}, which it does not define")
    return names


def apply_fsdp(net: nn.Module, strategy: FSDP2Strategy) -> nn.Module:
    """``fully_shard`` every unit of blocks, then the root (the module ``training_step`` calls)."""
    mesh, policy, args = strategy.shard_mesh(), strategy.mp_policy(), strategy.args
    for unit in shard_units(net, args.layers_per_unit):
        fully_shard(
            unit if len(unit) > 1 else unit[0],
            mesh=mesh,
            mp_policy=policy,
            reshard_after_forward=args.reshard_after_forward,
        )
    fully_shard(net, mesh=mesh, mp_policy=policy)
    for name in fsdp_entry_points(net):
        register_fsdp_forward_method(net, name)
    return net


def parallelize(net: nn.Module, *, activation_checkpointing: Checkpointing, strategy: Any) -> nn.Module:
    """Apply the run's memory / distribution policies to ``net`` (still on the meta device).

    ``strategy`` is the Trainer's strategy (None outside a Trainer)."""
    apply_activation_checkpointing(net, activation_checkpointing)
    if isinstance(strategy, FSDP2Strategy):
        apply_fsdp(net, strategy)
    elif isinstance(strategy, ModelParallelStrategy):
        raise ConfigError(
            "trainer.strategy: plain ModelParallelStrategy is not supported; use trainer=fsdp "
            "(normlab.distributed.FSDP2Strategy)"
        )
    return net
