"""Upscale LayerNorm (Dezhou Shen 2022, "FoundationLayerNorm", arXiv 2204.04477; proposed for
BERT-1k): DeepNorm's residual up-scaling *without* DeepNorm's init down-scaling.

    x_{l+1} = LN(alpha * x_l + G_l(x_l))     every sublayer; Post-LN family, no final norm
    alpha   = DeepNorm's alpha for the stack: (2N)^(1/4) encoder-only, (2M)^(1/4) decoder-only;
              in an encoder-decoder 0.81 (N^4 M)^(1/16) (encoder) and (3M)^(1/4) (decoder)

Init: the standard Xavier-normal init for every weight (no beta), so an Upscale-LN model has
exactly the weights of a Post-LN model built with the same seed.

Source status [S]: only the abstract and a third-party summary of arXiv 2204.04477 were
reachable (docs/norms.md Sec. 4); the paper covers BERT (encoder-only), so the decoder and
encoder-decoder alphas here are DeepNorm's, by the paper's own "DeepNorm's alpha" description.
When to use it: to isolate the effect of DeepNorm's alpha from its beta in an ablation.
"""

from __future__ import annotations

from normlab.norms.base import NormStrategy, PostNormResidual, Residual, Site
from normlab.norms.deepnorm import deepnorm_constants
from normlab.norms.registry import register


@register
class UpscaleLN(NormStrategy):
    name = "upscale_ln"

    def alpha(self, stack: str) -> float:
        a = self.arch
        return deepnorm_constants(a.arch, stack, a.encoder_depth, a.decoder_depth)[0]

    def residual(self, site: Site) -> Residual:
        return PostNormResidual(self.make_norm(self.d_model), alpha=self.alpha(site.stack))

    def constants(self, stack: str) -> dict:
        return {"alpha": self.alpha(stack), "beta": "none (standard init)"}
