"""Greedy and beam-search decoding on small random encoder-decoders (no data needed).

Checks: cached incremental decoding equals re-running the whole prefix (every norm strategy),
beam 1 equals greedy, beam search with a beam wide enough to keep every prefix finds the exact
best hypothesis (brute force), batching with padding does not change any sentence's result, and
the cached decoder is fed exactly one token per step.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.config import validate_model_config
from normlab.decoding import beam_search, greedy_decode, max_lengths
from normlab.models.init import build_model, materialize
from normlab.norms.registry import registered_names

BOS, EOS, PAD = 2, 3, 0
SPECIALS = 7  # ids 0..6 are the special tokens; decoding bans all of them except <eos>
BANNED = [i for i in range(SPECIALS) if i != EOS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are dominated by per-op overhead: on a 2-core machine shared with other jobs, two
    OpenMP threads made this module ~6x slower (spin-waiting), one thread is as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_net(norm: str = "preln", vocab: int = 40, depth: int = 4, seed: int = 0, d_model: int = 32):
    """Untied embeddings: with tied ones a random model just repeats its input token."""
    cfg = validate_model_config(
        dict(
            arch="encoder_decoder",
            norm=norm,
            depth=depth,
            d_model=d_model,
            n_heads=4,
            d_ffn=64,
            share_embeddings=False,
            tie_embeddings=False,
        )
    )
    return materialize(build_model(cfg, vocab), "cpu", seed=seed).eval()


class EosRamp(nn.Module):
    """A random model ends hypotheses almost never (or at once); adding ``slope * position - 3``
    to the <eos> logit makes them end at varied lengths. Cached and uncached calls see the same
    absolute positions, so the wrapped model is still one fixed distribution."""

    def __init__(self, net: nn.Module, slope: float = 0.5) -> None:
        super().__init__()
        self.net, self.slope = net, slope

    def encode(self, src, src_mask):
        return self.net.encode(src, src_mask)

    def new_cache(self):
        return self.net.new_cache()

    def decode(self, tgt, memory, src_mask, cache=None, start=0):
        logits = self.net.decode(tgt, memory, src_mask, cache=cache, start=start)
        pos = torch.arange(start, start + tgt.shape[1], dtype=logits.dtype)
        logits[..., EOS] += self.slope * pos - 3.0
        return logits


def make_src(lengths: list[int], vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(SPECIALS, vocab, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src, src != PAD


def test_max_lengths_is_ratio_times_source_length_plus_offset() -> None:
    _, mask = make_src([5, 9, 1], vocab=20)
    assert max_lengths(mask, 1.5, 10).tolist() == [17, 23, 11]  # floor(1.5 * n + 10)
    assert max_lengths(mask, 0.1, 0).tolist() == [1, 1, 1]  # at least one token


@pytest.mark.parametrize("norm", registered_names())
def test_cached_decoding_equals_uncached(norm: str) -> None:
    """Per-step logits with the key/value cache equal a full re-run of the prefix."""
    torch.manual_seed(0)
    net = make_net(norm)
    src, mask = make_src([7, 4, 9], vocab=40)
    memory = net.encode(src, mask)
    prefix = torch.cat([torch.full((3, 1), BOS), torch.randint(SPECIALS, 40, (3, 8))], dim=1)
    cache = net.new_cache()
    with torch.no_grad():
        full = net.decode(prefix, memory, mask)
        steps = [net.decode(prefix[:, t : t + 1], memory, mask, cache=cache, start=t) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)
    limit = torch.tensor([12, 6, 12])
    cached = greedy_decode(net, src, mask, bos_id=BOS, eos_id=EOS, max_len=limit, banned=BANNED)
    uncached = greedy_decode(
        net, src, mask, bos_id=BOS, eos_id=EOS, max_len=limit, banned=BANNED, use_cache=False
    )
    assert cached == uncached
    assert all(len(h) <= n for h, n in zip(cached, limit.tolist(), strict=True))


def test_cached_decoder_is_fed_one_token_per_step() -> None:
    """Linear decoding cost: after the first step each call sees only the newest token."""
    net = make_net()
    src, mask = make_src([6, 8], vocab=40)
    fed: list[int] = []
    original = net.decode

    def spy(tgt, *args, **kwargs):
        fed.append(tgt.shape[1])
        return original(tgt, *args, **kwargs)

    net.decode = spy
    greedy_decode(net, src, mask, bos_id=BOS, eos_id=EOS, max_len=torch.tensor([10, 10]), banned=BANNED)
    n_greedy = len(fed)
    beam_search(
        net, src, mask, beam_size=3, bos_id=BOS, eos_id=EOS, max_len=torch.tensor([10, 10]), banned=BANNED
    )
    assert n_greedy >= 2 and len(fed) > n_greedy
    assert set(fed) == {1}


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_one_equals_greedy(length_penalty: float) -> None:
    net = EosRamp(make_net(seed=3))
    src, mask = make_src([5, 11, 8, 3, 9, 6], vocab=40, seed=4)
    limit = max_lengths(mask, 1.5, 2)
    greedy = greedy_decode(net, src, mask, bos_id=BOS, eos_id=EOS, max_len=limit, banned=BANNED)
    beam = beam_search(
        net,
        src,
        mask,
        beam_size=1,
        bos_id=BOS,
        eos_id=EOS,
        max_len=limit,
        length_penalty=length_penalty,
        banned=BANNED,
    )
    assert beam == greedy
    lengths = {len(h) for h in greedy}
    assert len(lengths) > 1, "test is only meaningful if hypotheses end at different lengths"


def _sequence_logprob(net, src, mask, hyp: list[int]) -> float:
    """log p(hyp + <eos> | src), by one uncached forward pass."""
    tgt_in = torch.tensor([[BOS] + hyp])
    with torch.no_grad():
        logp = F.log_softmax(net(src, mask, tgt_in).float(), dim=-1)[0]
    labels = hyp + [EOS]
    return float(sum(logp[t, y] for t, y in enumerate(labels)))


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_wide_beam_finds_the_exact_best_hypothesis(length_penalty: float) -> None:
    """Vocabulary of 3 real tokens + <eos>, max length 3: 40 hypotheses in all. A beam of 40 keeps
    every prefix alive, so beam search must return the brute-force argmax of
    sum log p / length ** length_penalty (length counts <eos>)."""
    vocab = SPECIALS + 3
    net = make_net(vocab=vocab, seed=5)
    src, mask = make_src([6], vocab=vocab, seed=6)
    real = list(range(SPECIALS, vocab))
    best, best_score = None, -math.inf
    for n in range(4):
        for hyp in itertools.product(real, repeat=n):
            score = _sequence_logprob(net, src, mask, list(hyp)) / (n + 1) ** length_penalty
            if score > best_score:
                best, best_score = list(hyp), score
    found = beam_search(
        net,
        src,
        mask,
        beam_size=40,
        bos_id=BOS,
        eos_id=EOS,
        max_len=torch.tensor([3]),
        length_penalty=length_penalty,
        banned=BANNED,
    )
    assert found == [best]


def test_batched_beam_search_equals_one_sentence_at_a_time() -> None:
    """Padding masks and dropping finished sentences from the batch change nothing."""
    net = EosRamp(make_net(seed=7))
    lengths = [4, 12, 7, 9, 2]
    src, mask = make_src(lengths, vocab=40, seed=8)
    limit = max_lengths(mask, 1.2, 3)
    batched = beam_search(net, src, mask, beam_size=4, bos_id=BOS, eos_id=EOS, max_len=limit, banned=BANNED)
    for i, n in enumerate(lengths):
        alone = beam_search(
            net,
            src[i : i + 1, :n],
            mask[i : i + 1, :n],
            beam_size=4,
            bos_id=BOS,
            eos_id=EOS,
            max_len=limit[i : i + 1],
            banned=BANNED,
        )
        assert alone == [batched[i]]
        assert len(batched[i]) <= int(limit[i])
        assert not set(batched[i]) & set(range(SPECIALS))
