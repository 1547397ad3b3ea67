"""DeepScaleLM (Kedia et al. 2024, "Transformers Get Stable: An End-to-End Signal Propagation
Theory for Language Models", arXiv 2403.09635, ICML 2024).

Every residual is *fully normalised*: skip and branch are weighted so their squares sum to one::

    placement "pre"  (default):  x_{l+1} = lambda * x_l + beta * F_l(LN(x_l)),  final LN per stack
    placement "post":            x_{l+1} = LN(lambda * x_l + beta * F_l(x_l)),  no final LN

    beta^2 = k / N,   lambda^2 = 1 - beta^2,   k = 2,   N = layers of the stack (``n_counts``)

so with unit-variance branches the residual stream keeps unit variance at any depth (Pre-LN's
grows linearly with depth). Example: N = 24 -> beta = 0.288675, lambda = 0.957427. For N < k
the formula would give beta > 1; beta^2 is clipped to 1 (lambda = 0, no skip path).

Init: every branch maps unit variance to unit variance at dropout p (``model.dropout``), following
the authors' released code (akhilkedia/TranformersGetStable, ``DSLM_signal_propagation_figures``,
read for this project; docs/norms.md Sec. 7c):

- embeddings: variance 1 - p (std sqrt(1 - p) d^-1/2, times the core's sqrt(d) scale), so the
  embedding dropout that follows gives unit variance: the authors' (1 - p)/3 for each of BERT's three
  tables, summed, for the one table here;
- W^Q, W^K: N(0, 1/d);
- W^V, W^O of self-attention (``attention_init="correlation"``, the default): both N(0, sigma_l^2)
  with sigma_l^2 = sqrt((1 - p) / r_l) / d, where r_l is the correlation between the tokens of the
  stream entering layer l. At init attention averages the values over tokens, so its output has
  variance r_l times its input's; the two weights undo that factor. r_l follows the authors'
  recursion: r_0 = ``input_correlation`` * (1 - p) (0.221, the authors' value for their data), then
  per layer ``r <- lam^2 r + beta^2 (1 - p)`` after attention (its output tokens are fully
  correlated) and ``r <- lam^2 r + beta^2 (1 - p) * relu_corr(r)`` after the FFN, with
  relu_corr(r) = r + (sqrt(1 - r^2) - r * acos(r)) / pi. ``attention_init="fan_in"`` is
  N(0, 1/d), the r = 1, p = 0 case (this project's reading before the code was read). Cross-attention
  keeps N(0, 1/d): the authors' code has no encoder-decoder; in such a decoder the recursion counts
  its cross-attention as one more attention step (an extension);
- fc1 and fc2: both N(0, sigma_f^2), sigma_f^2 = sqrt((1 - p) / (m2 * d * d_ffn)), m2 = 1/2 the second
  moment of ReLU(z), z ~ N(0, 1). For d_ffn = 4d this is the authors' sqrt((1 - p) / 2) / d; the
  d_ffn form keeps Var[fc2(relu(fc1 x))] = 1 for other widths. (GELU has m2 = 0.425, so a GELU
  branch starts at variance 0.85; the correlation recursion is also ReLU's.)

N in beta^2 = k/N: ``n_counts="layers"`` (default) counts the layers of the stack, as the paper's
formula is usually quoted (docs/norms.md Sec. 7, [S]); ``n_counts="sublayers"`` counts residual
branches (2 per layer, 3 in a decoder with cross-attention). The authors' figure script runs 192
layers with beta^2 = 0.005, which is k/N with k = 2 only if N counts sublayers (2/384 = 0.0052), so
the evidence is split; Sec. 7c says how sure this is.

Provenance: the residual rule is the paper's; the init is the authors' code at p and d_ffn = 4d,
generalised to any d_ffn, and the embedding variance for one table instead of BERT's three; the
BERT LM-head rescaling of the authors' code is not copied.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.norms.base import Branch, InitSpec, NormStrategy, Residual, Role, Site, add_into
from normlab.norms.registry import register

PLACEMENTS = ("pre", "post")
ATTENTION_INITS = ("correlation", "fan_in")
N_COUNTS = ("layers", "sublayers")
RELU_SECOND_MOMENT = 0.5  # E[relu(z)^2] for z ~ N(0, 1)
AUTHORS_INPUT_CORRELATION = 0.221  # r_0 in the authors' code (their BERT data)


@dataclass(frozen=True)
class DeepScaleLMArgs:
    k: float = 2.0  # beta^2 = k / N
    placement: str = "pre"  # pre | post: where the LayerNorm sits
    attention_init: str = "correlation"  # correlation | fan_in: how W^V and W^O are drawn
    input_correlation: float = AUTHORS_INPUT_CORRELATION  # r_0, between the embedded tokens
    n_counts: str = "layers"  # layers | sublayers: what N in beta^2 = k / N counts

    def validate(self) -> None:
        if self.k <= 0:
            raise ConfigError(f"model.norm_args.k: must be > 0, got {self.k}")
        for key, allowed in (
            ("placement", PLACEMENTS),
            ("attention_init", ATTENTION_INITS),
            ("n_counts", N_COUNTS),
        ):
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"model.norm_args.{key}: {getattr(self, key)!r} is not one of {', '.join(allowed)}"
                )
        if not 0.0 < self.input_correlation <= 1.0:
            raise ConfigError(
                f"model.norm_args.input_correlation: must be in (0, 1], got {self.input_correlation}"
            )


def deepscalelm_constants(depth: int, k: float = 2.0) -> tuple[float, float]:
    """(lambda, beta) with beta^2 = min(1, k / N) and lambda^2 + beta^2 = 1."""
    beta_sq = min(1.0, k / depth)
    return math.sqrt(1.0 - beta_sq), math.sqrt(beta_sq)


def relu_correlation(r: float) -> float:
    """Correlation of relu(x), relu(y) (normalised by E[relu^2]) for unit Gaussians with correlation r."""
    return r + (math.sqrt(max(0.0, 1.0 - r * r)) - r * math.acos(min(1.0, r))) / math.pi


def stream_correlations(
    depth: int, lam: float, beta: float, r0: float, dropout: float, cross_attention: bool = False
) -> list[float]:
    """r_l for l = 0..depth-1: the token correlation of the stream entering layer l's attention, at
    init (unit variances, lam^2 + beta^2 = 1), as the authors' recursion computes it. With
    ``cross_attention`` (the decoder of an encoder-decoder, an extension: the authors' code is
    encoder-only) the cross-attention residual is one more attention step, whose output (an
    average of the memory's values) is as correlated across target tokens as self-attention's."""
    keep, lam_sq, beta_sq = 1.0 - dropout, lam * lam, beta * beta
    r, out = r0 * keep, []
    for _ in range(depth):
        out.append(r)
        for _ in range(2 if cross_attention else 1):
            r = lam_sq * r + beta_sq * keep  # attention output: tokens fully correlated, then dropout
        r = lam_sq * r + beta_sq * keep * relu_correlation(r)
    return out


def value_out_std(d_model: int, r: float, dropout: float) -> float:
    """std of W^V and W^O with sigma^2 = sqrt((1 - p) / r) / d: attention's r-fold variance undone."""
    return (math.sqrt((1.0 - dropout) / r) / d_model) ** 0.5


@dataclass(frozen=True)
class FFNVariancePreserving(InitSpec):
    """N(0, sqrt((1 - p) / (m2 * fan_in * fan_out))): the same std for fc1 (d -> d_ffn) and fc2
    (d_ffn -> d), so the two-layer branch has unit output variance for an activation with second
    moment m2, after dropout p."""

    dist: str = "normal"
    second_moment: float = RELU_SECOND_MOMENT
    dropout: float = 0.0

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        fan_out, fan_in = shape
        std = ((1.0 - self.dropout) / (self.second_moment * fan_in * fan_out)) ** 0.25
        return torch.empty(shape).normal_(0.0, std, generator=generator)


class ScaledPreNormResidual(Residual):
    """``lam * x + beta * f(norm(x))``."""

    def __init__(self, norm: nn.Module, lam: float, beta: float) -> None:
        super().__init__()
        self.norm, self.lam, self.beta = norm, float(lam), float(beta)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return add_into(self.lam * x, self.gated(self.beta * branch(self.norm(x))))

    def extra_repr(self) -> str:
        return f"lambda={self.lam:.6g}, beta={self.beta:.6g}"


class ScaledPostNormResidual(ScaledPreNormResidual):
    """``norm(lam * x + beta * f(x))``."""

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return self.norm(add_into(self.lam * x, self.gated(self.beta * branch(x))))


@register
class DeepScaleLM(NormStrategy):
    name = "deepscalelm"
    Args = DeepScaleLMArgs

    def n_of(self, stack: str) -> int:
        """N in beta^2 = k / N: the stack's layers, or its residual branches (``n_counts``)."""
        per_layer = self.arch.sublayers_per_layer(stack) if self.args.n_counts == "sublayers" else 1
        return self.arch.depth(stack) * per_layer

    def lambda_beta(self, stack: str) -> tuple[float, float]:
        return deepscalelm_constants(self.n_of(stack), self.args.k)

    def value_out_stds(self, stack: str) -> list[float]:
        """Per layer: the std of self-attention's W^V and W^O."""
        return self._value_out_stds_by_stack[stack]

    @functools.cached_property
    def _value_out_stds_by_stack(self) -> dict[str, list[float]]:
        """Computed once: init asks for every layer, and the recursion walks the whole stack."""
        d, p, out = self.d_model, self.arch.dropout, {}
        for stack in self.arch.stacks:
            if self.args.attention_init == "fan_in":
                out[stack] = [d**-0.5] * self.arch.depth(stack)
                continue
            lam, beta = self.lambda_beta(stack)
            cross = self.arch.sublayers_per_layer(stack) == 3
            rs = stream_correlations(self.arch.depth(stack), lam, beta, self.args.input_correlation, p, cross)
            out[stack] = [value_out_std(d, r, p) for r in rs]
        return out

    def residual(self, site: Site) -> Residual:
        lam, beta = self.lambda_beta(site.stack)
        cls = ScaledPreNormResidual if self.args.placement == "pre" else ScaledPostNormResidual
        return cls(self.make_norm(self.d_model), lam, beta)

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model) if self.args.placement == "pre" else None

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if site is not None and role in (Role.FFN_IN, Role.FFN_OUT):
            return FFNVariancePreserving(dropout=self.arch.dropout)
        if site is not None and site.kind == "self_attn" and role in (Role.V, Role.OUT):
            return InitSpec("normal", std=self.value_out_stds(site.stack)[site.layer])
        if site is not None and role in (Role.Q, Role.K, Role.V, Role.OUT):
            return InitSpec("normal", std=self.d_model**-0.5)
        if role is Role.EMBEDDING:
            return InitSpec("normal", std=((1.0 - self.arch.dropout) / self.d_model) ** 0.5)
        return super().init_spec(site, role)

    def constants(self, stack: str) -> dict:
        lam, beta = self.lambda_beta(stack)
        v_out = self.value_out_stds(stack)
        return {
            "lambda": lam,
            "beta": beta,
            "k": self.args.k,
            "N": self.n_of(stack),
            "placement": self.args.placement,
            "dropout": self.arch.dropout,
            "qk_std": self.d_model**-0.5,
            "v_out_std_first_layer": v_out[0],
            "v_out_std_last_layer": v_out[-1],
            "ffn_std": "((1-p)/(fan_in*fan_out/2))^(1/4)",
        }
