"""Position-wise feed-forward sublayer: fc1 -> activation -> (optional Sub-LN) -> fc2.

``swiglu`` splits fc1 into a gate and a value half (both role ``ffn_in``). ``sub_norm`` is the
Sub-LN / Magneto norm over d_ffn before fc2, chosen by the strategy through :class:`FFNOptions`.

With GELU (the default) and no sub-norm, ``gelu`` and ``fc2`` are one autograd step,
:class:`GeluLinear`, that keeps only the fc1 output for backward and recomputes the GELU there:
autograd would keep both the GELU input and its output (the widest tensors of a block, d_ffn wide),
so this saves a quarter of a block's activation memory for one cheap elementwise op. The gradients
are bit-identical to the two-op path (tests/unit/test_models.py); under autocast the plain path runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.norms.base import FFNOptions, Role, Site

ParamRole = tuple[nn.Parameter, Role, Site | None, slice | None]


class GeluLinear(torch.autograd.Function):
    """``y = gelu(a) @ W^T + b`` saving ``a`` only; backward recomputes ``gelu(a)`` and makes the same
    calls autograd makes for the two ops (``gelu_backward``, ``mm`` on the same operands in the same
    order, a sum for the bias). The weight's gradient comes out contiguous like the weight, so
    AccumulateGrad keeps it as it is instead of copying it into the weight's layout.

    Forward allocates ``y`` before the GELU output, the widest temporary of a block, and computes the
    product into it (``F.linear``'s own ``addmm`` / ``mm`` call, so bit-identical). The temporary is
    then the newest allocation when it is freed, and goes back to the top of the heap instead of
    leaving a d_ffn-wide hole under ``y`` that later, smaller allocations only partly refill (glibc's
    aligned allocations cannot reuse a freed chunk of their own size). ``y`` is a fresh tensor, not
    a view, which residual modules may add into in place (:func:`normlab.norms.base.add_into`)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(a, weight)
        ctx.has_bias = bias is not None
        y = a.new_empty((*a.shape[:-1], weight.shape[0]))
        h = F.gelu(a)
        h2, y2 = h.reshape(-1, h.shape[-1]), y.view(-1, y.shape[-1])
        if bias is None:
            torch.mm(h2, weight.t(), out=y2)
        else:
            torch.addmm(bias, h2, weight.t(), out=y2)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        a, weight = ctx.saved_tensors
        h = F.gelu(a)
        g2, h2 = grad.reshape(-1, grad.shape[-1]), h.reshape(-1, h.shape[-1])
        grad_h = g2.mm(weight).view(a.shape)
        grad_w = g2.t().mm(h2)  # autograd's own call for a linear's weight, contiguous as the weight
        grad_b = g2.sum(0) if ctx.has_bias else None
        return torch.ops.aten.gelu_backward(grad_h, a), grad_w, grad_b


def _autocast_on(t: Tensor) -> bool:
    return torch.is_autocast_enabled(t.device.type)


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
        if self.activation == "gelu" and self.sub_norm is None and not _autocast_on(h):
            return GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)
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
