"""FoundationLayerNorm (Dezhou Shen 2022, arXiv 2204.04477; proposed for GPT-1k): Post-LN with a
constant, depth-independent weight on the skip path.

    x_{l+1} = LN(alpha * x_l + G_l(x_l))     every sublayer; Post-LN family, no final norm
    alpha   = 0.974 by default (an empirical constant from the paper; note alpha < 1, i.e. the
              residual is slightly *down*-weighted), the same for every depth and stack

Init: the standard Xavier-normal init, unchanged (weights equal Post-LN's under the same seed).

Source status [S]: only the abstract and a third-party summary were reachable (docs/norms.md Sec. 4);
0.974 is unverified against the paper's text. ``model.norm_args.alpha`` overrides it
(alpha = 1 is exactly Post-LN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from normlab.errors import ConfigError
from normlab.norms.base import NormStrategy, PostNormResidual, Residual, Site
from normlab.norms.registry import register


@dataclass(frozen=True)
class FoundationLNArgs:
    alpha: float = 0.974  # constant weight on the skip path x_l

    def validate(self) -> None:
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ConfigError(f"model.norm_args.alpha: must be a finite number > 0, got {self.alpha}")


@register
class FoundationLN(NormStrategy):
    name = "foundation_ln"
    Args = FoundationLNArgs

    def residual(self, site: Site) -> Residual:
        return PostNormResidual(self.make_norm(self.d_model), alpha=self.args.alpha)

    def constants(self, stack: str) -> dict:
        return {"alpha": self.args.alpha, "beta": "none (standard init)"}
