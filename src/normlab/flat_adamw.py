"""AdamW with every parameter of a group in one flat buffer, updated in cache-sized windows.

Why: at depth 1000 a model has ~12,000 small parameter tensors (64 x 256 at most). torch's AdamW runs
about eight elementwise ops per tensor, so the per-parameter loop pays ~100,000 op dispatches per
step, and ``foreach`` is no cheaper on the CPU (its CPU kernels loop over the tensors the same way).
Here the parameters of each group are views into one contiguous buffer, the moments are two more
such buffers, and the update runs over windows of ``window`` elements (64 Ki floats by default:
parameter, gradient, both moments and the denominator fit in L2 together), so a step is a few
thousand dispatches over cache-resident data instead of a hundred thousand over tiny tensors.
``benchmarks/optimizer_step.py`` measures it against loop, foreach and fused AdamW.

Numerics: every element goes through exactly the operations of torch's per-parameter AdamW
(``torch.optim.adam._single_tensor_adam`` with decoupled weight decay, in the same order, with the
same Python-float bias corrections), so the result is bit-identical to ``torch.optim.AdamW`` with
``foreach=False`` (tests/unit/test_flat_adamw.py checks parameters and moments with
``torch.equal`` over several steps, windows that straddle parameters, lr changes, skipped
gradients and checkpoint round trips). Windows only regroup elements; no reduction is involved.

Contract (checked, never silent): parameters must stay views of the flat buffer, so build this
optimizer *after* the model is on its device and nothing may replace ``param.data`` afterwards
(``load_state_dict`` and ``copy_`` are fine); every step verifies it and raises otherwise. The
state is torch's own format (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter), so checkpoints
move freely between this optimizer and ``torch.optim.AdamW``. A parameter without a gradient in a
step is skipped exactly as torch skips it (its step count and moments stay), by a per-parameter
update of that step. Not supported, and refused at construction: amsgrad, maximize, a tensor lr,
parameters of mixed device or dtype within a group, DTensors (FSDP2 keeps torch's loop).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

WINDOW = 1 << 16  # elements per window: 5 x 256 KiB of working set in fp32


@dataclass(frozen=True)
class Window:
    """[start, end) of the flat buffers, and where its gradient comes from: either several whole
    parameters ``members``, copied into ``scratch_views`` (views of a shared scratch, shaped like
    them, that together make ``gathered``), or the slice [lo, hi) of one parameter's flattened
    gradient (then ``members`` has one index and ``gathered`` is None)."""

    start: int
    end: int
    members: list[int]
    scratch_views: list[Tensor]
    gathered: Tensor | None
    lo: int = 0
    hi: int = 0


@dataclass
class FlatGroup:
    """One param group's flat storage and its window plan."""

    params: list[Tensor]
    param: Tensor  # the flat parameter buffer; every param is a view of it
    exp_avg: Tensor
    exp_avg_sq: Tensor
    steps: Tensor  # every param's step count; state[p]["step"] is a 0-d view of it
    offsets: list[tuple[int, int]]  # [start, end) of each param in the flat buffers
    windows: list[Window]
    data_ptrs: list[int]
    denom_scratch: Tensor
    uniform_step: int | None = 0  # the common step count of all params, None if they differ


def supports(params: list[Tensor]) -> bool:
    """True when the flat optimizer can hold these parameters (one CPU device, one float dtype,
    plain dense tensors)."""
    if not params or any(hasattr(p, "device_mesh") or p.is_sparse for p in params):
        return False
    first = params[0]
    return (
        first.device.type == "cpu"
        and first.is_floating_point()
        and all(p.device == first.device and p.dtype == first.dtype for p in params)
    )


def adamw_update(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, d: Tensor, step: int, group: dict[str, Any]
) -> None:
    """One AdamW update of ``p`` in place (``d``: scratch of p's size), op for op as
    ``torch.optim.adam._single_tensor_adam`` (decoupled weight decay, no amsgrad, float lr)."""
    lr, (beta1, beta2) = _scalar(group["lr"]), (_scalar(b) for b in group["betas"])
    eps, weight_decay = group["eps"], group["weight_decay"]
    if weight_decay != 0:
        p.mul_(1 - lr * weight_decay)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    torch.sqrt(v, out=d)
    d.div_(bias_correction2_sqrt).add_(eps)
    p.addcdiv_(m, d, value=-step_size)


