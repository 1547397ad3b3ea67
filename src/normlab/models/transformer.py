"""Encoder, Decoder and EncoderDecoder: one block type, three architectures.

Each model owns the norm strategy (``self.norm_strategy``, built once from its :class:`ArchSpec`),
a token embedding scaled by sqrt(d) (std d^-1/2 at init, so embeddings have unit variance), the
stacks of :class:`TransformerBlock` and, for the decoders, an output projection tied to the target
embedding by default. Position information is RoPE inside attention (default), an added sinusoidal
table, or none.

Build these on the meta device and call :func:`normlab.models.init.init_weights` after
materialisation; nothing here initialises weights in ``__init__``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.models.block import TransformerBlock
from normlab.models.rotary import rotary_cos_sin, sinusoidal
from normlab.models.warmup import ResidualWarmup
from normlab.norms.base import ArchSpec, NormStrategy, Role

Cache = list[dict[str, dict[str, Tensor]]]


class TokenEmbedding(nn.Module):
    """Token ids -> vectors, scaled by sqrt(d) so that the d^-1/2 init gives unit variance."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.scale = math.sqrt(d_model)

    def param_roles(self) -> Iterator[tuple]:
        yield self.weight, Role.EMBEDDING, None, None

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight) * self.scale


class OutputHead(nn.Module):
    """Untied projection d -> vocab (or classes)."""

    def __init__(self, d_model: int, n_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, n_out, bias=False)

    def param_roles(self) -> Iterator[tuple]:
        yield self.proj.weight, Role.HEAD, None, None

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)


class TransformerStack(nn.Module):
    """``depth`` blocks plus the strategy's final norm (or none)."""

    def __init__(
        self,
        cfg: Any,
        strategy: NormStrategy,
        stack: str,
        depth: int,
        cross: bool,
        warmup: ResidualWarmup | None = None,
    ) -> None:
        super().__init__()
        self.stack = stack  # "encoder" | "decoder": names the stack in logs and monitors
        self.layers = nn.ModuleList(
            TransformerBlock(cfg, strategy, stack, i, cross, warmup) for i in range(depth)
        )
        self.final_norm = strategy.final_norm(stack)

    def forward(self, x: Tensor, cache: Cache | None = None, **kwargs: Any) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=None if cache is None else cache[i], **kwargs)
        return x if self.final_norm is None else self.final_norm(x)


def build_residual_warmup(cfg: Any, arch: ArchSpec) -> ResidualWarmup | None:
    """The ProRes warm-up of ``cfg.residual_warmup`` for the stacks of ``arch`` (None when off)."""
    warmup = getattr(cfg, "residual_warmup", None)
    if warmup is None:
        return None
    depths = {"encoder": arch.encoder_depth, "decoder": arch.decoder_depth}
    return ResidualWarmup(warmup.schedule, warmup.T, depths)


def transformer_stacks(net: nn.Module) -> list[TransformerStack]:
    """Every stack of ``net`` (encoder before decoder), also when wrapped by FSDP or checkpointing."""
    return [m for m in net.modules() if isinstance(m, TransformerStack)]


class _Core(nn.Module):
    """Shared pieces: strategy, residual warm-up, position handling, embedding dropout."""

    def __init__(self, cfg: Any, strategy: NormStrategy) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm_strategy = strategy
        self.residual_warmup = build_residual_warmup(cfg, strategy.arch)
        self.embed_dropout = nn.Dropout(cfg.dropout)

    def _stack(self, cfg: Any, stack: str, cross: bool = False) -> TransformerStack:
        depth = self.norm_strategy.arch.depth(stack)
        return TransformerStack(cfg, self.norm_strategy, stack, depth, cross, self.residual_warmup)

    def _embed(self, embedding: TokenEmbedding, ids: Tensor, start: int = 0) -> tuple[Tensor, Any]:
        x = embedding(ids)
        positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        rope = None
        if self.cfg.pos_encoding == "rope":
            rope = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_base, x.dtype)
        elif self.cfg.pos_encoding == "sinusoidal":
            x = x + sinusoidal(positions, self.cfg.d_model, x.dtype)
        return self.embed_dropout(x), rope


