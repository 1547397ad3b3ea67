"""BranchNorm (Liu, Zeng, Meng, Zhou 2023, arXiv 2305.02790; Findings of ACL 2024): Post-LN whose
non-residual branch is rescaled according to the training period.

**Reconstructed form (norms.md Sec. 3, "Candidate A"; the paper's method section was not
available, so this is NOT verified against the paper):**

    y       = G_l(x_l)                                   the sublayer output (the branch)
    x_{l+1} = LN( x_l + y * (Var(y) + eps)^(-a_t / 2) )  Var over the hidden dim, per token
    a_t     = decay(t / T)  in [0, 1],  a_0 = 1,  a_t = 0 for t >= T

``t`` is the optimizer step (``trainer.global_step``, so gradient accumulation is respected) and
``T = max_norm_step``. At t = 0 the branch is standardised to unit variance whatever its weights
are (a bounded model update, DeepNorm's goal); as ``a_t`` falls the branch gets its own scale
back, and for t >= T the factor is exactly 1, so the block *is* Post-LN, bit for bit. The branch
is not mean-centred: under the outer LayerNorm centring is a no-op, and leaving it out keeps the
t >= T identity exact with ``model.norm_layer=rmsnorm`` too.

Decay shapes (``decay``), with s = min(t / T, 1):
    linear (default)  a = 1 - s
    cosine            a = (1 + cos(pi s)) / 2
    step              a = 1 for t < T, else 0

Default ``max_norm_step = 4000``: the schedule is meant to cover the fragile early period that LR
warm-up covers, and 4000 steps is the warm-up of the WMT Transformer recipes (fairseq
``--warmup-updates 4000``) that DeepNet and BranchNorm's translation experiments build on. This
is an assumption, not the paper's number; override it with ``model.norm_args.max_norm_step=N``
(e.g. the run's ``optim.warmup_steps`` on short CPU runs, where 4000 is longer than the run).

Placement: every sublayer (self-attention, cross-attention, FFN); Post-LN family, so no final
norm. Init: the standard Xavier-normal init, unchanged.

The progress lives in two buffers of this module (``progress``: the step, ``exponent``: a_t), so
it is saved in every checkpoint; :class:`normlab.callbacks.schedule.NormScheduleCallback` sets it
after every optimizer step and is added automatically because ``has_schedule`` is true.

Measured with this exact form (``benchmarks/stability.py``, depth-48 decoder, lr 1e-3 without
warm-up, 150 steps): it stays on the unigram plateau like Post-LN, with T = 4000 and with T = 100
(val 5.19 vs a unigram baseline of 5.16; DeepNorm reaches 4.83). Standardising the branch gives it
about the unit variance a Post-LN branch already has at init, so the first update is as large as
Post-LN's; it does not shrink the update the way DeepNorm's alpha/beta do. This agrees with the
independent check in norms.md Sec. 3. See the README stability table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.norms.base import Branch, NormStrategy, Site
from normlab.norms.registry import register

DECAYS = ("linear", "cosine", "step")


@dataclass(frozen=True)
class BranchNormArgs:
    max_norm_step: int = 4000  # T: optimizer steps until the block is exactly Post-LN
    decay: str = "linear"  # linear | cosine | step: shape of a_t from 1 to 0
    eps: float = 1e-5  # inside (Var(y) + eps)

    def validate(self) -> None:
        if self.max_norm_step < 1:
            raise ConfigError(f"model.norm_args.max_norm_step: must be >= 1, got {self.max_norm_step}")
        if self.decay not in DECAYS:
            raise ConfigError(f"model.norm_args.decay: {self.decay!r} is not one of {', '.join(DECAYS)}")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ConfigError(f"model.norm_args.eps: must be > 0, got {self.eps}")


def branchnorm_exponent(step: int, max_norm_step: int, decay: str = "linear") -> float:
    """a_t: 1 at step 0, falling to exactly 0 at ``max_norm_step`` and staying there."""
    s = min(max(step, 0) / max_norm_step, 1.0)
    if decay == "linear":
        return 1.0 - s
    if decay == "cosine":
        return 0.0 if s >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * s))
    if decay == "step":
        return 1.0 if s < 1.0 else 0.0
    raise ValueError(f"unknown BranchNorm decay {decay!r}")


class BranchNormResidual(nn.Module):
    """``norm(x + y * (Var(y) + eps)^(-a/2))`` with ``y = f(x)`` and ``a`` read from the strategy's
    ``exponent`` buffer at every call (a plain, unregistered reference: the buffer belongs to the
    strategy, which the model root owns)."""

    def __init__(self, norm: nn.Module, strategy: BranchNorm, eps: float) -> None:
        super().__init__()
        self.norm = norm
        self.eps = float(eps)
        object.__setattr__(self, "_strategy", strategy)  # not a submodule: no duplicate buffers

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        y = branch(x)
        a = self._strategy.exponent
        # (Var + eps)^(-0) == 1 exactly, so at a = 0 this is Post-LN bit for bit
        scale = (y.var(-1, unbiased=False, keepdim=True) + self.eps).pow(-a / 2)
        return self.norm(x + y * scale)

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


@register
class BranchNorm(NormStrategy):
    name = "branchnorm"
    Args = BranchNormArgs
    has_schedule = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("progress", torch.zeros((), dtype=torch.long))
        self.register_buffer("exponent", torch.ones((), dtype=torch.float32))

    def residual(self, site: Site) -> nn.Module:
        return BranchNormResidual(self.make_norm(self.d_model), self, self.args.eps)

    def exponent_at(self, step: int) -> float:
        return branchnorm_exponent(step, self.args.max_norm_step, self.args.decay)

    @torch.no_grad()
    def set_progress(self, step: int) -> None:
        self.progress.fill_(int(step))
        self.exponent.fill_(self.exponent_at(int(step)))

    def schedule_values(self) -> dict[str, float]:
        return {"exponent": float(self.exponent), "progress": float(self.progress)}

    def reset_state(self) -> None:
        self.set_progress(0)

    def constants(self, stack: str) -> dict:
        step = int(self.progress) if not self.progress.is_meta else 0
        return {
            "branch_scale": "(Var(y)+eps)^(-a_t/2)",
            "schedule": f"a_t {self.args.decay} from 1 to 0 over T={self.args.max_norm_step} steps",
            "step": step,
            "exponent": self.exponent_at(step),
            "exactly_postln_from_step": self.args.max_norm_step,
        }