class FlatAdamW(torch.optim.AdamW):
    def __init__(
        self,
        params: Iterable[Any],
        *,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float = 0.01,
        window: int = WINDOW,
    ) -> None:
        if isinstance(lr, Tensor):
            raise ValueError("FlatAdamW needs a float lr, not a tensor (use torch.optim.AdamW)")
        self.window = int(window)
        self.flat: list[FlatGroup] = []
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=False)

    # --- building the flat storage ------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("amsgrad") or group.get("maximize"):
            raise ValueError("FlatAdamW supports neither amsgrad nor maximize; use torch.optim.AdamW")
        if group["params"] and not supports(group["params"]):
            raise ValueError(
                "FlatAdamW needs the parameters of a group on one CPU device with one float dtype "
                "(no DTensor); use torch.optim.AdamW for these"
            )
        self.flat.append(self._flatten(group["params"]))

    def _flatten(self, params: list[Tensor]) -> FlatGroup:
        if not params:
            empty = torch.empty(0)
            return FlatGroup([], empty, empty, empty, empty, [], [], [], empty)
        offsets, start = [], 0
        for p in params:
            offsets.append((start, start + p.numel()))
            start += p.numel()
        first = params[0]
        flat = torch.empty(start, dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for p, (a, b) in zip(params, offsets, strict=True):
                flat[a:b].copy_(p.detach().reshape(-1))
                p.data = flat[a:b].view_as(p)
        exp_avg, exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)
        steps = torch.zeros(len(params), dtype=torch.float32)  # torch keeps float32 step tensors
        for i, (p, (a, b)) in enumerate(zip(params, offsets, strict=True)):
            self.state[p] = {
                "step": steps[i],
                "exp_avg": exp_avg[a:b].view_as(p),
                "exp_avg_sq": exp_avg_sq[a:b].view_as(p),
            }
        windows = plan_windows(params, offsets, self.window)
        width = max(w.end - w.start for w in windows)
        return FlatGroup(
            params=list(params),
            param=flat,
            exp_avg=exp_avg,
            exp_avg_sq=exp_avg_sq,
            steps=steps,
            offsets=offsets,
            windows=windows,
            data_ptrs=[p.data_ptr() for p in params],
            denom_scratch=torch.empty(width, dtype=flat.dtype, device=flat.device),
        )

    # --- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, flat in zip(self.param_groups, self.flat, strict=True):
            self._check_views(flat)
            grads = [p.grad for p in flat.params]
            if flat.uniform_step is not None and all(g is not None for g in grads):
                self._step_windows(group, flat, grads)
            else:
                self._step_each(group, flat, grads)
        return loss

    def _check_views(self, flat: FlatGroup) -> None:
        for i, (p, ptr) in enumerate(zip(flat.params, flat.data_ptrs, strict=True)):
            if p.data_ptr() != ptr:
                raise RuntimeError(
                    f"FlatAdamW: parameter {i} of shape {tuple(p.shape)} no longer lives in the "
                    "optimizer's flat buffer (its .data was replaced after the optimizer was built); "
                    "build the optimizer after moving or replacing parameters"
                )

    def _step_windows(self, group: dict[str, Any], flat: FlatGroup, grads: list[Tensor]) -> None:
        flat.steps.add_(1)
        flat.uniform_step = step = flat.uniform_step + 1
        for w in flat.windows:
            if w.gathered is not None:  # several whole parameters: gather their gradients
                torch._foreach_copy_(w.scratch_views, [grads[i] for i in w.members])
                g = w.gathered
            else:
                g = grads[w.members[0]].reshape(-1)[w.lo : w.hi]
            adamw_update(
                flat.param[w.start : w.end],
                g,
                flat.exp_avg[w.start : w.end],
                flat.exp_avg_sq[w.start : w.end],
                flat.denom_scratch[: w.end - w.start],
                step,
                group,
            )

    def _step_each(self, group: dict[str, Any], flat: FlatGroup, grads: list[Tensor | None]) -> None:
        """Per parameter, with its own step count: parameters without a gradient are skipped."""
        for p, g, (a, b) in zip(flat.params, grads, flat.offsets, strict=True):
            if g is None:
                continue
            state = self.state[p]
            state["step"] += 1
            d = torch.empty(b - a, dtype=p.dtype, device=p.device)
            adamw_update(
                flat.param[a:b],
                g.reshape(-1),
                flat.exp_avg[a:b],
                flat.exp_avg_sq[a:b],
                d,
                int(state["step"].item()),
                group,
            )
        flat.uniform_step = _common_step(flat.steps)

    # --- checkpoints ----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, then the loaded moments are copied into the flat buffers (torch would
        leave them as separate tensors, which the windows would not see)."""
        super().load_state_dict(state_dict)
        for flat in self.flat:
            for i, (p, (a, b)) in enumerate(zip(flat.params, flat.offsets, strict=True)):
                state = self.state[p]
                for key, buffer in (("exp_avg", flat.exp_avg), ("exp_avg_sq", flat.exp_avg_sq)):
                    view = buffer[a:b].view_as(p)
                    if key in state:
                        view.copy_(state[key])
                    else:
                        view.zero_()
                    state[key] = view
                flat.steps[i].copy_(state["step"] if "step" in state else 0.0)
                state["step"] = flat.steps[i]
            flat.uniform_step = _common_step(flat.steps)


def _scalar(x: Any) -> float:
    """A tensor lr or beta (as a scheduler may set) as the Python float torch's loop uses."""
    return x.item() if isinstance(x, Tensor) else x


def _common_step(steps: Tensor) -> int | None:
    """The step count all parameters share, or None when some skipped a step."""
    if steps.numel() == 0:
        return 0
    first = int(steps[0].item())
    return first if bool((steps == steps[0]).all()) else None


def plan_windows(params: list[Tensor], offsets: list[tuple[int, int]], window: int) -> list[Window]:
    """Windows aligned to parameter boundaries: consecutive whole parameters up to ``window``
    elements share one (their gradients are gathered with one ``_foreach_copy_``), a parameter on its
    own is read in place, and one larger than ``window`` is cut into slices of ``window``."""
    scratch = torch.empty(window, dtype=params[0].dtype, device=params[0].device)
    windows: list[Window] = []
    run: list[int] = []

    def close_run() -> None:
        if not run:
            return
        start, end = offsets[run[0]][0], offsets[run[-1]][1]
        if len(run) == 1:
            windows.append(Window(start, end, list(run), [], None, 0, end - start))
        else:
            views = [scratch[offsets[i][0] - start : offsets[i][1] - start].view_as(params[i]) for i in run]
            windows.append(Window(start, end, list(run), views, scratch[: end - start]))
        run.clear()

    for i, (a, b) in enumerate(offsets):
        size = b - a
        if size > window:
            close_run()
            for lo in range(0, size, window):
                hi = min(lo + window, size)
                windows.append(Window(a + lo, a + hi, [i], [], None, lo, hi))
        else:
            if run and b - offsets[run[0]][0] > window:
                close_run()
            run.append(i)
    close_run()
    return [w for w in windows if w.end > w.start]
