"""TranslationDataModule on the real Multi30k files (staged mirror): splits, pairs, the joint
tokenizer and its cache, token-count batches, padding masks, per-epoch shuffling.

Tests that need the encoded corpus are marked slow: the module fixture trains the joint tokenizer
and encodes 29k sentence pairs once (about 10-20 s on 2 shared cores; cached on disk afterwards).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.data.translation import IGNORE_INDEX, TokenBatchSampler, TranslationDataModule
from normlab.errors import ConfigError

MAX_TOKENS = 1024
VOCAB = 1000  # small joint vocabulary: trains in about a second


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are dominated by per-op overhead: on a 2-core machine shared with other jobs, two
    OpenMP threads made this module ~6x slower (spin-waiting), one thread is as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dm(data_dir: Path) -> TranslationDataModule:
    module = TranslationDataModule(
        data_dir=str(data_dir), max_tokens=MAX_TOKENS, seed=7, tokenizer={"vocab_size": VOCAB}
    )
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    return module


@pytest.mark.slow
def test_split_sizes_and_alignment(dm: TranslationDataModule) -> None:
    sizes = {split: len(dm.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 29000, "val": 1014, "test": 1000}  # Multi30k task 1, nothing dropped
    src, tgt = dm.read_split("train")
    assert src[0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert tgt[0] == "Two young, White males are outside near many bushes."
    assert dm.datasets["train"].refs[0] == tgt[0]
    _, mscoco = TranslationDataModule(
        data_dir=str(dm.data_dir), test_set="test_2017_mscoco", tokenizer={"vocab_size": VOCAB}
    ).read_split("test")
    assert len(mscoco) == 461


def test_language_pairs_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"test_set: test_2017_flickr has no cs side.*test_2016_flickr"):
        TranslationDataModule(src_lang="cs", tgt_lang="en", test_set="test_2017_flickr")
    with pytest.raises(ConfigError, match="data.tgt_lang: equals data.src_lang"):
        TranslationDataModule(src_lang="de", tgt_lang="de")
    with pytest.raises(ConfigError, match="data.src_lang: 'es' is not one of en, de, fr, cs"):
        TranslationDataModule(src_lang="es")
    with pytest.raises(ConfigError, match="data.max_tokens"):
        TranslationDataModule(max_tokens=0)


@pytest.mark.slow
def test_joint_tokenizer_is_lossless_cached_and_shared_by_both_directions(dm: TranslationDataModule) -> None:
    tok = dm.tokenizer
    assert tok.vocab_size == VOCAB
    src, tgt = dm.read_split("val")
    for line in src[:50] + tgt[:50]:  # byte-level BPE: decode(encode(x)) == x, umlauts included
        assert tok.decode(tok.encode(line)) == line
    # one vocabulary for both sides: frequent German and English words are single tokens
    assert len(tok.encode(" Mann")) == 1 and len(tok.encode(" man")) == 1
    cached = list(dm.cache_dir.glob("tokenizer-bpe-v1000-*.json"))
    assert len(cached) == 1
    reverse = TranslationDataModule(
        data_dir=str(dm.data_dir), src_lang="en", tgt_lang="de", tokenizer={"vocab_size": VOCAB}
    )
    assert reverse.tokenizer.digest == tok.digest  # en-de reuses the de-en cache
    other = TranslationDataModule(
        data_dir=str(dm.data_dir), src_lang="fr", tgt_lang="en", tokenizer={"vocab_size": VOCAB}
    )
    assert other.fingerprint != dm.fingerprint


@pytest.mark.slow
def test_batches_respect_max_tokens_and_carry_masks(dm: TranslationDataModule) -> None:
    tok = dm.tokenizer
    data = dm.datasets["train"]
    seen: Counter[int] = Counter()
    n_batches = 0
    for batch in dm.train_dataloader():
        n_batches += 1
        b, s = batch["src"].shape
        t = batch["tgt_in"].shape[1]
        assert b * max(s, t) <= MAX_TOKENS or b == 1
        assert torch.equal(batch["src_mask"], batch["src"] != tok.pad_id)
        assert batch["src_mask"][:, 0].all()  # right padding: position 0 is always real
        assert (batch["tgt_in"][:, 0] == tok.bos_id).all()
        real = batch["labels"] != IGNORE_INDEX
        # labels are the decoder input shifted left by one, ending in <eos>
        assert torch.equal(
            batch["labels"][:, :-1][real[:, :-1] & real[:, 1:]],
            batch["tgt_in"][:, 1:][real[:, :-1] & real[:, 1:]],
        )
        ends = real.sum(1) - 1
        assert (batch["labels"][torch.arange(b), ends] == tok.eos_id).all()
        assert (batch["src"][torch.arange(b), batch["src_mask"].sum(1) - 1] == tok.eos_id).all()
        seen.update(batch["index"].tolist())
        if n_batches <= 3:  # the ids are the reference text (byte-level BPE decodes losslessly)
            for row, i in enumerate(batch["index"].tolist()):
                assert batch["refs"][row] == data.refs[i]
                assert tok.decode(batch["labels"][row][real[row]].tolist()) == data.refs[i]
    assert n_batches == len(dm.train_dataloader())
    assert sorted(seen) == list(range(29000)) and set(seen.values()) == {1}  # each pair once per epoch
    # length bucketing: padding is a small fraction of the batch
    batch = next(iter(dm.train_dataloader()))
    assert batch["src_mask"].float().mean() > 0.8


@pytest.mark.slow
def test_per_epoch_shuffle_is_deterministic_from_seed_and_epoch(dm: TranslationDataModule) -> None:
    data = dm.datasets["train"]

    def epoch(seed: int, e: int) -> list[list[int]]:
        sampler = TokenBatchSampler(data.src_lengths, data.tgt_lengths, MAX_TOKENS, shuffle=True, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    a0, a1, again = epoch(7, 0), epoch(7, 1), epoch(7, 0)
    assert a0 == again  # same seed + epoch -> identical batches in identical order
    assert a0 != a1 and epoch(8, 0) != a0
    assert len(a0) == len(a1)  # only equal-length pairs swap: the batch count never changes
    # epochs differ in batch composition, not only in batch order
    assert {tuple(sorted(b)) for b in a0} != {tuple(sorted(b)) for b in a1}


@pytest.mark.slow
def test_eval_batches_are_sorted_and_cover_the_split_once(dm: TranslationDataModule) -> None:
    loader = dm.test_dataloader()
    indices = [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(indices) == list(range(1000))
    lengths = dm.datasets["test"].src_lengths[np.array(indices)]
    assert (np.diff(lengths) >= 0).all()  # fixed order, sorted by source length
    assert [b["index"].tolist() for b in loader] == [b["index"].tolist() for b in dm.test_dataloader()]


@pytest.mark.slow
def test_long_training_pairs_are_dropped(dm: TranslationDataModule) -> None:
    short = TranslationDataModule(data_dir=str(dm.data_dir), max_len=12, tokenizer={"vocab_size": VOCAB})
    train = short.build_split("train")
    assert 0 < len(train) < 29000
    assert max(train.src_lengths.max(), train.tgt_lengths.max()) <= 12
    assert len(short.build_split("val")) == 1014  # evaluation splits are never filtered


@pytest.mark.slow
def test_a_damaged_id_cache_is_encoded_again_with_a_warning(
    dm: TranslationDataModule, caplog: pytest.LogCaptureFixture
) -> None:
    (cache,) = dm.cache_dir.glob(f"ids-{dm.split_file('val', dm.src_lang)}-*-{dm.tokenizer.digest}.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # a copy cut short
    again = TranslationDataModule(
        data_dir=str(dm.data_dir), max_tokens=MAX_TOKENS, seed=7, tokenizer={"vocab_size": VOCAB}
    )
    with caplog.at_level("WARNING", logger="normlab.data"):
        val = again.build_split("val")
    assert "is unreadable" in caplog.text and str(cache) in caplog.text
    assert val.src == dm.datasets["val"].src and val.tgt == dm.datasets["val"].tgt
    assert torch.load(cache, weights_only=True)["ids"].numel() == sum(len(x) for x in val.src)
