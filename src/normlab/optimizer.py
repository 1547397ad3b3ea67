"""The optimizer every task builds, its learning-rate schedule, the gradient norm of a step and the
clip by that norm.

Its own module, free of Lightning, so that what a training step costs can be measured (and reused,
e.g. by ``benchmarks/peers.py``) without the trainer: the tasks, the divergence guard and the
benchmarks import it from here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from normlab import flat_adamw
from normlab.config import OptimConfig
from normlab.errors import ConfigError

FUSED_UNDER_FSDP2 = (
    "optim.fused: torch's fused AdamW is not used under FSDP2 (on DTensor parameters its first step "
    "grows much faster than the model; README 'Scale'); drop optim.fused=true or use trainer=ddp"
)


def global_grad_norm(module: nn.Module) -> torch.Tensor | None:
    """The 2-norm of all gradients of ``module`` (over every shard), or None before any backward.

    A 0-d tensor on the gradients' device, so logging it does not force a host sync."""
    return grad_norm_of(list(module.parameters()))


def grad_norm_of(params: list[nn.Parameter]) -> torch.Tensor | None:
    """The 2-norm of the gradients of ``params`` (reduced over FSDP2 shards), or None if none has one.

    Bit-identical to ``torch.nn.utils.get_total_norm``, which it calls unless every gradient is a
    plain dense tensor on one CPU or CUDA device in one dtype (normlab's case without FSDP2). Then
    it runs what torch would run for that single group, the per-tensor ``_foreach_norm`` and the
    norm of the stacked norms, without torch's regrouping and a ``.to(device)`` per tensor, ~12,000
    calls at depth 1000 (``benchmarks/optimizer_step.py`` times both; the README has the numbers)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if _one_foreach_group(grads):
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2: reduce over the shards
        norm = norm.full_tensor()
    return norm


def _one_foreach_group(tensors: list[torch.Tensor]) -> bool:
    """True when torch's ``get_total_norm`` would put all of ``tensors`` in one group and take its
    ``foreach`` kernel for it: plain (not DTensor or other subclass) dense tensors of one dtype
    on one CPU or CUDA device. Checked on every call, so a contract that no caller can break
    silently."""
    first = tensors[0]
    device, dtype = first.device, first.dtype
    if device.type not in ("cpu", "cuda"):
        return False
    return all(
        type(t) is torch.Tensor and t.device == device and t.dtype == dtype and t.layout == torch.strided
        for t in tensors
    )


def clip_grads_with_norm(params: list[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """``torch.nn.utils.clip_grads_with_norm_``, bit-identical, skipping the no-op case.

    When the norm lives on the CPU and the clip coefficient clamps to 1 (the norm is within
    ``max_norm``), nothing is multiplied: torch multiplies every gradient by exactly 1.0 then, only to
    avoid a device sync (its own comment says so), and ``x * 1.0 == x`` for every normal float, inf
    and nan. (A subnormal would become 0 under ``compute.flush_denormal``, but gradients computed in
    that mode hold none.) At depth 1000 that is ~12,000 multiplications skipped on every step that
    does not clip. When it clips, torch's own utility runs: calling its one ``_foreach_mul_``
    directly measured no faster (``benchmarks/optimizer_step.py``)."""
    coefficient = torch.clamp(float(max_norm) / (total_norm + 1e-6), max=1.0)  # torch's formula, op for op
    if total_norm.device.type == "cpu" and bool(coefficient == 1.0):
        return
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier on ``cfg.lr`` at optimizer step ``step``: linear warm-up, then the decay."""
    warmup = cfg.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1)) if step + 1 > max(warmup, 1) else 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters, weight decay on matrices only.

    Implementation, by where the parameters live (each measured in ``benchmarks/optimizer_step.py``):
    on the CPU, :class:`normlab.flat_adamw.FlatAdamW`, bit-identical to torch's per-parameter loop
    and faster for deep models of many small tensors; elsewhere (GPU) torch's ``foreach``
    AdamW, bit-identical to the loop on the CPU (tests/unit/test_optimizer.py). ``optim.fused=true``
    is torch's fused kernel (not bit-identical, so opt-in). Under FSDP2 (DTensor parameters) the
    plain loop is used: foreach/fused AdamW on DTensors pays a first step that grows much faster than
    the parameter count (README "Scale"); ``optim.fused=true`` there is refused in one line.

    Build it after the model is on its device: FlatAdamW makes the parameters views of its buffers.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    sharded = _has_dtensor(params)
    if cfg.fused and sharded:
        raise ConfigError(FUSED_UNDER_FSDP2)
    if cfg.fused:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    if flat_adamw.supports(params):  # one CPU device, one float dtype, no DTensor
        return flat_adamw.FlatAdamW(groups, **kwargs)
    return torch.optim.AdamW(groups, foreach=not sharded, **kwargs)


def _has_dtensor(params: list[torch.Tensor]) -> bool:
    """FSDP2 parameters are DTensors; foreach/fused AdamW pay a large first-step cost on them."""
    return any(hasattr(p, "device_mesh") for p in params)
