"""LayerNorm Scaling, LNS (Sun et al. 2025, "The Curse of Depth in Large Language Models",
arXiv 2502.05795; code github lmsdss/LayerNorm-Scaling).

Pre-LN whose norm output in layer ``l`` is scaled by ``1/sqrt(l)``::

    x_{l+1} = x_l + G_l(Norm(x_l) / sqrt(l)),   l = 1..L per stack     (every sublayer of layer l)
    out     = Norm_final(x_L)                                          (Pre-LN family)

Why: in Pre-LN the residual stream's variance grows with depth, so the Jacobians of deep layers
approach the identity and those layers contribute little (the "curse of depth"); scaling the norm
output down by ``1/sqrt(l)`` keeps the output variance growth polynomial instead of exponential.
Layer 1 is exactly Pre-LN.

``scaling`` (``model.norm_args.scaling``):

- ``constant`` (default): a fixed factor ``1/sqrt(l)`` after the norm, as in the authors' code
  (``modeling_llama.py`` of lmsdss/LayerNorm-Scaling, ``NORM_TYPE=LNS``:
  ``hidden_states = scale_factor * self.input_layernorm(hidden_states)`` with
  ``scale_factor = 1 / math.sqrt(self.layer_index + 1)``);
- ``gain_init``: the norm's learnable gain initialised to ``1/sqrt(l)`` instead, as ProRes' code
  implements LNS (``weight.data.fill_(1/math.sqrt(layer_index+1))`` in dandingsky/ProRes). Same
  function at initialisation; the gain is then free to move at the optimiser's pace.

Norm class: RMSNorm by default (``model.norm_layer=auto``), as in the authors' code. Init of the
weights: the standard Xavier-normal init. Cross-attention in an encoder-decoder is
scaled like the other sublayers of its layer (an extension; the paper studies decoder-only LMs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from normlab.norms.base import Branch, InitSpec, NormStrategy, Residual, Role, Site, add_into
from normlab.norms.registry import register


@dataclass(frozen=True)
class LNSArgs:
    scaling: Literal["constant", "gain_init"] = "constant"  # fixed 1/sqrt(l) | norm gain initialised to it


class DeclaredGainNorm(nn.Module):
    """A norm whose gain (and bias) are initialised by role, so the strategy chooses the gain's
    initial value (LNS ``scaling=gain_init``: 1/sqrt(l)) through :meth:`NormStrategy.init_spec`."""

    def __init__(self, norm: nn.Module, site: Site) -> None:
        super().__init__()
        self.norm, self.site = norm, site

    def param_roles(self) -> Iterator[tuple]:
        yield self.norm.weight, Role.NORM_GAIN, self.site, None
        if getattr(self.norm, "bias", None) is not None:
            yield self.norm.bias, Role.BIAS, self.site, None

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ScaledPreNormResidual(Residual):
    """``x + f(norm(x) * scale)``; ``scale = 1`` gives Pre-LN exactly."""

    def __init__(self, norm: nn.Module, scale: float) -> None:
        super().__init__()
        self.norm, self.scale = norm, float(scale)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        h = self.norm(x)
        return add_into(self.gated(branch(h if self.scale == 1.0 else h * self.scale)), x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def lns_scale(layer: int) -> float:
    """1/sqrt(l) for 0-based ``layer`` (l = layer + 1)."""
    return 1.0 / math.sqrt(layer + 1)


@register
class LayerNormScaling(NormStrategy):
    name = "lns"
    Args = LNSArgs
    norm_layer = "rmsnorm"  # the authors' code: LLaMA's RMSNorm (LlamaRMSNorm) everywhere

    def residual(self, site: Site) -> Residual:
        if self.args.scaling == "constant":
            return ScaledPreNormResidual(self.make_norm(self.d_model), lns_scale(site.layer))
        return ScaledPreNormResidual(DeclaredGainNorm(self.make_norm(self.d_model), site), 1.0)

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        if role is Role.NORM_GAIN and site is not None:
            return InitSpec("constant", value=lns_scale(site.layer))
        return super().init_spec(site, role)

    def final_norm(self, stack: str) -> nn.Module | None:
        return self.make_norm(self.d_model)

    def constants(self, stack: str) -> dict:
        depth = self.arch.depth(stack)
        return {
            "scaling": self.args.scaling,
            "scale_l1": lns_scale(0),
            f"scale_l{depth}": lns_scale(depth - 1),
            "formula": "x + f(Norm(x)/sqrt(l))",
        }
