"""Decoder-only language modelling data: Tiny Shakespeare as contiguous token windows.

Splits are contiguous character ranges of the corpus (first 90% train, next 5% val, last 5% test
by default), because shuffling lines would leak near-duplicate context across splits. The
tokenizer sees only the train split. Each split is encoded once into a 1-D LongTensor cached on
disk, keyed by the tokenizer's content hash and the data fingerprint, so later runs start at once.

A batch is ``{"input_ids": [B, T], "labels": [B, T]}`` with ``labels`` = inputs shifted by one,
cut from non-overlapping windows of T+1 tokens (stride T): every token of a split is predicted
exactly once per epoch, so val/test loss is the split's per-token cross-entropy.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from normlab.data.base import SplitDataModule, check_min, check_splits
from normlab.data.id_cache import is_id_tensor, read_id_cache, write_id_cache
from normlab.data.sources import DATASETS, ensure_dataset
from normlab.data.tokenizer import TextTokenizer, TokenizerSettings, split_corpus, train_or_load
from normlab.errors import ConfigError

log = logging.getLogger("normlab.data")

SPLITS = ("train", "val", "test")
# dataset name -> (folder of the data source, files it needs)
CORPORA: dict[str, tuple[str, tuple[str, ...]]] = {
    "tinyshakespeare": ("tinyshakespeare", ("input.txt",)),
    # WikiText-2's train split is not staged: train/val are cut from wiki.valid.tokens in the
    # ratio splits[0]:splits[1], test is wiki.test.tokens (a smoke/eval setup, not the benchmark).
    "wikitext2": ("wikitext-2-valid-test", ("wiki.valid.tokens", "wiki.test.tokens")),
}


class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens (stride ``seq_len``); the last partial
    window is dropped, so windows cover predictions for tokens 1 .. n*seq_len of the split."""

    def __init__(self, ids: Tensor, seq_len: int) -> None:
        self.ids, self.seq_len = ids, seq_len

    def __len__(self) -> int:
        return max(0, (len(self.ids) - 1) // self.seq_len)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        window = self.ids[i * self.seq_len : (i + 1) * self.seq_len + 1]
        return {"input_ids": window[:-1], "labels": window[1:]}


def unigram_cross_entropy(train_ids: Tensor, eval_ids: Tensor, vocab_size: int) -> float:
    """Nats/token of ``eval_ids`` under the add-one-smoothed unigram distribution of ``train_ids``.

    The loss a model gets by learning token frequencies and nothing else: a trained LM must beat it.
    """
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[eval_ids].mean())


@dataclass(frozen=True)
class LMDataConfig:
    """``data`` of ``configs/data/tinyshakespeare.yaml`` (normlab.data.lm.LMDataModule)."""

    dataset: str = "tinyshakespeare"  # tinyshakespeare | wikitext2
    data_dir: str = "data"
    seq_len: int = 64  # tokens per window
    batch_size: int = 8
    num_workers: int = 0
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    splits: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])  # train/val/test fractions
    tokenizer_json: str | None = None  # a checkpoint's tokenizer (eval.py passes it)
    seed: int = 0  # training order = f(seed, epoch, rank)

    def validate(self) -> None:
        if self.dataset not in CORPORA:
            raise ConfigError(f"data.dataset: unknown {self.dataset!r}; choose one of {', '.join(CORPORA)}")
        check_min("seq_len", self.seq_len, 2)
        check_min("batch_size", self.batch_size, 1)
        check_min("num_workers", self.num_workers, 0)
        check_splits(self.splits)


