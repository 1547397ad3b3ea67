"""One Transformer block, identical for every architecture and every norm strategy.

The block owns its sublayers (self-attention, optional cross-attention, feed-forward) and asks the
strategy, once at construction, for one residual module per sublayer and for the norms inside
attention and the FFN. ``forward`` never looks at the strategy again::

    x ──► res_self(x,  h ↦ drop(SelfAttn(h)))
      ──► res_cross(x, h ↦ drop(CrossAttn(h, memory)))      (decoder of an encoder-decoder)
      ──► res_ffn(x,   h ↦ drop(FFN(h)))

where each ``res_*`` decides where the norms sit, e.g. Post-LN ``norm(x + f(x))`` or Pre-LN
``x + f(norm(x))``. With a residual warm-up (ProRes, :mod:`normlab.models.warmup`) the block gives
every residual module of layer ``l`` the gate alpha(l, t) of that layer; the residual module applies
it to its branch term, so the strategy never knows a warm-up is on.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from normlab.models.attention import MultiHeadAttention
from normlab.models.feedforward import FeedForward
from normlab.models.warmup import ResidualWarmup
from normlab.norms.base import NormStrategy, Residual, Site


def residual_for(strategy: NormStrategy, site: Site, warmup: ResidualWarmup | None) -> Residual:
    """The strategy's residual module for ``site``, gated by the warm-up of its layer if any."""
    residual = strategy.residual(site)
    if not isinstance(residual, Residual):
        raise TypeError(
            f"{type(strategy).__name__}.residual({site}) returned {type(residual).__name__}; residual "
            "modules must subclass normlab.norms.base.Residual and add their branch term via gated()"
        )
    if warmup is not None:
        residual.attach_gate(warmup.gate(site.stack, site.layer))
    return residual


class TransformerBlock(nn.Module):
    def __init__(
        self,
        cfg: Any,
        strategy: NormStrategy,
        stack: str,
        layer: int,
        cross: bool,
        warmup: ResidualWarmup | None = None,
    ) -> None:
        super().__init__()
        d, make_norm = cfg.d_model, strategy.make_norm
        self_site = Site(stack, layer, "self_attn")
        self.self_attn = MultiHeadAttention(
            d,
            cfg.n_heads,
            site=self_site,
            bias=cfg.bias,
            attn_dropout=cfg.attn_dropout,
            options=strategy.attention_options(self_site),
            make_norm=make_norm,
        )
        self.self_attn_residual = residual_for(strategy, self_site, warmup)
        if cross:
            cross_site = Site(stack, layer, "cross_attn")
            self.cross_attn = MultiHeadAttention(
                d,
                cfg.n_heads,
                site=cross_site,
                cross=True,
                bias=cfg.bias,
                attn_dropout=cfg.attn_dropout,
                options=strategy.attention_options(cross_site),
                make_norm=make_norm,
            )
            self.cross_attn_residual = residual_for(strategy, cross_site, warmup)
        else:
            self.cross_attn = self.cross_attn_residual = None
        ffn_site = Site(stack, layer, "ffn")
        self.ffn = FeedForward(
            d,
            cfg.d_ffn,
            site=ffn_site,
            activation=cfg.activation,
            bias=cfg.bias,
            options=strategy.ffn_options(ffn_site),
            make_norm=make_norm,
        )
        self.ffn_residual = residual_for(strategy, ffn_site, warmup)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: dict[str, dict[str, Tensor]] | None = None,
    ) -> Tensor:
        self_cache = None if cache is None else cache.setdefault("self", {})
        x = self.self_attn_residual(
            x,
            lambda h: self.dropout(self.self_attn(h, mask=mask, causal=causal, rope=rope, cache=self_cache)),
        )
        if self.cross_attn is not None:
            cross_cache = None if cache is None else cache.setdefault("cross", {})
            x = self.cross_attn_residual(
                x,
                lambda h: self.dropout(
                    self.cross_attn(h, memory=memory, mask=memory_mask, cache=cross_cache)
                ),
            )
        return self.ffn_residual(x, lambda h: self.dropout(self.ffn(h)))
