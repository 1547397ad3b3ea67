"""HybridNorm (Zhuo et al. 2025, arXiv 2503.04598; code BryceZhuo/HybridNorm, OLMo fork):
QKV-Norm inside attention, Post-Norm in the FFN, one final norm.

    q, k, v = split(W_qkv x)                         no norm on the attention input
    q, k, v = Norm_q(q_h), Norm_k(k_h), Norm_v(v_h)  per head, over d_h, before RoPE
    y       = x + W_O Attention(q, k, v)
    z       = Norm_ffn(y)
    x_next  = z + FFN(z)                             the FFN residual starts from the normed value
    out     = Norm_final(x_L)

Released config (``dense_model/configs/exps/1.2B-dense-HybriedNorm.yaml``): RMSNorm with a
learnable scale, eps 1e-5, which ``model.norm_layer=auto`` (the default) selects for this strategy;
``model.norm_layer=layernorm`` also works (every norm placed here uses ``model.norm_layer``).

Extensions beyond the paper (decoder-only LMs): encoder stacks use the same block with
bidirectional attention; cross-attention in an encoder-decoder gets per-head norms on q (decoder
side) and k, v (encoder memory), with a plain residual like self-attention.

Init (``init``): ``megatron`` (default, the released ``init_fn: full_megatron``) draws q, k, v
and fc1 from a normal truncated at +-3 sigma with sigma = (2.5 d)^(-1/2) (= 0.0139754 at
d = 2048, the released ``init_std``), and W^O and fc2 with sigma / sqrt(2 L), L = layers of the
stack (0.0024705 for d = 2048, L = 16); norm gains 1. Token embeddings keep the template's
init (std d^-1/2 times the sqrt(d) embedding scale = unit variance), because this template scales
embeddings by sqrt(d). ``init=xavier`` uses the template's Xavier-normal init instead (the
paper's init ablation compares such choices).

When to use it: decoder LMs where Pre-Norm's growing residual stream hurts quality and Post-Norm
is unstable; HybridNorm* (``hybridnorm_star``) changes only block 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from normlab.errors import ConfigError
from normlab.norms.base import (
    AttentionOptions,
    InitSpec,
    NormedInputResidual,
    NormStrategy,
    PlainResidual,
    Residual,
    Role,
    Site,
)
from normlab.norms.registry import register

INITS = ("megatron", "xavier")
IN_ROLES = frozenset({Role.Q, Role.K, Role.V, Role.FFN_IN})
OUT_ROLES = frozenset({Role.OUT, Role.FFN_OUT})


@dataclass(frozen=True)
class HybridNormArgs:
    init: str = "megatron"  # megatron (released config) | xavier (template default)

    def validate(self) -> None:
        if self.init not in INITS:
            raise ConfigError(f"model.norm_args.init: {self.init!r} is not one of {', '.join(INITS)}")


def megatron_stds(d_model: int, n_layers: int) -> tuple[float, float]:
    """(sigma for q/k/v/fc1, sigma for W^O/fc2): (2.5 d)^(-1/2) and that / sqrt(2 L)."""
    std = (2.5 * d_model) ** -0.5
    return std, std / math.sqrt(2 * n_layers)


@register
class HybridNorm(NormStrategy):
    name = "hybridnorm"
    Args = HybridNormArgs
    norm_layer = "rmsnorm"  # the released config's layer_norm_type: rms

    def residual(self, site: Site) -> Residual:
        if site.kind == "ffn":
            return NormedInputResidual(self.make_norm(self.d_model))
        return PlainResidual()

    def attention_options(self, site: Site) -> AttentionOptions:
        return AttentionOptions(qkv_norm=True)

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model)

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if self.args.init == "megatron" and site is not None and role in IN_ROLES | OUT_ROLES:
            std_in, std_out = megatron_stds(self.d_model, self.arch.depth(site.stack))
            return InitSpec("trunc_normal", std=std_in if role in IN_ROLES else std_out)
        return super().init_spec(site, role)

    def constants(self, stack: str) -> dict:
        out = {
            "qkv_norm": f"per head over d_h={self.d_model // self.n_heads}",
            "attn_input_norm": "none",
            "ffn": "z = Norm(y); z + FFN(z)",
            "init": self.args.init,
        }
        if self.args.init == "megatron":
            std_in, std_out = megatron_stds(self.d_model, self.arch.depth(stack))
            out.update({"init_std": std_in, "init_std_out": std_out})
        return out
