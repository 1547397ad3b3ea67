"""ProRes residual warm-up (Chen et al. 2026, "Progressive Residual Warmup for Language Model
Pretraining", arXiv 2603.05369; code github dandingsky/ProRes), for every norm strategy.

Each layer's residual contribution is multiplied by a scalar alpha(l, t) that warms up from 0 to 1,
deeper layers later ("early layers learn first"). The scalar sits where ProRes' Table 1 puts it, on
the term a residual module adds to the stream, after any branch-side norm::

    Pre-LN    x + alpha * F(Norm x)             Post-LN   Norm(x + alpha * F(x))
    Sandwich  x + alpha * Norm(F(Norm x))       DeepNorm  Norm(a_deepnorm * x + alpha * F_beta(x))
    LNS       x + alpha * F(Norm(x) / sqrt(l))

Here that place is :meth:`normlab.norms.base.Residual.gated`, which every strategy's residual
modules call; the strategy never knows whether a warm-up is on. One scalar per layer, shared by the
layer's sublayers (self-attention, cross-attention, FFN), as in the authors' code
(``hidden_states = residual + hidden_states * self.alpha`` in both sublayers). ``l = 1..L`` counts
layers of each stack separately (an encoder-decoder warms its encoder and decoder on their own).

Schedules (Table 5 of the paper; ``t`` = optimizer steps done, ``T`` = warm-up length of the first
layer, ``m`` = the stagewise floor), checked against ``torchrun_main.py`` of the authors' code,
where layer ``l`` ends its warm-up at ``linspace(T_total/L, T_total, L)[l-1] = T * l``
(``--prores_warmup_steps`` is ``T_total = T * L``):

    linear            min(t / (T l), 1)                 (the paper's default, T = 1000)
    linear-sqrt       min(t / (T l), 1)^(1/2)           (``sqrt`` in the authors' code)
    linear-square     min(t / (T l), 1)^2               (``square`` in the authors' code)
    equal             min(t / T, 1)                     every layer at once
    reverse           min(t / (T (L - l + 1)), 1)       deeper layers first
    stagewise-0       clip((t - T (l - 1)) / T, 0, 1)   one layer after the other
    stagewise-L       m + (1 - m) clip(...),  m = 1/L
    stagewise-sqrt-L  m = 1/sqrt(L)
    stagewise-sqrt-l  m = 1/sqrt(l)
    fix-L             1/L           fix-sqrt-L   1/sqrt(L)          fix-sqrt-l   1/sqrt(l)

``equal`` follows Table 5 (``T`` as written). The authors' code instead reuses the *total*
``--prores_warmup_steps`` for ``equal``, so their ablation's "equal" ran ``min(t / (T L), 1)``: set
``T = T_linear * L`` to reproduce it. With ``t = 0`` every non-fix alpha is 0 (as in the code, whose
first forward uses ``update_step = 0``). For ``t >= T L`` (``T`` for ``equal``) every alpha is exactly
1 and the model computes exactly what it computes without a warm-up (tested bit for bit for every
strategy); the fix-* schedules never end.

Progress lives in buffers (``step``, ``alpha_<stack>``), so it is checkpointed, resumed exactly and
present on every FSDP rank; :class:`normlab.callbacks.schedule.ScheduleCallback` drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn

from normlab.norms.base import Gate
from normlab.progress import ProgressDriven


class WarmupSchedule(StrEnum):
    LINEAR = "linear"
    LINEAR_SQRT = "linear-sqrt"
    LINEAR_SQUARE = "linear-square"
    EQUAL = "equal"
    REVERSE = "reverse"
    STAGEWISE_0 = "stagewise-0"
    STAGEWISE_L = "stagewise-L"
    STAGEWISE_SQRT_L = "stagewise-sqrt-L"
    STAGEWISE_SQRT_LAYER = "stagewise-sqrt-l"
    FIX_L = "fix-L"
    FIX_SQRT_L = "fix-sqrt-L"
    FIX_SQRT_LAYER = "fix-sqrt-l"


# alpha(layer, t, depth, T) with layer = 1..depth as a float64 tensor: one small function each
AlphaFn = Callable[[Tensor, float, int, float], Tensor]


def _ramp(t: float, end: Tensor) -> Tensor:
    return (t / end).clamp(0.0, 1.0)


def _stage(layer: Tensor, t: float, T: float) -> Tensor:
    """0 before layer ``layer``'s stage, rising linearly over its T steps, 1 after."""
    return ((t - T * (layer - 1)) / T).clamp(0.0, 1.0)


