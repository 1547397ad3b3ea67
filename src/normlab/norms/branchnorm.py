"""BranchNorm (Liu, Zeng, Meng, Zhou 2023, arXiv 2305.02790; Findings of ACL 2024, pp. 11675-11687):
Post-LN whose non-residual branch is rescaled "in accordance with the training period" and which
"progressively degenerates to vanilla Post-LN"; its one hyper-parameter is the "maximum norm step" T.

**Neither form below is verified against the paper's method section**, which could not be read for
this project (the authors' repository is empty). Two readings are implemented, ``model.norm_args.form``:

``ramp`` (default): the branch is scaled by a ramp that reaches 1 at T::

    x_{l+1} = LN(x_l + s_t * G_l(x_l)),   s_t = min(t / T, 1)   (decay=linear)

Evidence: ProRes (Chen et al. 2026, arXiv 2603.05369, Sec. 4.3, footnote 3) states that "BranchNorm
can be viewed as a special case of Post-LN with an 'equal' ProRes schedule", i.e. this formula; an
independent paper note reads it the same way (``y = LN(x + a F(x))``, ``a`` increased slowly with the
training iteration). Both are secondary sources, but they are two independent readers of the paper.
At t = 0 every sublayer is ``LN(x)`` (a bounded first update, the effect DeepNorm aims at); for
t >= T the block is Post-LN bit for bit.

``standardize``: this project's first reconstruction from the name and the abstract (docs/norms.md
Sec. 3, "Candidate A"), kept selectable::

    x_{l+1} = LN(x_l + y * (Var(y) + eps)^(-a_t / 2)),   y = G_l(x_l),   a_t = 1 - min(t / T, 1)

Var over the hidden dim per token, no mean-centring (a no-op under the outer LN). At t = 0 the
branch has unit variance whatever its weights; for t >= T it is Post-LN bit for bit. No reader of
the paper supports it.

``decay`` shapes both schedules (``u = min(t / T, 1)``): ``linear`` (s = u), ``cosine``
(s = (1 - cos(pi u)) / 2) or ``step`` (s = 0 before T, 1 from T); ``standardize`` uses a_t = 1 - s_t.

Placement: every sublayer (self-attention, cross-attention, FFN); Post-LN family, so no final norm.
Init: the standard Xavier-normal init. ``t`` is the optimizer step (``trainer.global_step``, so
gradient accumulation is respected); the progress and the factor live in buffers of this module
(``progress``, and ``scale`` for ramp / ``exponent`` for standardize), so every checkpoint holds
them; :class:`normlab.callbacks.schedule.ScheduleCallback`, which every normlab task adds itself,
sets them after each optimizer step.

Default ``max_norm_step`` (``None``): T = 20 x the layers of the deepest stack (480 at 24 layers,
20,000 at 1,000). Chosen from this project's measurement (benchmarks/results/stability_*.md): with no
LR warm-up, ramps of 4-6 steps per layer stalled on the unigram plateau like Post-LN, 12.5 steps per
layer trained at 24 and 48 layers, 20 trained with margin; a run that passes T keeps training as plain
Post-LN. Not a number from the paper; the README's BranchNorm section has the table and what it means
for the 600-step 1,000-layer headline run (it does not reach T). Composes with the ProRes residual warm-up
(``model.residual_warmup``), whose alpha(l, t) multiplies the already ramped branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from normlab.errors import ConfigError
from normlab.norms.base import Branch, NormStrategy, Residual, Site, add_into
from normlab.norms.registry import register
from normlab.progress import ProgressDriven

Form = Literal["ramp", "standardize"]
STEPS_PER_LAYER = 20  # default T = 20 x the layers of the deepest stack (README: BranchNorm)
Decay = Literal["linear", "cosine", "step"]


@dataclass(frozen=True)
class BranchNormArgs:
    form: Form = "ramp"  # ramp: LN(x + s_t f(x)) (ProRes' reading) | standardize: LN(x + f/(Var f)^(a_t/2))
    max_norm_step: int | None = None  # T: steps until the block is Post-LN (None: 20 x layers)
    decay: Decay = "linear"  # shape of s_t from 0 to 1 (standardize: a_t = 1 - s_t)
    eps: float = 1e-5  # standardize only: inside (Var(y) + eps)

    def validate(self) -> None:
        if self.max_norm_step is not None and self.max_norm_step < 1:
            raise ConfigError(f"model.norm_args.max_norm_step: must be >= 1, got {self.max_norm_step}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ConfigError(f"model.norm_args.eps: must be > 0, got {self.eps}")


def branchnorm_ramp(step: int, max_norm_step: int, decay: str = "linear") -> float:
    """s_t: 0 at step 0, rising to exactly 1 at ``max_norm_step`` and staying there."""
    u = min(max(step, 0) / max_norm_step, 1.0)
    if decay == "linear":
        return u
    if decay == "cosine":
        return 1.0 if u >= 1.0 else 0.5 * (1.0 - math.cos(math.pi * u))
    if decay == "step":
        return 1.0 if u >= 1.0 else 0.0
    raise ValueError(f"unknown BranchNorm decay {decay!r}")


def branchnorm_exponent(step: int, max_norm_step: int, decay: str = "linear") -> float:
    """a_t = 1 - s_t of the standardize form: 1 at step 0, exactly 0 from ``max_norm_step`` on
    (written out per shape, so the values are those of the first-wave implementation)."""
    u = min(max(step, 0) / max_norm_step, 1.0)
    if decay == "linear":
        return 1.0 - u
    if decay == "cosine":
        return 0.0 if u >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * u))
    if decay == "step":
        return 1.0 if u < 1.0 else 0.0
    raise ValueError(f"unknown BranchNorm decay {decay!r}")


class BranchRampResidual(Residual):
    """``norm(x + s * f(x))`` with ``s`` read from the strategy's ``scale`` buffer at every call (a
    plain reference: the buffer belongs to the strategy, which the model root owns)."""

    def __init__(self, norm: torch.nn.Module, strategy: BranchNorm) -> None:
        super().__init__()
        self.norm = norm
        object.__setattr__(self, "_strategy", strategy)  # not a submodule: no duplicate buffers

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        # s == 1.0 from step T on, and y * 1.0 == y exactly: Post-LN bit for bit
        return self.norm(add_into(self.gated(branch(x) * self._strategy.scale), x))


class BranchStandardizeResidual(Residual):
    """``norm(x + y * (Var(y) + eps)^(-a/2))`` with ``y = f(x)`` and ``a`` from the ``exponent``
    buffer."""

    def __init__(self, norm: torch.nn.Module, strategy: BranchNorm, eps: float) -> None:
        super().__init__()
        self.norm = norm
        self.eps = float(eps)
        object.__setattr__(self, "_strategy", strategy)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        y = branch(x)
        a = self._strategy.exponent
        # (Var + eps)^(-0) == 1 exactly, so at a = 0 this is Post-LN bit for bit
        scale = (y.var(-1, unbiased=False, keepdim=True) + self.eps).pow(-a / 2)
        return self.norm(add_into(self.gated(y * scale), x))

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


@register
class BranchNorm(NormStrategy, ProgressDriven):
    name = "branchnorm"
    Args = BranchNormArgs
    schedule_prefix = "norm"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("progress", torch.zeros((), dtype=torch.long))
        if self.args.form == "ramp":
            self.register_buffer("scale", torch.zeros((), dtype=torch.float32))
        else:
            self.register_buffer("exponent", torch.ones((), dtype=torch.float32))

    def residual(self, site: Site) -> Residual:
        if self.args.form == "ramp":
            return BranchRampResidual(self.make_norm(self.d_model), self)
        return BranchStandardizeResidual(self.make_norm(self.d_model), self, self.args.eps)

    @property
    def max_norm_step(self) -> int:
        """T: ``max_norm_step`` if given, else ``STEPS_PER_LAYER`` x the layers of the deepest stack."""
        if self.args.max_norm_step is not None:
            return self.args.max_norm_step
        return STEPS_PER_LAYER * max(self.arch.encoder_depth, self.arch.decoder_depth)

    def factor_at(self, step: int) -> float:
        """s_t (ramp) or a_t (standardize) at ``step``."""
        args = self.args
        if args.form == "ramp":
            return branchnorm_ramp(step, self.max_norm_step, args.decay)
        return branchnorm_exponent(step, self.max_norm_step, args.decay)

    @property
    def factor_name(self) -> str:
        return "scale" if self.args.form == "ramp" else "exponent"

    @torch.no_grad()
    def apply_progress(self, step: int) -> None:
        factor = self.factor_at(step)
        self.progress.fill_(step)
        getattr(self, self.factor_name).fill_(factor)
        self._logged = {self.factor_name: factor, "progress": float(step)}  # host-side copy

    def schedule_values(self) -> dict[str, float]:
        return dict(getattr(self, "_logged", {}))

    def reset_state(self) -> None:
        self.set_progress(0)

    def constants(self, stack: str) -> dict:
        step = int(self.progress) if not self.progress.is_meta else 0
        args = self.args
        formula = "LN(x + s_t*f(x))" if args.form == "ramp" else "LN(x + f(x)*(Var f(x)+eps)^(-a_t/2))"
        shape = "s_t" if args.form == "ramp" else "a_t = 1 - s_t"
        return {
            "form": args.form,
            "formula": formula,
            "schedule": f"{shape}, s_t {args.decay} from 0 to 1 over T={self.max_norm_step} steps"
            + ("" if args.max_norm_step is not None else f" ({STEPS_PER_LAYER} x layers, the default)"),
            "step": step,
            self.factor_name: self.factor_at(step),
            "exactly_postln_from_step": self.max_norm_step,
        }
