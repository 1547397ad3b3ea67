"""Position-wise feed-forward sublayer: fc1 -> activation -> (optional Sub-LN) -> fc2.

``swiglu`` splits fc1 into a gate and a value half (both role ``ffn_in``). ``sub_norm`` is the
Sub-LN / Magneto norm over d_ffn before fc2, chosen by the strategy through :class:`FFNOptions`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import FFNOptions, Role, Site

ParamRole = tuple[nn.Parameter, Role, Site | None, slice | None]


class FeedForward(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        *,
        site: Site,
        activation: str = "gelu",
        bias: bool = True,
        options: FFNOptions = FFNOptions(),
        make_norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.site, self.activation, self.d_ffn = site, activation, d_ffn
        width = 2 * d_ffn if activation == "swiglu" else d_ffn
        self.fc1 = nn.Linear(d_model, width, bias=bias)
        self.fc2 = nn.Linear(d_ffn, d_model, bias=bias)
        self.sub_norm = make_norm(d_ffn) if options.sub_norm else None

    def param_roles(self) -> Iterator[ParamRole]:
        if self.activation == "swiglu":
            yield self.fc1.weight, Role.FFN_IN, self.site, slice(0, self.d_ffn)
            yield self.fc1.weight, Role.FFN_IN, self.site, slice(self.d_ffn, 2 * self.d_ffn)
        else:
            yield self.fc1.weight, Role.FFN_IN, self.site, None
        yield self.fc2.weight, Role.FFN_OUT, self.site, None
        for lin in (self.fc1, self.fc2):
            if lin.bias is not None:
                yield lin.bias, Role.BIAS, self.site, None

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.activation == "swiglu":
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        elif self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h)
        if self.sub_norm is not None:
            h = self.sub_norm(h)
        return self.fc2(h)
