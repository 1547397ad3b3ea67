"""ReZero (Bachlechner et al. 2020, "ReZero is All You Need", arXiv 2003.04887, Sec. 3).

No normalisation at all: every sublayer is a gated residual::

    x_{i+1} = x_i + alpha_i * F_i(x_i),     alpha_i a learnable scalar, alpha_i = 0 at init

so at initialisation every block is the identity and the whole stack maps its input to itself
(dynamical isometry); the gates open during training. There is no LayerNorm in the blocks and no
final norm.

One gate per *layer*, shared by all its sublayers (self-attn, cross-attn, FFN), as in the
authors' ``RZTXEncoderLayer`` / ``RZTXDecoderLayer`` (majumderb/rezero, a single ``resweight``
initialised to 0). The gate is a 1-element tensor (not 0-d) so it shards like any other
parameter. Init of the weights: the standard Xavier-normal init.

Args: ``alpha_init`` (default 0, the paper's value; a small non-zero value gives SkipInit-like
behaviour, arXiv 2002.10444).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normlab.norms.base import Branch, NormStrategy, Residual, Site, add_into
from normlab.norms.registry import register


@dataclass(frozen=True)
class ReZeroArgs:
    alpha_init: float = 0.0  # initial value of every residual gate (0 = the paper)


class ReZeroGate(nn.Module):
    """The learnable residual weight alpha of one layer."""

    def __init__(self, init_value: float) -> None:
        super().__init__()
        self.init_value = float(init_value)
        self.alpha = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.init_value)


class ReZeroResidual(Residual):
    """``x + alpha * f(x)``; ``gate`` (ReZero's alpha) is shared by the sublayers of one layer."""

    def __init__(self, gate: ReZeroGate) -> None:
        super().__init__()
        self.rezero_gate = gate

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return add_into(self.gated(self.rezero_gate.alpha * branch(x)), x)


@register
class ReZero(NormStrategy):
    name = "rezero"
    Args = ReZeroArgs

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # (stack, layer) -> gate; a plain dict, so the gates are owned by the blocks, not here.
        self._gates: dict[tuple[str, int], ReZeroGate] = {}

    def residual(self, site: Site) -> Residual:
        key = (site.stack, site.layer)
        if key not in self._gates:
            self._gates[key] = ReZeroGate(self.args.alpha_init)
        return ReZeroResidual(self._gates[key])

    def constants(self, stack: str) -> dict:
        return {
            "alpha_init": self.args.alpha_init,
            "gates": "one per layer, shared by its sublayers",
            "norms": 0,
        }
