"""LMDataModule on real Tiny Shakespeare: splits, windows, caches, baseline, checkpoint rebuild."""

from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

from normlab.data import tokenizer as tokmod
from normlab.data.lm import LMDataModule, TokenWindows
from normlab.data.sampling import ResumableSampler
from normlab.data.tokenizer import TextTokenizer
from normlab.errors import ConfigError

MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
N_CHARS = 1_115_394
SEQ, BATCH = 64, 8


@pytest.fixture(autouse=True)
def _mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def dm(data_root: Path) -> LMDataModule:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
        module = LMDataModule(data_dir=str(data_root), seq_len=SEQ, batch_size=BATCH)
        module.prepare_data()
        module.setup("fit")
    return module


def test_splits_are_contiguous_90_5_5_by_characters(dm: LMDataModule) -> None:
    texts = dm.split_texts()
    sizes = [len(texts[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == N_CHARS and sizes[0] == 1_003_854  # nanoGPT's 90% cut
    assert [round(n / N_CHARS, 4) for n in sizes] == [0.9, 0.05, 0.05]
    assert texts["train"].startswith("First Citizen:") and texts["test"].endswith("\n")
    for split in ("train", "val", "test"):  # each split's ids are exactly that text
        assert dm.ids[split].dtype == torch.long and dm.ids[split].dim() == 1
        assert dm.tokenizer.decode(dm.ids[split].tolist()) == texts[split]


def test_train_batches_are_shifted_windows(dm: LMDataModule) -> None:
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, ResumableSampler) and loader.drop_last
    assert loader.sampler.shuffle and loader.sampler.num_replicas == 1  # no trainer: one replica
    n_windows = (len(dm.ids["train"]) - 1) // SEQ
    assert len(loader) == n_windows // BATCH
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (BATCH, SEQ)
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    item = TokenWindows(dm.ids["train"], SEQ)[3]
    assert torch.equal(item["input_ids"], dm.ids["train"][3 * SEQ : 4 * SEQ])
    assert torch.equal(item["labels"], dm.ids["train"][3 * SEQ + 1 : 4 * SEQ + 1])


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_windows_cover_the_split_in_order(dm: LMDataModule, split: str) -> None:
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    assert isinstance(loader.sampler, SequentialSampler) and not loader.drop_last
    ids = dm.ids[split]
    inputs = torch.cat([b["input_ids"].flatten() for b in loader])
    labels = torch.cat([b["labels"].flatten() for b in loader])
    covered = len(labels)
    assert covered % SEQ == 0 and 0 <= (len(ids) - 1) - covered < SEQ  # only a partial tail lost
    assert torch.equal(inputs, ids[:covered]) and torch.equal(labels, ids[1 : covered + 1])


def test_unigram_baseline_matches_independent_computation(dm: LMDataModule) -> None:
    vocab = dm.tokenizer.vocab_size
    counts = Counter(dm.ids["train"].tolist())
    total = sum(counts.values())
    probs = np.array([(counts.get(i, 0) + 1) / (total + vocab) for i in range(vocab)])
    expected = float(-np.log(probs[dm.ids["val"].numpy()]).mean())
    assert math.isfinite(dm.unigram_baseline)
    assert 3.0 < dm.unigram_baseline < math.log(2048)
    assert dm.unigram_baseline == pytest.approx(expected, rel=1e-9)


def test_second_run_uses_caches(dm: LMDataModule, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache miss: retrained or re-encoded")

    monkeypatch.setattr(tokmod, "_train", forbidden)
    monkeypatch.setattr(TextTokenizer, "encode_corpus", forbidden)
    again = LMDataModule(data_dir=str(data_root), seq_len=SEQ, batch_size=BATCH)
    again.prepare_tokenizer()
    assert again.unigram_baseline == dm.unigram_baseline  # the run reads it before fit/setup
    again.setup()
    assert again.tokenizer.to_json() == dm.tokenizer.to_json()
    assert all(torch.equal(again.ids[s], dm.ids[s]) for s in ("train", "val", "test"))


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "not_a_tensor"])
def test_a_damaged_id_cache_is_encoded_again_with_a_warning(
    dm: LMDataModule, data_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    shutil.copytree(data_root, tmp_path / "data")
    (cache,) = (tmp_path / "data" / "tinyshakespeare" / "cache").glob("ids-val-*.pt")
    good = cache.read_bytes()
    if damage == "random":
        cache.write_bytes(bytes(random.Random(15).randrange(256) for _ in range(100)))
    elif damage == "truncated":
        cache.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    else:  # readable, but not what the cache holds
        torch.save({"ids": [1, 2, 3]}, cache)
    again = LMDataModule(data_dir=str(tmp_path / "data"), seq_len=SEQ, batch_size=BATCH)
    with caplog.at_level("WARNING", logger="normlab.data"):
        again.setup()
    assert all(torch.equal(again.ids[s], dm.ids[s]) for s in ("train", "val", "test"))
    assert torch.equal(torch.load(cache, weights_only=True), dm.ids["val"])  # rewritten whole
    assert "is unreadable" in caplog.text and "encoding the data again" in caplog.text


def test_tokenizer_json_gives_identical_ids_without_training(
    dm: LMDataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokmod, "_train", lambda *a: pytest.fail("trained despite tokenizer_json"))
    config = dm.data_config()
    assert "tokenizer_json" not in config
    config["data_dir"] = str(tmp_path)  # fresh folder: nothing cached there
    rebuilt = LMDataModule(**config, tokenizer_json=dm.tokenizer.to_json())
    rebuilt.setup("test")
    assert rebuilt.tokenizer.vocab_size == dm.tokenizer.vocab_size
    assert all(torch.equal(rebuilt.ids[s], dm.ids[s]) for s in ("train", "val", "test"))
    assert not list((tmp_path / "tinyshakespeare" / "cache").glob("tokenizer-*.json"))


def test_data_config_round_trips(dm: LMDataModule) -> None:
    config = dm.data_config()
    assert config == LMDataModule(**config).data_config()
    assert config["tokenizer"] == {
        "kind": "bpe",
        "vocab_size": 2048,
        "lowercase": False,
        "min_frequency": 2,
    }


def test_workers_are_persistent(dm: LMDataModule, data_root: Path) -> None:
    module = LMDataModule(data_dir=str(data_root), seq_len=SEQ, batch_size=BATCH, num_workers=1)
    module.ids = dm.ids  # reuse the encoded splits; no need to iterate workers here
    assert module.train_dataloader().persistent_workers
    assert not dm.train_dataloader().persistent_workers


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"seq_len": 1}, "data.seq_len"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"dataset": "shakespeare"}, "data.dataset"),
        ({"splits": (0.9, 0.05, 0.1)}, "data.splits"),
        ({"splits": (0.95, 0.05)}, "data.splits"),
        ({"splits": (1.0, 0.0, 0.0)}, "data.splits"),
        ({"tokenizer": {"kind": "wordpiece"}}, "data.tokenizer.kind"),
    ],
)
def test_arguments_are_validated(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        LMDataModule(**kwargs)


def test_batch_larger_than_train_split_is_a_config_error(data_root: Path) -> None:
    module = LMDataModule(data_dir=str(data_root), seq_len=SEQ, batch_size=100_000)
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        module.setup()


def test_wikitext2_trains_on_valid_and_tests_on_test(tmp_path: Path) -> None:
    module = LMDataModule(dataset="wikitext2", data_dir=str(tmp_path), seq_len=SEQ, batch_size=4)
    texts = module.split_texts()
    staged = MIRROR / "wikitext-2-valid-test"
    assert texts["test"] == (staged / "wiki.test.tokens").read_text("utf-8")
    valid = (staged / "wiki.valid.tokens").read_text("utf-8")
    assert texts["train"] + texts["val"] == valid
    assert len(texts["val"]) / len(valid) == pytest.approx(0.05 / 0.95, abs=1e-5)
