"""DeepScaleLM (Kedia et al. 2024, "Transformers Get Stable: An End-to-End Signal Propagation
Theory for Language Models", arXiv 2403.09635, ICML 2024).

Every residual is *fully normalised*: skip and branch are weighted so their squares sum to one::

    placement "pre"  (default):  x_{l+1} = lambda * x_l + beta * F_l(LN(x_l)),  final LN per stack
    placement "post":            x_{l+1} = LN(lambda * x_l + beta * F_l(x_l)),  no final LN

    beta^2 = k / N,   lambda^2 = 1 - beta^2,   k = 2,   N = layers of the stack

so with unit-variance branches the residual stream keeps unit variance at any depth (Pre-LN's
grows linearly with depth). Example: N = 24 -> beta = 0.288675, lambda = 0.957427. For N < k
the formula would give beta > 1; beta^2 is clipped to 1 (lambda = 0, no skip path).

Init (the variance-preserving scheme, at dropout p = 0): every branch maps unit variance to unit
variance.

- embeddings: unit variance (the core's d^-1/2 init times sqrt(d); the paper's sigma_e^2 =
  (1 - p) / n_tables at p = 0 and one table);
- W^Q, W^K, W^V, W^O: N(0, 1/d) (fan-in);
- fc1 and fc2: both N(0, sigma_f^2) with sigma_f^2 = (m2 * d * d_ffn)^(-1/2), where m2 = 1/2 is
  the second moment of ReLU(z), z ~ N(0, 1). For d_ffn = 4d this is sigma_f^2 = sqrt(1/2) / d, and
  Var[fc2(relu(fc1 x))] = d sigma_f^2 * m2 * d_ffn sigma_f^2 = 1. (GELU has m2 = 0.425, so a GELU
  branch starts at variance 0.85.)

Provenance: the residual rule and k = 2 are from the paper's abstract and third-party
implementations [S]; the exact per-component init of the paper (with its dropout p and
token-correlation r corrections) could not be read in this project, so the init above is the
p = 0 variance-preserving reading, not a verified copy (docs/norms.md Sec. 7 and 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.norms.base import Branch, InitSpec, NormStrategy, Residual, Role, Site
from normlab.norms.registry import register

PLACEMENTS = ("pre", "post")
RELU_SECOND_MOMENT = 0.5  # E[relu(z)^2] for z ~ N(0, 1)


@dataclass(frozen=True)
class DeepScaleLMArgs:
    k: float = 2.0  # beta^2 = k / N
    placement: str = "pre"  # pre | post: where the LayerNorm sits

    def validate(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"model.norm_args.k: must be > 0, got {self.k}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(
                f"model.norm_args.placement: {self.placement!r} is not one of {', '.join(PLACEMENTS)}"
            )


def deepscalelm_constants(depth: int, k: float = 2.0) -> tuple[float, float]:
    """(lambda, beta) with beta^2 = min(1, k / N) and lambda^2 + beta^2 = 1."""
    beta_sq = min(1.0, k / depth)
    return math.sqrt(1.0 - beta_sq), math.sqrt(beta_sq)


@dataclass(frozen=True)
class FFNVariancePreserving(InitSpec):
    """N(0, (m2 * fan_in * fan_out)^(-1/2)): the same std for fc1 (d -> d_ffn) and fc2 (d_ffn -> d),
    so the two-layer branch has unit output variance for an activation with second moment m2."""

    dist: str = "normal"
    second_moment: float = RELU_SECOND_MOMENT

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        fan_out, fan_in = shape
        std = (self.second_moment * fan_in * fan_out) ** -0.25
        return torch.empty(shape).normal_(0.0, std, generator=generator)


class ScaledPreNormResidual(Residual):
    """``lam * x + beta * f(norm(x))``."""

    def __init__(self, norm: nn.Module, lam: float, beta: float) -> None:
        super().__init__()
        self.norm, self.lam, self.beta = norm, float(lam), float(beta)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return self.lam * x + self.gated(self.beta * branch(self.norm(x)))

    def extra_repr(self) -> str:
        return f"lambda={self.lam:.6g}, beta={self.beta:.6g}"


class ScaledPostNormResidual(ScaledPreNormResidual):
    """``norm(lam * x + beta * f(x))``."""

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return self.norm(self.lam * x + self.gated(self.beta * branch(x)))


@register
class DeepScaleLM(NormStrategy):
    name = "deepscalelm"
    Args = DeepScaleLMArgs

    def lambda_beta(self, stack: str) -> tuple[float, float]:
        return deepscalelm_constants(self.arch.depth(stack), self.args.k)

    def residual(self, site: Site) -> Residual:
        lam, beta = self.lambda_beta(site.stack)
        cls = ScaledPreNormResidual if self.args.placement == "pre" else ScaledPostNormResidual
        return cls(self.make_norm(self.d_model), lam, beta)

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model) if self.args.placement == "pre" else None

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if site is not None and role in (Role.FFN_IN, Role.FFN_OUT):
            return FFNVariancePreserving()
        if site is not None and role in (Role.Q, Role.K, Role.V, Role.OUT):
            return InitSpec("normal", std=self.d_model**-0.5)
        return super().init_spec(site, role)

    def constants(self, stack: str) -> dict:
        lam, beta = self.lambda_beta(stack)
        return {
            "lambda": lam,
            "beta": beta,
            "k": self.args.k,
            "N": self.arch.depth(stack),
            "placement": self.args.placement,
            "qkvo_std": self.d_model**-0.5,
            "ffn_std": "(fan_in*fan_out/2)^(-1/4)",
        }
