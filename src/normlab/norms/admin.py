"""Admin (Liu et al. 2020, "Understanding the Difficulty of Training Transformers", arXiv 2004.08249):
the closed form of microsoft/admin-torch (``admin_torch/admin.py``) by default, or the original
profiling initialisation (``output_change_scale="profiling"``).

Post-LN with a shortcut scale omega on every sublayer (self-attn, cross-attn, FFN)::

    x_i = LN(omega * x_{i-1} + f_i(x_{i-1}))          # no final norm (Post-LN family)

The original Admin profiles one batch to set omega_i^2 = 1 + sum_{j<i} Var[f_j]; admin-torch
replaces the profile with a closed form in the number n of residual sublayers of the stack
(``calculate_init``)::

    output_change_scale = "O(logn)" (default):  omega = sqrt((n + 1) / ln(n + 1) - 1)
                          "O(n)":               omega = 1           (plain Post-LN)
                          "O(1)":               omega = sqrt(n)

n counts residual sublayers, as admin-torch's docstring does ("a typical n-layer Transformer
encoder has 2n residual layers"): 2N for an encoder, 2M for a decoder-only stack and 3M for the
decoder of an encoder-decoder (self-attn, cross-attn, FFN). Example: n = 12 -> omega = 2.017009
(O(logn)), 3.464102 (O(1)), 1.0 (O(n)).

``output_change_scale="profiling"`` is the original (Transformer-Clinic ``adaptive-profiling``,
docs/norms.md Sec. 6): at the start of a fit, one forward pass without gradients over the first
training batch (the same on every rank, in train mode as the original, callbacks/init_profile.py)
walks the sublayers of each stack in order with a running scalar r (1.0 at the stack's first
sublayer): sublayer i gets omega_i = r, then
r <- sqrt(Var[omega_i * x_{i-1}] + Var[f_i(x_{i-1})]) (variances over all elements of the batch,
the branch term as the model adds it). A ProRes residual warm-up is refused with it: at step 0 the
warm-up silences the branches the pass measures. The values are buffers, so checkpoints
keep them and ``init_from`` carries an encoder's into a classifier; a forward pass before profiling
is refused in one line (normlab.profiling).

Args: ``as_parameter`` makes omega a learnable d-vector filled with the closed-form (or profiled) value
(admin-torch ``as_parameter``; the original Admin also learns it). Default False, admin-torch's
default for ``as_module``. Init: the standard Xavier-normal init (Admin changes no weight init).
Because omega can be folded into the preceding LN after training, an Admin model is a Post-LN
model at inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.norms.base import Branch, NormStrategy, PostNormResidual, Residual, Site, add_into
from normlab.norms.registry import register
from normlab.profiling import ProfiledAtStart

PROFILING = "profiling"
SCALES = ("O(logn)", "O(n)", "O(1)", PROFILING)
UNPROFILED = (
    "model.norm_args.output_change_scale=profiling: omega has not been profiled yet; fit the task with "
    "a Lightning Trainer (the task profiles on the first training batch) or load a checkpoint of such a run"
)


@dataclass(frozen=True)
class AdminArgs:
    output_change_scale: str = "O(logn)"  # O(logn) | O(n) | O(1): desired output change at init
    as_parameter: bool = False  # learnable omega vector (size d) instead of a constant

    def validate(self) -> None:
        if self.output_change_scale not in SCALES:
            raise ConfigError(
                f"model.norm_args.output_change_scale: {self.output_change_scale!r} is not one of "
                f"{', '.join(SCALES)}"
            )


def admin_omega(num_res_layers: int, output_change_scale: str = "O(logn)") -> float:
    """admin-torch's ``calculate_init``: omega for a stack with ``num_res_layers`` sublayers."""
    n = num_res_layers
    if output_change_scale == "O(logn)":
        return math.sqrt((n + 1) / math.log(n + 1) - 1)
    if output_change_scale == "O(n)":
        return 1.0
    if output_change_scale == "O(1)":
        return math.sqrt(n)
    raise ValueError(f"no closed form for output_change_scale {output_change_scale!r}")


@dataclass
class ProfilePass:
    """What one profiling pass shares between the strategy and its residuals (a plain object)."""

    active: bool = False
    running: dict[str, float] = field(default_factory=dict)  # r per stack
    residuals: list[ProfiledOmegaResidual] = field(default_factory=list)  # in creation order


def _first(t: Tensor) -> float:
    local = t.to_local() if hasattr(t, "to_local") else t
    return float(local.detach().reshape(-1)[0])


