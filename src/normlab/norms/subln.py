"""Sub-LN / Magneto (Wang et al. 2022, "Foundation Transformers", arXiv 2210.06423, Sec. 3).

Pre-LN plus one extra LayerNorm *inside* every self-attention and every FFN (Eq. 3-5, 11)::

    Q, K, V = W^Q LN(x), W^K LN(x), W^V LN(x)
    MSA(x)  = x + W^O LN(Attention(Q, K, V))        # sub-norm over d, before the output projection
    FFN(x)  = x + W^2 LN(phi(W^1 LN(x)))            # sub-norm over d_ffn, before fc2
    out     = LN_final(x_L)                          # one final norm per stack (Pre-LN family)

Cross-attention in the decoder of an encoder-decoder keeps only its pre-LN: no sub-norm, and its
weights are not scaled (Sec. 2; torchscale builds ``inner_attn_ln`` for self-attention only).

Init (Sec. 3.2): the standard init, then **multiply** W^V, W^O, fc1 and fc2 by gamma (> 1 for
N >= 2, where DeepNorm's beta shrinks); W^Q and W^K keep gain 1. Here that is Xavier normal with
gain gamma on exactly those roles, chosen by declared role (torchscale instead multiplies weights
whose *names* contain fc1/fc2/out_proj/v_proj). Natural log throughout:

| architecture            | stack   | gamma                                  |
|-------------------------|---------|----------------------------------------|
| encoder-only, N layers  | encoder | sqrt(log 2N)                           |
| decoder-only, M layers  | decoder | sqrt(log 2M)                           |
| encoder-decoder         | encoder | sqrt((1/3) * log 3M * log 2N)          |
| encoder-decoder         | decoder | sqrt(log 3M)                           |

(From Theorem 3.2: the update bound is O(log L / gamma^2) with L = 2N; gamma = sqrt(log L).)
Examples: encoder-only N = 12 -> 1.782710; encoder-decoder N = M = 12 -> 1.948385 / 1.893018.

Args: ``gamma`` overrides the table on every stack (e.g. 1.0 for an ablation without scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from normlab.errors import ConfigError
from normlab.norms.base import (
    AttentionOptions,
    FFNOptions,
    InitSpec,
    NormStrategy,
    PreNormResidual,
    Residual,
    Role,
    Site,
)
from normlab.norms.registry import register

GAMMA_ROLES = frozenset({Role.V, Role.OUT, Role.FFN_IN, Role.FFN_OUT})


@dataclass(frozen=True)
class SubLNArgs:
    gamma: float | None = None  # override gamma on every stack (None = the table above)

    def validate(self) -> None:
        if self.gamma is not None and self.gamma <= 0:
            raise ConfigError(f"model.norm_args.gamma: must be > 0, got {self.gamma}")


def subln_gamma(arch: str, stack: str, n: int, m: int) -> float:
    """Magneto's init gain gamma for one stack (N encoder layers, M decoder layers)."""
    if arch == "encoder_decoder":
        if stack == "encoder":
            return math.sqrt(math.log(3 * m) * math.log(2 * n) / 3)
        return math.sqrt(math.log(3 * m))
    depth = n if stack == "encoder" else m
    return math.sqrt(math.log(2 * depth))


@register
class SubLN(NormStrategy):
    name = "subln"
    Args = SubLNArgs

    def gamma(self, stack: str) -> float:
        if self.args.gamma is not None:
            return self.args.gamma
        a = self.arch
        return subln_gamma(a.arch, stack, a.encoder_depth, a.decoder_depth)

    def residual(self, site: Site) -> Residual:
        return PreNormResidual(self.make_norm(self.d_model))

    def attention_options(self, site: Site) -> AttentionOptions:
        return AttentionOptions(sub_norm=site.kind == "self_attn")

    def ffn_options(self, site: Site) -> FFNOptions:
        return FFNOptions(sub_norm=True)

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model)

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if site is not None and site.kind != "cross_attn" and role in GAMMA_ROLES:
            return InitSpec("xavier_normal", gain=self.gamma(site.stack))
        return super().init_spec(site, role)

    def constants(self, stack: str) -> dict:
        return {
            "gamma": self.gamma(stack),
            "gamma_on": sorted(r.value for r in GAMMA_ROLES),
            "cross_attn_scaled": False,
            "sub_norms": "self_attn before W^O, ffn before fc2",
        }