def linear(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _ramp(t, T * layer)


def linear_sqrt(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _ramp(t, T * layer).sqrt()


def linear_square(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _ramp(t, T * layer).square()


def equal(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _ramp(t, torch.full_like(layer, T))


def reverse(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _ramp(t, T * (depth - layer + 1))


def stagewise_0(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return _stage(layer, t, T)


def stagewise_depth(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    floor = 1.0 / depth
    return floor + (1.0 - floor) * _stage(layer, t, T)


def stagewise_sqrt_depth(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    floor = 1.0 / math.sqrt(depth)
    return floor + (1.0 - floor) * _stage(layer, t, T)


def stagewise_sqrt_layer(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    floor = layer.rsqrt()
    return floor + (1.0 - floor) * _stage(layer, t, T)


def fix_depth(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return torch.full_like(layer, 1.0 / depth)


def fix_sqrt_depth(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return torch.full_like(layer, 1.0 / math.sqrt(depth))


def fix_sqrt_layer(layer: Tensor, t: float, depth: int, T: float) -> Tensor:
    return layer.rsqrt()


SCHEDULES: dict[WarmupSchedule, AlphaFn] = {
    WarmupSchedule.LINEAR: linear,
    WarmupSchedule.LINEAR_SQRT: linear_sqrt,
    WarmupSchedule.LINEAR_SQUARE: linear_square,
    WarmupSchedule.EQUAL: equal,
    WarmupSchedule.REVERSE: reverse,
    WarmupSchedule.STAGEWISE_0: stagewise_0,
    WarmupSchedule.STAGEWISE_L: stagewise_depth,
    WarmupSchedule.STAGEWISE_SQRT_L: stagewise_sqrt_depth,
    WarmupSchedule.STAGEWISE_SQRT_LAYER: stagewise_sqrt_layer,
    WarmupSchedule.FIX_L: fix_depth,
    WarmupSchedule.FIX_SQRT_L: fix_sqrt_depth,
    WarmupSchedule.FIX_SQRT_LAYER: fix_sqrt_layer,
}


def prores_alpha(schedule: str, step: int, depth: int, T: int) -> list[float]:
    """alpha(l, t) for layers l = 1..depth at optimizer step ``step`` (float64 arithmetic)."""
    layers = torch.arange(1, depth + 1, dtype=torch.float64)
    return SCHEDULES[WarmupSchedule(schedule)](layers, float(max(step, 0)), depth, float(T)).tolist()


def warmup_end(schedule: str, depth: int, T: int) -> int | None:
    """The first step at which every alpha is 1 (None: the fix-* schedules never end)."""
    schedule = WarmupSchedule(schedule)
    if schedule.name.startswith("FIX"):
        return None
    return T if schedule is WarmupSchedule.EQUAL else T * depth


def sample_layers(depth: int) -> list[int]:
    """A few layers (1-based) worth logging: first, quartiles, last."""
    return sorted({1, depth, *(max(1, round(depth * q)) for q in (0.25, 0.5, 0.75))})


class LayerGate(Gate):
    """alpha(l, t) of one layer: reads the shared buffer at every call, so a buffer replaced by
    ``module.to(device)`` or a checkpoint load is always the one used."""

    def __init__(self, warmup: ResidualWarmup, stack: str, index: int) -> None:
        self.warmup, self.name, self.index = warmup, f"alpha_{stack}", index

    def __call__(self) -> Tensor:
        return getattr(self.warmup, self.name)[self.index]


class ResidualWarmup(nn.Module, ProgressDriven):
    """The per-layer scalars of every stack, as buffers, and the gates that read them."""

    schedule_prefix = "warmup"

    def __init__(self, schedule: str, T: int, depths: dict[str, int]) -> None:
        super().__init__()
        self.schedule, self.T = WarmupSchedule(schedule), int(T)
        self.depths = {stack: int(n) for stack, n in depths.items() if n}
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        for stack, depth in self.depths.items():
            self.register_buffer(f"alpha_{stack}", torch.zeros(depth, dtype=torch.float32))

    def gate(self, stack: str, layer: int) -> LayerGate:
        """The gate of layer ``layer`` (0-based) of ``stack``, shared by all its sublayers."""
        if not 0 <= layer < self.depths[stack]:
            raise IndexError(f"{stack} layer {layer} outside 0..{self.depths[stack] - 1}")
        return LayerGate(self, stack, layer)

    def alphas(self, stack: str, step: int) -> list[float]:
        return prores_alpha(self.schedule, step, self.depths[stack], self.T)

    @torch.no_grad()
    def apply_progress(self, step: int) -> None:
        self.step.fill_(step)
        logged = {"step": float(step)}
        for stack, depth in self.depths.items():
            buffer = getattr(self, f"alpha_{stack}")
            values = self.alphas(stack, step)
            buffer.copy_(torch.tensor(values, dtype=buffer.dtype))
            for layer in sample_layers(depth):
                logged[f"{stack}/alpha_l{layer}"] = values[layer - 1]
        self._logged = logged  # host-side copy: logging never reads the device buffers

    def reset_state(self) -> None:
        self.set_progress(0)

    def schedule_values(self) -> dict[str, float]:
        return dict(getattr(self, "_logged", {}))

    def describe(self) -> dict[str, Any]:
        step = 0 if self.step.is_meta else int(self.step)
        out: dict[str, Any] = {"schedule": str(self.schedule), "T": self.T, "step": step}
        for stack, depth in self.depths.items():
            end = warmup_end(self.schedule, depth, self.T)
            alphas = self.alphas(stack, step)
            out[stack] = {
                "layers": depth,
                "all_alpha_1_from_step": "never (fixed)" if end is None else end,
                "alpha_now": {f"l{layer}": alphas[layer - 1] for layer in sample_layers(depth)},
            }
        return out

    def extra_repr(self) -> str:
        return f"schedule={self.schedule}, T={self.T}, depths={self.depths}"
