"""Post-LN (Vaswani et al. 2017, arXiv 1706.03762, Sec. 3.1).

    x_{l+1} = LN(x_l + G_l(x_l))        for every sublayer; no final norm (the last LN already
                                          normalises the stack output)

Better final quality than Pre-LN when it converges; without warm-up it stalls or diverges at
depth (DeepNet, arXiv 2203.00555, Sec. 3). Init: the standard Xavier-normal init.
"""

from __future__ import annotations

from normlab.norms.base import NormStrategy, PostNormResidual, Residual, Site
from normlab.norms.registry import register


@register
class PostLN(NormStrategy):
    name = "postln"

    def residual(self, site: Site) -> Residual:
        return PostNormResidual(self.make_norm(self.d_model), alpha=1.0)
