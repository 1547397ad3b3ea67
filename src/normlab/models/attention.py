"""Multi-head attention with a fused QKV projection and ``scaled_dot_product_attention``.

One module serves self-attention (fused ``W_qkv``: d -> 3d) and cross-attention (``W_q`` on the
decoder state, fused ``W_kv`` on the encoder memory). What goes *inside* attention is an option
chosen by the norm strategy, never a subclass per paper:

- ``qkv_norm``: per-head norms over d_h on q, k and v, applied before RoPE (HybridNorm);
- ``sub_norm``: a norm over d on the attention output before W^O (Sub-LN / Magneto).

Incremental decoding: pass a ``cache`` dict per attention module; self-attention appends this
step's keys/values to it, cross-attention computes the memory's keys/values once and reuses them,
so decoding cost grows linearly with the output length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.models.rotary import apply_rotary
from normlab.norms.base import AttentionOptions, Role, Site

ParamRole = tuple[nn.Parameter, Role, Site | None, slice | None]


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        site: Site,
        cross: bool = False,
        bias: bool = True,
        attn_dropout: float = 0.0,
        options: AttentionOptions = AttentionOptions(),
        make_norm: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.site, self.cross, self.attn_dropout = site, cross, attn_dropout
        if cross:
            self.q_proj = nn.Linear(d_model, d_model, bias=bias)
            self.kv_proj = nn.Linear(d_model, 2 * d_model, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        if options.qkv_norm:
            assert make_norm is not None
            self.q_norm = make_norm(self.head_dim)
            self.k_norm = make_norm(self.head_dim)
            self.v_norm = make_norm(self.head_dim)
        else:
            self.q_norm = self.k_norm = self.v_norm = None
        self.sub_norm = make_norm(d_model) if options.sub_norm else None

    def param_roles(self) -> Iterator[ParamRole]:
        """Declared roles of this module's weights (rows of the fused projections)."""
        d = self.d_model
        if self.cross:
            yield self.q_proj.weight, Role.Q, self.site, None
            yield self.kv_proj.weight, Role.K, self.site, slice(0, d)
            yield self.kv_proj.weight, Role.V, self.site, slice(d, 2 * d)
            linears = (self.q_proj, self.kv_proj, self.out_proj)
        else:
            yield self.qkv_proj.weight, Role.Q, self.site, slice(0, d)
            yield self.qkv_proj.weight, Role.K, self.site, slice(d, 2 * d)
            yield self.qkv_proj.weight, Role.V, self.site, slice(2 * d, 3 * d)
            linears = (self.qkv_proj, self.out_proj)
        yield self.out_proj.weight, Role.OUT, self.site, None
        for lin in linears:
            if lin.bias is not None:
                yield lin.bias, Role.BIAS, self.site, None

    def _heads(self, t: Tensor) -> Tensor:  # [B, T, d] -> [B, H, T, d_h]
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        *,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """``x``: [B, T, d]. ``mask``: bool, True = may attend, broadcastable to [B, H, T, S].
        ``causal`` applies only without a mask (the caller folds causality into ``mask`` else)."""
        if self.cross:
            q = self._heads(self.q_proj(x))
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                assert memory is not None, "cross-attention needs the encoder memory"
                k, v = (self._heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))
                k, v = self._norm_kv(k, v)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
            q = q if self.q_norm is None else self.q_norm(q)
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if self.q_norm is not None:
                q = self.q_norm(q)
            k, v = self._norm_kv(k, v)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                if "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        is_causal = causal and mask is None and q.shape[2] > 1
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d_model)
        if self.sub_norm is not None:
            out = self.sub_norm(out)
        return self.out_proj(out)

    def _norm_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k_norm is not None:
            k, v = self.k_norm(k), self.v_norm(v)
        return k, v
