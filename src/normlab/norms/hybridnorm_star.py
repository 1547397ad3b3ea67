"""HybridNorm* (Zhuo et al. 2025, arXiv 2503.04598; README of BryceZhuo/HybridNorm,
``norm_pos_special_config = {0: {'attn_norm': True, 'ffn_residual': False}}``): HybridNorm, except
that block 0 of each stack is a plain Pre-Norm block that keeps the QKV norms.

    block 0:   y = x + W_O Attention(QKVNorm(W_qkv Norm_attn(x)))
               x_next = y + FFN(Norm_ffn(y))
    blocks >= 1: exactly HybridNorm (see ``hybridnorm``); one final norm per stack

In an encoder-decoder the decoder's block 0 also puts a Pre-Norm on its cross-attention input.
Arguments and init: as ``hybridnorm`` (Megatron init by default). The paper reports HybridNorm*
as the best variant for its 1.2B dense and 1B-7B MoE models.
"""

from __future__ import annotations

from normlab.norms.base import PreNormResidual, Residual, Site
from normlab.norms.hybridnorm import HybridNorm
from normlab.norms.registry import register


@register
class HybridNormStar(HybridNorm):
    name = "hybridnorm_star"

    def residual(self, site: Site) -> Residual:
        if site.layer == 0:
            return PreNormResidual(self.make_norm(self.d_model))
        return super().residual(site)

    def constants(self, stack: str) -> dict:
        return {**super().constants(stack), "block_0": "Pre-Norm (attention input norm + QKV norm)"}
