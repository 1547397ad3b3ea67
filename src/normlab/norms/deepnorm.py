"""DeepNorm / DeepNet (Wang et al. 2022, arXiv 2203.00555, Sec. 4.1 and Fig. 2).

    x_{l+1} = LN(alpha * x_l + G_l(x_l))    every sublayer (self-attn, cross-attn, FFN); Post-LN
                                             family, so no final norm

Init (paper form, Fig. 2): Xavier normal everywhere, with gain ``beta`` on the FFN weights (fc1,
fc2), the attention value projection W^V and the output projection W^O only; W^Q and W^K keep
gain 1. In an encoder-decoder the decoder's cross-attention W^V / W^O use the decoder's beta.

| architecture            | side    | alpha                   | beta                      |
|-------------------------|---------|-------------------------|---------------------------|
| encoder-only, N layers  | encoder | (2N)^(1/4)              | (8N)^(-1/4)               |
| decoder-only, M layers  | decoder | (2M)^(1/4)              | (8M)^(-1/4)               |
| encoder-decoder         | encoder | 0.81 (N^4 M)^(1/16)     | 0.87 (N^4 M)^(-1/16)      |
| encoder-decoder         | decoder | (3M)^(1/4)              | (12M)^(-1/4)              |

``encdec_constants="exact"`` uses the un-rounded derivation of App. B instead of 0.81 / 0.87:
27^(-1/16) = 0.813841 and 27^(1/16)/sqrt(2) = 0.868851. ``alpha`` / ``beta`` override both
constants (alpha = beta = 1 is exactly Post-LN). Unlike microsoft/torchscale, which divides the
default nn.Linear init by 1/beta and selects weights by name, this follows the paper's
``xavier_normal_(gain=beta)`` on weights selected by declared role.
"""

from __future__ import annotations

from dataclasses import dataclass

from normlab.errors import ConfigError
from normlab.norms.base import InitSpec, NormStrategy, PostNormResidual, Residual, Role, Site
from normlab.norms.registry import register

BETA_ROLES = frozenset({Role.V, Role.OUT, Role.FFN_IN, Role.FFN_OUT})
EXACT_ENC_ALPHA = 27 ** (-1 / 16)  # 0.813841
EXACT_ENC_BETA = 27 ** (1 / 16) / 2**0.5  # 0.868851


@dataclass(frozen=True)
class DeepNormArgs:
    encdec_constants: str = "paper"  # "paper" (0.81 / 0.87, as printed) or "exact" (App. B)
    alpha: float | None = None  # override alpha on every stack (None = the table above)
    beta: float | None = None  # override beta on every stack (None = the table above)

    def validate(self) -> None:
        if self.encdec_constants not in ("paper", "exact"):
            raise ConfigError(
                f"model.norm_args.encdec_constants: {self.encdec_constants!r} is not one of paper, exact"
            )
        for key in ("alpha", "beta"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"model.norm_args.{key}: must be > 0, got {value}")


def deepnorm_constants(arch: str, stack: str, n: int, m: int, exact: bool = False) -> tuple[float, float]:
    """(alpha, beta) for one stack of an architecture with N encoder and M decoder layers."""
    if arch == "encoder_decoder":
        if stack == "encoder":
            a0, b0 = (EXACT_ENC_ALPHA, EXACT_ENC_BETA) if exact else (0.81, 0.87)
            return a0 * (n**4 * m) ** (1 / 16), b0 * (n**4 * m) ** (-1 / 16)
        return (3 * m) ** 0.25, (12 * m) ** -0.25
    depth = n if stack == "encoder" else m
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


@register
class DeepNorm(NormStrategy):
    name = "deepnorm"
    Args = DeepNormArgs

    def alpha_beta(self, stack: str) -> tuple[float, float]:
        a = self.arch
        alpha, beta = deepnorm_constants(
            a.arch, stack, a.encoder_depth, a.decoder_depth, self.args.encdec_constants == "exact"
        )
        if self.args.alpha is not None:
            alpha = self.args.alpha
        if self.args.beta is not None:
            beta = self.args.beta
        return alpha, beta

    def residual(self, site: Site) -> Residual:
        return PostNormResidual(self.make_norm(self.d_model), alpha=self.alpha_beta(site.stack)[0])

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if site is not None and role in BETA_ROLES:
            return InitSpec("xavier_normal", gain=self.alpha_beta(site.stack)[1])
        return super().init_spec(site, role)

    def constants(self, stack: str) -> dict:
        alpha, beta = self.alpha_beta(stack)
        return {"alpha": alpha, "beta": beta, "beta_on": sorted(r.value for r in BETA_ROLES)}
