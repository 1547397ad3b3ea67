"""Mix-LN (Li et al. 2024, "Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and
Post-LN", arXiv 2412.13795, ICLR 2025; code pixeli99/MixLN ``NORM_TYPE=post_pre``).

Post-LN for the first floor(alpha * L) layers of a stack, Pre-LN for the rest::

    layer l <  floor(alpha L):   x_{l+1} = LN(x_l + G_l(x_l))         (every sublayer)
    layer l >= floor(alpha L):   x_{l+1} = x_l + G_l(LN(x_l))
    out = LN_final(x_L)          when at least one Pre-LN layer exists

Post-LN in the shallow layers keeps their gradients large; Pre-LN in the deep layers keeps
training stable. Default alpha = 0.25, the README's examples (12 layers -> 3 Post-LN layers,
24 -> 6). L is the depth of each stack (an encoder-decoder splits each stack on its own). The
final norm follows the Pre-LN part, so alpha = 0 is exactly ``preln`` and alpha = 1 exactly
``postln``. Norm class: RMSNorm by default (``model.norm_layer=auto``), as in the authors' LLaMA
code. Init: the standard Xavier-normal init.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from normlab.errors import ConfigError
from normlab.norms.base import NormStrategy, PostNormResidual, PreNormResidual, Residual, Site
from normlab.norms.registry import register


@dataclass(frozen=True)
class MixLNArgs:
    alpha: float = 0.25  # fraction of layers (from the bottom) that use Post-LN

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"model.norm_args.alpha: must be in [0, 1], got {self.alpha}")


def post_ln_layers(alpha: float, depth: int) -> int:
    """floor(alpha * depth), robust to float rounding (0.29 * 100 -> 29, not 28)."""
    return math.floor(alpha * depth + 1e-9)


@register
class MixLN(NormStrategy):
    name = "mixln"
    Args = MixLNArgs
    norm_layer = "rmsnorm"  # the authors' code: LLaMA's RMSNorm (LlamaRMSNorm), Post- and Pre-LN layers

    def n_post(self, stack: str) -> int:
        return post_ln_layers(self.args.alpha, self.arch.depth(stack))

    def residual(self, site: Site) -> Residual:
        if site.layer < self.n_post(site.stack):
            return PostNormResidual(self.make_norm(self.d_model), alpha=1.0)
        return PreNormResidual(self.make_norm(self.d_model))

    def final_norm(self, stack: str) -> nn.Module | None:
        if self.n_post(stack) < self.arch.depth(stack):
            return self.make_norm(self.d_model)
        return None

    def constants(self, stack: str) -> dict:
        n_post, depth = self.n_post(stack), self.arch.depth(stack)
        return {
            "alpha": self.args.alpha,
            "post_ln_layers": f"0-{n_post - 1}" if n_post else "none",
            "pre_ln_layers": f"{n_post}-{depth - 1}" if n_post < depth else "none",
        }