class Decoder(_Core):
    """Decoder-only causal LM: ids [B, T] -> logits [B, T, V]."""

    fsdp_entry_points = ("hidden", "logits", "probe")  # called by tasks/monitors besides forward

    def __init__(self, cfg: Any, strategy: NormStrategy, vocab_size: int) -> None:
        super().__init__(cfg, strategy)
        self.embed = TokenEmbedding(vocab_size, cfg.d_model)
        self.decoder = self._stack(cfg, "decoder")
        self.head = None if cfg.tie_embeddings else OutputHead(cfg.d_model, vocab_size)

    def hidden(self, ids: Tensor, cache: Cache | None = None, start: int = 0) -> Tensor:
        x, rope = self._embed(self.embed, ids, start)
        return self.decoder(x, cache=cache, causal=True, rope=rope)

    def logits(self, h: Tensor) -> Tensor:
        return F.linear(h, self.embed.weight) if self.head is None else self.head(h)

    def forward(self, ids: Tensor, cache: Cache | None = None, start: int = 0) -> Tensor:
        return self.logits(self.hidden(ids, cache, start))

    def probe(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(final hidden state, logits): what the stability monitor compares across steps."""
        h = self.hidden(ids)
        return h, self.logits(h)


class Encoder(_Core):
    """Bidirectional encoder: ids [B, T] (+ padding mask, segment ids) -> hidden [B, T, d]."""

    def __init__(self, cfg: Any, strategy: NormStrategy, vocab_size: int, n_segments: int = 0) -> None:
        super().__init__(cfg, strategy)
        self.embed = TokenEmbedding(vocab_size, cfg.d_model)
        self.segment_embed = TokenEmbedding(n_segments, cfg.d_model) if n_segments else None
        self.encoder = self._stack(cfg, "encoder")

    def forward(
        self, ids: Tensor, padding_mask: Tensor | None = None, segments: Tensor | None = None
    ) -> Tensor:
        """``padding_mask``: bool [B, T], True for real tokens."""
        x, rope = self._embed(self.embed, ids)
        if self.segment_embed is not None and segments is not None:
            x = x + self.segment_embed(segments)
        mask = None if padding_mask is None else padding_mask[:, None, None, :]
        return self.encoder(x, mask=mask, rope=rope)


class EncoderDecoder(_Core):
    """Sequence-to-sequence: encoder over the source, decoder with cross-attention over it."""

    fsdp_entry_points = ("encode", "decode", "probe")  # beam search / monitors call these on the root

    def __init__(self, cfg: Any, strategy: NormStrategy, vocab_size: int) -> None:
        super().__init__(cfg, strategy)
        self.tgt_embed = TokenEmbedding(vocab_size, cfg.d_model)
        self.src_embed = None if cfg.share_embeddings else TokenEmbedding(vocab_size, cfg.d_model)
        self.encoder = self._stack(cfg, "encoder")
        self.decoder = self._stack(cfg, "decoder", cross=True)
        self.head = None if cfg.tie_embeddings else OutputHead(cfg.d_model, vocab_size)

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """``src_mask``: bool [B, S], True for real tokens."""
        x, rope = self._embed(self.src_embed or self.tgt_embed, src)
        return self.encoder(x, mask=src_mask[:, None, None, :], rope=rope)

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache: Cache | None = None, start: int = 0
    ) -> Tensor:
        """Logits [B, T, V] for target prefix ``tgt``; with ``cache`` only new tokens are fed."""
        return self._project(self._decode_hidden(tgt, memory, src_mask, cache, start))

    def _decode_hidden(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, cache: Cache | None = None, start: int = 0
    ) -> Tensor:
        x, rope = self._embed(self.tgt_embed, tgt, start)
        return self.decoder(
            x, cache=cache, causal=True, rope=rope, memory=memory, memory_mask=src_mask[:, None, None, :]
        )

    def _project(self, h: Tensor) -> Tensor:
        return F.linear(h, self.tgt_embed.weight) if self.head is None else self.head(h)

    def probe(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """(final decoder hidden state, logits) for teacher-forced ``tgt``."""
        h = self._decode_hidden(tgt, self.encode(src, src_mask), src_mask)
        return h, self._project(h)

    def forward(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> Tensor:
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def new_cache(self) -> Cache:
        return [{} for _ in range(len(self.decoder.layers))]


def reorder_cache(cache: Cache, index: Tensor) -> None:
    """Select batch rows (beam search) of every cached key/value tensor, in place."""
    for layer in cache:
        for entry in layer.values():
            for key, t in entry.items():
                entry[key] = t.index_select(0, index)
