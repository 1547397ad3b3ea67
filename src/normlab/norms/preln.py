"""Pre-LN (Xiong et al. 2020, arXiv 2002.04745; GPT-2).

    x_{l+1} = x_l + G_l(LN(x_l))        for every sublayer
    out     = LN_final(x_L)             one final norm on top of each stack (mandatory: the
                                          residual stream itself is never normalised)

Stable at any depth without warm-up, at a small cost in final quality versus a converged Post-LN
(DeepNet Sec. 1, Sec. 5). Init: the standard Xavier-normal init.
"""

from __future__ import annotations

from torch import nn

from normlab.norms.base import NormStrategy, PreNormResidual, Residual, Site
from normlab.norms.registry import register


@register
class PreLN(NormStrategy):
    name = "preln"

    def residual(self, site: Site) -> Residual:
        return PreNormResidual(self.make_norm(self.d_model))

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model)