class LMDataModule(SplitDataModule):
    """Tiny Shakespeare (or the staged WikiText-2 files) for next-token prediction."""

    Config = LMDataConfig

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        cfg = self.cfg
        self.dataset, self.data_dir = cfg.dataset, Path(cfg.data_dir)
        self.seq_len, self.batch_size = cfg.seq_len, cfg.batch_size
        self.splits: tuple[float, float, float] = tuple(cfg.splits)  # type: ignore[assignment]
        self.ids: dict[str, Tensor] = {}  # split -> 1-D LongTensor, filled by setup()
        self._baseline: float | None = None
        self._ready = False

    @property
    def fingerprint(self) -> str:
        """Identifies the exact training text: data-set files' SHA-256s + dataset + splits."""
        folder, files = CORPORA[self.dataset]
        sums = ",".join(DATASETS[folder].file(f).sha256 for f in files)
        return f"{self.dataset}|{sums}|splits={list(self.splits)}"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / CORPORA[self.dataset][0] / "cache"

    # ---- data --------------------------------------------------------------------------------
    def split_texts(self) -> dict[str, str]:
        """Fetch/verify the files and cut them into the three contiguous character ranges."""
        folder_name, files = CORPORA[self.dataset]
        folder = ensure_dataset(folder_name, self.data_dir, files)
        texts = [(folder / f).read_text(encoding="utf-8") for f in files]
        s_train, s_val, _ = self.splits
        if self.dataset == "wikitext2":
            text, test = texts
            cut = int(len(text) * s_train / (s_train + s_val))
            return {"train": text[:cut], "val": text[cut:], "test": test}
        text = texts[0]
        a, b = int(len(text) * s_train), int(len(text) * (s_train + s_val))
        return {"train": text[:a], "val": text[a:b], "test": text[b:]}

    def _build_tokenizer(self) -> TextTokenizer:
        """Byte-level BPE (or unigram) trained on the train range only, cached."""
        train_text = self.split_texts()["train"]
        return train_or_load(
            self.settings, lambda: split_corpus(train_text), self.cache_dir, self.fingerprint
        )

    def prepare_data(self) -> None:
        """Runs once per node (local rank 0) under DDP: fetch, train, encode, fill the caches."""
        self._encode_splits()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        ids = self._load_ids()
        n_train = len(TokenWindows(ids["train"], self.seq_len))
        if n_train < self.batch_size:
            raise ConfigError(
                f"data.batch_size: the train split has only {n_train} windows of "
                f"seq_len={self.seq_len}, fewer than batch_size={self.batch_size}; "
                "lower batch_size or seq_len"
            )
        self._ready = True
        log.info(
            "lm data: %s tokens train/val/test = %s, vocab %d, unigram baseline %.3f nats/token",
            self.dataset,
            "/".join(str(len(ids[s])) for s in SPLITS),
            self.tokenizer.vocab_size,
            self.unigram_baseline,
        )

    @property
    def unigram_baseline(self) -> float:
        """Val cross-entropy (nats/token) of the train split's add-one unigram model.

        Computed on first access (the run prints it before ``fit`` calls ``setup``).
        """
        if self._baseline is None:
            ids = self._load_ids()
            self._baseline = unigram_cross_entropy(ids["train"], ids["val"], self.tokenizer.vocab_size)
        return self._baseline

    def _load_ids(self) -> dict[str, Tensor]:
        if not self.ids:
            self.ids = self._encode_splits()
        return self.ids

    def _encode_splits(self) -> dict[str, Tensor]:
        tok = self.prepare_tokenizer()
        key = hashlib.sha256(self.fingerprint.encode()).hexdigest()[:12]
        paths = {s: self.cache_dir / f"ids-{s}-{tok.digest}-{key}.pt" for s in SPLITS}
        cached = {s: read_id_cache(p, is_id_tensor) for s, p in paths.items()}
        if all(ids is not None for ids in cached.values()):
            return cached
        texts = self.split_texts()
        out = {}
        for split, path in paths.items():
            out[split] = torch.tensor(tok.encode_corpus(texts[split]), dtype=torch.long)
            write_id_cache(path, out[split])
        return out

    # ---- loaders -----------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader:
        self.setup()
        return self.batches(TokenWindows(self.ids[split], self.seq_len), split)
