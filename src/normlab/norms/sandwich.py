"""Sandwich-LN / Peri-LN: a norm on both sides of every sublayer.

    x_{l+1} = x_l + Norm_out(F_l(Norm_in(x_l)))       every sublayer (self-attn, cross-attn, FFN)
    out     = Norm_final(x_L)                          one final norm per stack

Sources: Sandwich-LN from CogView (Ding et al. 2021, arXiv 2105.13290, Sec. 2.4), implemented
as ``NORM_TYPE=sandwich`` in pixeli99/MixLN ``modeling_llama.py``; Peri-LN (Kim et al. 2025,
arXiv 2502.02732, ICML 2025) places the norms the same way ("peripheral" to each module), so one
registry entry covers both. The residual stream is never normalised inside the stack (as in
Pre-LN), but every branch output is, so no single sublayer can blow up the stream at init or
during training. Norm class: RMSNorm by default (``model.norm_layer=auto``), as in the code this
follows and in Peri-LN; CogView's Sandwich-LN used LayerNorm (``model.norm_layer=layernorm``).
Not included: Peri-LN's optional extra norm on the embedding output (unverified detail,
docs/norms.md Sec. 9). Init: the standard Xavier-normal init.
"""

from __future__ import annotations

from torch import nn

from normlab.norms.base import NormStrategy, Residual, SandwichResidual, Site
from normlab.norms.registry import register


@register
class Sandwich(NormStrategy):
    name = "sandwich"
    norm_layer = "rmsnorm"  # pixeli99/MixLN NORM_TYPE=sandwich and Peri-LN use RMSNorm (CogView: LayerNorm)

    def residual(self, site: Site) -> Residual:
        return SandwichResidual(self.make_norm(self.d_model), self.make_norm(self.d_model))

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model)

    def constants(self, stack: str) -> dict:
        return {"placement": "x + norm_out(f(norm_in(x)))", "norms_per_sublayer": 2}
