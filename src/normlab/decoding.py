"""Greedy and batched beam-search decoding for :class:`normlab.models.transformer.EncoderDecoder`.

Both encode the source once and then feed the decoder one token per step with a key/value cache
(``model.new_cache()``): self-attention appends the new key/value, cross-attention computes the
memory's keys/values once. Each step therefore costs the same projections whatever the prefix
length, instead of re-running the whole prefix (``use_cache=False`` does that, for tests).

Lengths: sentence i may produce at most ``max_len[i]`` tokens before ``<eos>``; at that step
``<eos>`` is forced. :func:`max_lengths` gives fairseq's ``a * source_length + b``.

Beam search follows fairseq's ``SequenceGenerator``: per sentence keep ``beam_size`` live
hypotheses; each step take the top ``2 * beam_size`` extensions of all live beams (each beam has
exactly one ``<eos>`` extension, so at least ``beam_size`` of them do not end); an ``<eos>``
extension ranked within the top ``beam_size`` becomes a finished hypothesis scored
``sum log p / length ** length_penalty`` (length counts the ``<eos>``); the best ``beam_size``
non-ending extensions continue. A sentence is done when it has ``beam_size`` finished
hypotheses (or reached its length limit) and leaves the batch, so the cost shrinks as sentences
finish. With ``beam_size=1`` this is exactly greedy decoding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normlab.models.transformer import reorder_cache


def max_lengths(src_mask: Tensor, ratio: float, offset: int) -> Tensor:
    """Per-sentence output limit ``floor(ratio * source_length + offset)`` (at least 1)."""
    src_len = src_mask.sum(dim=1).to(torch.float64)
    return (ratio * src_len + offset).floor().clamp(min=1).to(torch.long)


def _ban(scores: Tensor, banned: Sequence[int]) -> Tensor:
    if banned:
        scores[:, list(banned)] = float("-inf")
    return scores


def _force_eos(scores: Tensor, rows: Tensor, eos_id: int) -> Tensor:
    """Rows in ``rows`` (bool) may only produce ``<eos>`` this step."""
    if rows.any():
        keep = scores[rows, eos_id]
        scores[rows] = float("-inf")
        scores[rows, eos_id] = keep
    return scores


def _strip(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


@torch.no_grad()
def greedy_decode(
    model: nn.Module,
    src: Tensor,
    src_mask: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_len: Tensor,
    banned: Sequence[int] = (),
    use_cache: bool = True,
) -> list[list[int]]:
    """Arg-max decoding; returns each sentence's tokens without ``<bos>`` / ``<eos>``."""
    memory = model.encode(src, src_mask)
    batch = src.shape[0]
    cache = model.new_cache() if use_cache else None
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    max_len = max_len.to(src.device)
    for t in range(int(max_len.max()) + 1):
        if use_cache:
            logits = model.decode(tokens[:, -1:], memory, src_mask, cache=cache, start=t)[:, -1]
        else:
            logits = model.decode(tokens, memory, src_mask)[:, -1]
        logits = _force_eos(_ban(logits.float(), banned), max_len <= t, eos_id)
        nxt = logits.argmax(dim=-1).masked_fill(done, eos_id)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if bool(done.all()):
            break
    return [_strip(row, eos_id) for row in tokens[:, 1:].tolist()]


@torch.no_grad()
def beam_search(
    model: nn.Module,
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_len: Tensor,
    length_penalty: float = 1.0,
    banned: Sequence[int] = (),
) -> list[list[int]]:
    """Batched beam search (see the module docstring); returns the best hypothesis per sentence
    without ``<bos>`` / ``<eos>``."""
    k = beam_size
    batch, device = src.shape[0], src.device
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    memory = model.encode(src, src_mask).index_select(0, rows)
    mask = src_mask.index_select(0, rows)
    cache = model.new_cache()
    max_len = max_len.to(device)
    sent = torch.arange(batch, device=device)  # original index of each live sentence
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    tokens = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    for t in range(int(max_len.max()) + 1):
        n = sent.shape[0]
        logits = model.decode(tokens[:, -1:], memory, mask, cache=cache, start=t)[:, -1]
        logp = _ban(F.log_softmax(logits.float(), dim=-1), banned)
        forced = max_len[sent] <= t  # [n]
        logp = _force_eos(logp, forced.repeat_interleave(k), eos_id)
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top_idx = cand.topk(min(2 * k, k * vocab), dim=1)
        beam, tok = top_idx // vocab, top_idx % vocab
        ends = (tok == eos_id) & torch.isfinite(top_scores)
        ends[:, k:] = False  # only an <eos> ranked within the top beam_size finishes a hypothesis
        for i, j in ends.nonzero().tolist():
            hyp = tokens[i * k + int(beam[i, j]), 1:].tolist()
            finished[int(sent[i])].append((float(top_scores[i, j]) / (t + 1) ** length_penalty, hyp))
        live_scores, pos = top_scores.masked_fill(tok == eos_id, float("-inf")).topk(k, dim=1)
        done = forced | torch.tensor([len(finished[int(s)]) >= k for s in sent], device=device)
        keep = ~done
        if not bool(keep.any()):
            break
        row_index = (torch.arange(n, device=device)[:, None] * k + beam.gather(1, pos))[keep].view(-1)
        tokens = torch.cat([tokens.index_select(0, row_index), tok.gather(1, pos)[keep].view(-1, 1)], dim=1)
        scores, sent = live_scores[keep], sent[keep]
        memory, mask = memory.index_select(0, row_index), mask.index_select(0, row_index)
        reorder_cache(cache, row_index)
    best = []
    for hyps in finished:
        best.append(max(hyps, key=lambda h: h[0])[1] if hyps else [])
    return best
