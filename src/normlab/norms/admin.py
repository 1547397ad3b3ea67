"""Admin (Liu et al. 2020, "Understanding the Difficulty of Training Transformers", arXiv 2004.08249),
closed form of microsoft/admin-torch (``admin_torch/admin.py``), no profiling pass.

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

Args: ``as_parameter`` makes omega a learnable d-vector filled with the closed-form value
(admin-torch ``as_parameter``; the original Admin also learns it). Default False, admin-torch's
default for ``as_module``. Init: the standard Xavier-normal init (Admin changes no weight init).
Because omega can be folded into the preceding LN after training, an Admin model is a Post-LN
model at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.norms.base import Branch, NormStrategy, PostNormResidual, Residual, Site
from normlab.norms.registry import register

SCALES = ("O(logn)", "O(n)", "O(1)")


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
    raise ValueError(f"unknown output_change_scale {output_change_scale!r}")


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
        return self.norm(self.omega * x + self.gated(branch(x)))

    def extra_repr(self) -> str:
        return f"omega_init={self.init_value:.6g}"


@register
class Admin(NormStrategy):
    name = "admin"
    Args = AdminArgs

    def num_res_layers(self, stack: str) -> int:
        return self.arch.depth(stack) * self.arch.sublayers_per_layer(stack)

    def omega(self, stack: str) -> float:
        return admin_omega(self.num_res_layers(stack), self.args.output_change_scale)

    def residual(self, site: Site) -> Residual:
        omega = self.omega(site.stack)
        if self.args.as_parameter:
            return LearnableOmegaResidual(self.make_norm(self.d_model), self.d_model, omega)
        return PostNormResidual(self.make_norm(self.d_model), alpha=omega)

    def constants(self, stack: str) -> dict:
        return {
            "omega": self.omega(stack),
            "num_res_layers": self.num_res_layers(stack),
            "output_change_scale": self.args.output_change_scale,
            "omega_learnable": self.args.as_parameter,
        }
