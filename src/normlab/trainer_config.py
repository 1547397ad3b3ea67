"""The ``trainer`` config node, checked before anything starts: precision x hardware x strategy.

Lightning accepts combinations it cannot run and fails later (or silently changes them: fp16 AMP
on a CPU becomes bf16). :func:`validate_trainer_config` refuses them in one line at start, before
any data is read. The FSDP2 strategy's arguments (``trainer.strategy.*`` of ``trainer=fsdp``) are a
typed dataclass, :class:`FSDPArgs`, the one place their defaults live; ``FSDP2Strategy`` takes
exactly these fields.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from lightning.pytorch import Trainer

from normlab.errors import ConfigError
from normlab.optimizer import FUSED_UNDER_FSDP2
from normlab.typed_config import plain, to_dataclass

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed")
FSDP1_NAMES = ("fsdp", "fsdp_cpu_offload")
DType = Literal["float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FSDP2_TARGET = "normlab.distributed.FSDP2Strategy"


@dataclass(frozen=True)
class FSDPArgs:
    """``trainer.strategy.*`` of ``trainer=fsdp`` (see normlab.distributed.FSDP2Strategy)."""

    sharding: Literal["full", "hybrid"] = "full"  # full: across all ranks | hybrid: within a node
    layers_per_unit: int = 1  # Transformer blocks per FSDP unit
    reshard_after_forward: bool = True  # free gathered weights after forward (ZeRO-3)
    param_dtype: DType | None = None  # FSDP2 mixed precision: compute dtype of gathered weights
    reduce_dtype: DType | None = None  # dtype of the gradient reduction
    save_distributed_checkpoint: bool = True  # sharded checkpoint directory (false: one full file)

    def validate(self) -> None:
        if self.layers_per_unit < 1:
            raise ConfigError(
                f"trainer.strategy.layers_per_unit: must be an integer >= 1 (blocks per FSDP unit), "
                f"got {self.layers_per_unit!r}"
            )


@dataclass(frozen=True)
class TrainerArgs:
    """Types and ranges of the Lightning ``Trainer`` arguments normlab's ``trainer`` configs set (any
    other ``Trainer`` argument may be added with ``+trainer.<name>=...`` and is passed through).
    Defaults here are Lightning's defaults; configs/trainer/default.yaml sets normlab's."""

    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str | int = "32-true"  # checked against PRECISIONS below
    max_steps: int = -1
    max_epochs: int | None = None
    max_time: str | None = None
    val_check_interval: int | float | None = None
    check_val_every_n_epoch: int | None = 1
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int | None = None
    num_sanity_val_steps: int | None = None
    deterministic: bool | None = None
    enable_model_summary: bool | None = None
    default_root_dir: str | None = None

    def validate(self) -> None:
        checks = [
            ("num_nodes", self.num_nodes, 1),
            ("max_steps", self.max_steps, -1),
            ("accumulate_grad_batches", self.accumulate_grad_batches, 1),
            ("log_every_n_steps", self.log_every_n_steps, 1),
            ("num_sanity_val_steps", self.num_sanity_val_steps, -1),
            ("check_val_every_n_epoch", self.check_val_every_n_epoch, 1),
            ("max_epochs", self.max_epochs, -1),
        ]
        for key, value, minimum in checks:
            if value is not None and value < minimum:
                raise ConfigError(f"trainer.{key}: must be >= {minimum}, got {value}")
        for key in ("val_check_interval", "limit_val_batches", "limit_test_batches", "gradient_clip_val"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"trainer.{key}: must be >= 0, got {value}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ConfigError(f"trainer.devices: must be >= 1 or 'auto', got {self.devices}")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(f"trainer.devices: must be an integer >= 1 or 'auto', got {self.devices!r}")


def trainer_args(node: Any) -> TrainerArgs:
    """The typed check of a ``trainer`` node; other Lightning ``Trainer`` arguments pass through."""
    values = {k: v for k, v in dict(plain(node)).items() if k != "_target_"}
    known = {f.name for f in fields(TrainerArgs)}
    passed_by_run = {"self", "callbacks", "logger", "plugins"}
    accepted = set(inspect.signature(Trainer.__init__).parameters) - passed_by_run
    unknown = sorted(k for k in values if k not in known and k not in accepted)
    if unknown:
        raise ConfigError(
            f"trainer.{unknown[0]}: unknown key; not an argument of lightning's Trainer (see "
            "configs/trainer/default.yaml for the ones normlab sets)"
        )
    return to_dataclass(TrainerArgs, {k: v for k, v in values.items() if k in known}, "trainer")


def fsdp_args(values: Any) -> FSDPArgs:
    return to_dataclass(FSDPArgs, values, "trainer.strategy")


def validate_trainer_config(node: Any) -> Any:
    """Refuse, in one line, combinations the hardware or strategy cannot run (not mid-run).

    Checked: precision is one of ``PRECISIONS``; a GPU accelerator needs a visible GPU; ``16-mixed``
    needs CUDA (on CPU Lightning would silently switch to bf16) and is refused by FSDP2; bf16 on a
    GPU needs bf16 support; Lightning's FSDP1 (``strategy: fsdp``) is GPU-only; FSDP2's own mixed
    precision excludes Lightning's; under torchrun ``num_nodes x devices`` must equal WORLD_SIZE.
    Returns the node unchanged.
    """
    trainer_args(node)  # types and ranges first: Lightning would fail on them mid-run
    precision = node.get("precision", "32-true")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision: {precision!r} is not supported; choose one of "
            f"{', '.join(PRECISIONS)} (16-mixed: CUDA only)"
        )
    device = device_type(node.get("accelerator", "auto"))
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
    target = strategy_target(node)
    if isinstance(strategy, str) and strategy in FSDP1_NAMES and device != "cuda":
        raise ConfigError(
            f"trainer.strategy: Lightning's FSDP1 strategy {strategy!r} runs only on CUDA GPUs; "
            "use trainer=fsdp (FSDP2, runs on CPU and GPU)"
        )
    if target == FSDP2_TARGET:
        args = fsdp_args({k: v for k, v in dict(plain(strategy)).items() if k != "_target_"})
        if precision == "16-mixed":
            raise ConfigError(
                "trainer.precision: 16-mixed is not supported under FSDP2; use bf16-mixed, "
                "or trainer.strategy.param_dtype=float16 with precision=32-true"
            )
        if args.param_dtype is not None and precision != "32-true":
            raise ConfigError(
                f"trainer.strategy.param_dtype: FSDP2 mixed precision replaces trainer.precision="
                f"{precision}; set trainer.precision=32-true or param_dtype=null"
            )
    elif target.endswith("ModelParallelStrategy"):
        raise ConfigError("trainer.strategy: plain ModelParallelStrategy is not supported; use trainer=fsdp")
    _check_world_size(node)
    return node


def strategy_target(node: Any) -> str:
    """The ``_target_`` of the trainer node's strategy, or "" for a strategy given by name."""
    strategy = node.get("strategy", "auto")
    return strategy.get("_target_", "") if hasattr(strategy, "get") else ""


def refuse_fused_adamw_under_fsdp2(node: Any, fused: bool) -> None:
    """``optim.fused=true`` with ``trainer=fsdp``: one line before any data work, not a silent swap."""
    if fused and strategy_target(node) == FSDP2_TARGET:
        raise ConfigError(FUSED_UNDER_FSDP2)


def device_type(accelerator: Any) -> str:
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