class ProfiledOmegaResidual(Residual):
    """``norm(omega * x + f(x))`` with omega set by Admin's profiling pass: a buffer, or a learnable
    d-vector (``as_parameter``) filled with the profiled value. ``profiled`` (a buffer) records that
    it was set."""

    def __init__(self, norm: nn.Module, d_model: int, stack: str, profile_pass: ProfilePass, learnable: bool):
        super().__init__()
        self.norm, self.stack = norm, stack
        object.__setattr__(self, "_pass", profile_pass)
        self._ready = False  # profiled, as far as this process has checked (one host read)
        self._measured: float | None = None  # omega found by a profiling pass, until commit()
        if learnable:
            self.omega = nn.Parameter(torch.ones(d_model))
        else:
            self.register_buffer("omega", torch.ones(()))
        self.register_buffer("profiled", torch.zeros((), dtype=torch.bool))

    def reset_parameters(self) -> None:
        self.reset_state()

    def attach_gate(self, gate: Any) -> None:
        raise ConfigError(
            "model.residual_warmup: Admin's profiling pass would measure the branches at step 0, where "
            "the warm-up silences them (omega ~ 1, i.e. Post-LN); use output_change_scale=O(logn) with a "
            "warm-up, or no warm-up"
        )

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready = False  # read the loaded flag again at the next forward

    def reset_state(self) -> None:
        with torch.no_grad():
            self.omega.fill_(1.0)
            self.profiled.fill_(False)
        self._ready, self._measured = False, None

    def is_profiled(self) -> bool:
        if not self._ready:
            self._ready = bool(self.profiled)
        return self._ready

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        if self._pass.active:
            return self._measure(x, branch)
        if not self.is_profiled():
            raise ConfigError(UNPROFILED)
        return self.norm(add_into(self.omega * x, self.gated(branch(x))))

    def _measure(self, x: Tensor, branch: Branch) -> Tensor:
        """One sublayer of the profiling pass (run eagerly: callbacks/init_profile.py). omega is only
        remembered here and written by :meth:`commit` after the pass, once FSDP2 has resharded:
        inside an FSDP2 forward a parameter is a temporary all-gathered copy, and a write to it
        would be lost."""
        omega = self._pass.running[self.stack]
        skip, term = omega * x, self.gated(branch(x))
        variance = skip.float().var(unbiased=False) + term.float().var(unbiased=False)
        self._pass.running[self.stack] = math.sqrt(float(variance))
        self._measured = omega
        return self.norm(add_into(skip, term))

    def commit(self) -> bool:
        """Write the value measured in the pass into omega (and mark it profiled); False when the
        pass did not reach this sublayer."""
        if self._measured is None:
            return False
        with torch.no_grad():
            self.omega.fill_(self._measured)
            self.profiled.fill_(True)
        self._measured, self._ready = None, True
        return True

    def extra_repr(self) -> str:
        return f"stack={self.stack}, omega=profiled"


class LearnableOmegaResidual(Residual):
    """``norm(omega * x + f(x))`` with omega a learnable d-vector initialised to ``init_value``."""

    def __init__(self, norm: nn.Module, d_model: int, init_value: float) -> None:
        super().__init__()
        self.norm = norm
        self.init_value = float(init_value)
        self.omega = nn.Parameter(torch.empty(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.omega.fill_(self.init_value)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return self.norm(add_into(self.omega * x, self.gated(branch(x))))

    def extra_repr(self) -> str:
        return f"omega_init={self.init_value:.6g}"


@register
class Admin(ProfiledAtStart, NormStrategy):
    name = "admin"
    Args = AdminArgs

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.profile_pass = ProfilePass()

    @property
    def profiling(self) -> bool:
        return self.args.output_change_scale == PROFILING

    def num_res_layers(self, stack: str) -> int:
        return self.arch.depth(stack) * self.arch.sublayers_per_layer(stack)

    def omega(self, stack: str) -> float | str:
        if self.profiling:
            residuals = self.profile_pass.residuals
            if residuals and not residuals[0].omega.is_meta and not self.needs_profile():
                values = self.profiled_values()[stack]
                return f"profiled: {values[0]:.4g} (first sublayer) ... {values[-1]:.4g} (last)"
            return "profiled on the first training batch"
        return admin_omega(self.num_res_layers(stack), self.args.output_change_scale)

    def residual(self, site: Site) -> Residual:
        norm = self.make_norm(self.d_model)
        if self.profiling:
            res = ProfiledOmegaResidual(
                norm, self.d_model, site.stack, self.profile_pass, self.args.as_parameter
            )
            self.profile_pass.residuals.append(res)
            return res
        omega = self.omega(site.stack)
        if self.args.as_parameter:
            return LearnableOmegaResidual(norm, self.d_model, omega)
        return PostNormResidual(norm, alpha=omega)

    # --- the profiling pass (normlab.profiling) -------------------------------------------------
    def needs_profile(self) -> bool:
        return any(not r.is_profiled() for r in self.profile_pass.residuals)

    def profile(self, run_forward: Callable[[], Any]) -> None:
        self.profile_pass.running = dict.fromkeys(self.arch.stacks, 1.0)
        self.profile_pass.active = True
        try:
            run_forward()
        finally:
            self.profile_pass.active = False
        reached = [res.commit() for res in self.profile_pass.residuals]
        if not all(reached):
            raise RuntimeError("Admin profiling: the forward pass did not reach every residual sublayer")

    def profiled_values(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for res in self.profile_pass.residuals:
            out.setdefault(res.stack, []).append(_first(res.omega))
        return out

    def constants(self, stack: str) -> dict:
        return {
            "omega": self.omega(stack),
            "num_res_layers": self.num_res_layers(stack),
            "output_change_scale": self.args.output_change_scale,
            "omega_learnable": self.args.as_parameter,
        }
