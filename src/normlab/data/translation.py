"""Parallel text for encoder-decoder translation: Multi30k task 1, any pair of en/de/fr/cs.

Files come through :func:`normlab.data.sources.ensure_dataset` (local copy, mirror or the pinned
canonical origin, all SHA-256 checked). One *joint* byte-level BPE tokenizer is trained on the
train split of both languages (so source and target can share one embedding) and cached beside
the data; the cache key contains both files' hashes, so de-en and en-de share it, de-fr does not.

Examples are ``src = x + <eos>``, decoder input ``<bos> + y`` and labels ``y + <eos>``. Batches are
built by token count, as in fairseq's ``batch_by_size``: sort by (source length, target length),
pack greedily while ``n_sentences * longest <= max_tokens``, pad on the right. Training batches
are rebuilt every epoch from ``seed + epoch`` (random order among equal lengths, then a random
batch order), so the run is reproducible and resumable while every epoch sees different batches.
Because only equal-length examples swap places, the number of batches never changes, which keeps
the sampler usable under DDP (Lightning wraps it and gives every rank its share of batches).

A batch is a dict: ``src`` [B, S], ``src_mask`` [B, S] (True = real token), ``tgt_in`` [B, T],
``labels`` [B, T] (-100 on padding), ``index`` [B] (line number in the split) and ``refs`` (the
raw target lines, what SacreBLEU scores against).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from normlab.data.base import SplitDataModule, check_min
from normlab.data.id_cache import is_id_tensor, read_id_cache, write_id_cache
from normlab.data.sources import DATASETS, ensure_dataset
from normlab.data.tokenizer import TextTokenizer, TokenizerSettings, train_or_load
from normlab.errors import ConfigError

log = logging.getLogger("normlab.data")

IGNORE_INDEX = -100
LANGS = ("en", "de", "fr", "cs")
# test set -> languages it exists in (Multi30k task 1; cs has no 2017 test sets)
TEST_SETS: dict[str, tuple[str, ...]] = {
    "test_2016_flickr": ("en", "de", "fr", "cs"),
    "test_2017_flickr": ("en", "de", "fr"),
    "test_2017_mscoco": ("en", "de", "fr"),
    "test_2018_flickr": ("en", "de", "fr", "cs"),
}


def read_lines(path: Path) -> list[str]:
    """One sentence per line; strips the newline and surrounding whitespace only."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


class ParallelText(Dataset):
    """Encoded sentence pairs. Indexed by a *list* of example indices, it returns a padded batch
    (the loader runs with ``batch_size=None`` and a :class:`TokenBatchSampler`)."""

    def __init__(
        self,
        src: list[list[int]],
        tgt: list[list[int]],
        refs: list[str],
        bos_id: int,
        eos_id: int,
        pad_id: int,
        index: list[int] | None = None,
    ) -> None:
        if not len(src) == len(tgt) == len(refs):
            raise ValueError("src, tgt and refs must have the same number of lines")
        self.src, self.tgt, self.refs = src, tgt, refs
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.index = list(range(len(src))) if index is None else index

    def __len__(self) -> int:
        return len(self.src)

    @property
    def src_lengths(self) -> np.ndarray:
        """Source lengths with the appended <eos>."""
        return np.array([len(s) + 1 for s in self.src], dtype=np.int64)

    @property
    def tgt_lengths(self) -> np.ndarray:
        """Target lengths with the added <bos> (decoder input) / <eos> (labels)."""
        return np.array([len(t) + 1 for t in self.tgt], dtype=np.int64)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        bos, eos = [self.bos_id], [self.eos_id]
        src = _pad([self.src[i] + eos for i in indices], self.pad_id)
        tgt_in = _pad([bos + self.tgt[i] for i in indices], self.pad_id)
        labels = _pad([self.tgt[i] + eos for i in indices], IGNORE_INDEX)
        return {
            "src": src,
            "src_mask": src != self.pad_id,
            "tgt_in": tgt_in,
            "labels": labels,
            "index": torch.tensor([self.index[i] for i in indices], dtype=torch.long),
            "refs": [self.refs[i] for i in indices],
        }


def _pad(rows: list[list[int]], value: int) -> Tensor:
    """Right-pad ragged rows into a [B, longest] LongTensor (one numpy scatter, no per-row loop)."""
    lengths = np.array([len(r) for r in rows])
    out = np.full((len(rows), int(lengths.max())), value, dtype=np.int64)
    out[np.arange(out.shape[1]) < lengths[:, None]] = np.fromiter(
        itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum())
    )
    return torch.from_numpy(out)


class TokenBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches of at most ``max_tokens`` padded tokens per side.

    A batch of n examples costs ``n * max(longest source, longest target)``; an example longer
    than ``max_tokens`` gets a batch of its own. With ``shuffle`` the batches are rebuilt in
    ``__iter__`` from ``seed + epoch`` (Lightning calls :meth:`set_epoch`); without it the order
    is fixed (sorted by length), which is what evaluation wants.
    """

    def __init__(
        self,
        src_lengths: np.ndarray,
        tgt_lengths: np.ndarray,
        max_tokens: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.src_lengths = np.asarray(src_lengths, dtype=np.int64)
        self.tgt_lengths = np.asarray(tgt_lengths, dtype=np.int64)
        self.cost = np.maximum(self.src_lengths, self.tgt_lengths)
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.epoch = 0
        self._n_batches = len(self._batches(np.random.default_rng(seed)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, rng: np.random.Generator | None) -> list[list[int]]:
        n = len(self.cost)
        order = rng.permutation(n) if (self.shuffle and rng is not None) else np.arange(n)
        # lexsort is stable: equal (src, tgt) lengths keep their (random) relative order
        order = order[np.lexsort((self.tgt_lengths[order], self.src_lengths[order]))]
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i in order.tolist():
            cost = int(self.cost[i])
            if current and (len(current) + 1) * max(longest, cost) > self.max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, cost)
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from self._batches(None)
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._batches(rng)
        for j in rng.permutation(len(batches)).tolist():
            yield batches[j]

    def __len__(self) -> int:
        return self._n_batches


@dataclass(frozen=True)
class TranslationDataConfig:
    """``data`` of ``configs/data/multi30k.yaml`` (normlab.data.translation.TranslationDataModule)."""

    dataset: str = "multi30k"
    data_dir: str = "data"
    src_lang: str = "de"  # en | de | fr | cs
    tgt_lang: str = "en"
    test_set: str = "test_2016_flickr"  # test_2016_flickr | test_2017_flickr | _mscoco | test_2018_flickr
    max_tokens: int = 4096  # training batch: sentences * longest (source or target) length <= this
    eval_max_tokens: int | None = None  # val/test batches (null = max_tokens)
    max_len: int = 128  # drop training pairs with more tokens than this on either side
    num_workers: int = 0
    seed: int = 0
    tokenizer: TokenizerSettings = field(default_factory=lambda: TokenizerSettings(vocab_size=8000))
    tokenizer_json: str | None = None

    def validate(self) -> None:
        if self.dataset != "multi30k":
            raise ConfigError(f"data.dataset: unknown {self.dataset!r}; translation data knows only multi30k")
        for key, lang in (("src_lang", self.src_lang), ("tgt_lang", self.tgt_lang)):
            if lang not in LANGS:
                raise ConfigError(f"data.{key}: {lang!r} is not one of {', '.join(LANGS)}")
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"data.tgt_lang: equals data.src_lang ({self.src_lang}); pick another language")
        if self.test_set not in TEST_SETS:
            raise ConfigError(f"data.test_set: {self.test_set!r} is not one of {', '.join(TEST_SETS)}")
        missing = [lang for lang in (self.src_lang, self.tgt_lang) if lang not in TEST_SETS[self.test_set]]
        if missing:
            has = [t for t, langs in TEST_SETS.items() if self.src_lang in langs and self.tgt_lang in langs]
            raise ConfigError(
                f"data.test_set: {self.test_set} has no {missing[0]} side; for "
                f"{self.src_lang}-{self.tgt_lang} use one of {', '.join(has)}"
            )
        check_min("max_tokens", self.max_tokens, 16)
        check_min("max_len", self.max_len, 2)
        check_min("num_workers", self.num_workers, 0)
        check_min("seed", self.seed, 0)
        if self.eval_max_tokens is not None and self.eval_max_tokens < 16:
            raise ConfigError(f"data.eval_max_tokens: need null or an int >= 16, got {self.eval_max_tokens}")


class TranslationDataModule(SplitDataModule):
    """Multi30k task 1: train / val / one test set, for a ``src_lang`` -> ``tgt_lang`` pair."""

    Config = TranslationDataConfig

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        cfg = self.cfg
        self.dataset, self.data_dir = cfg.dataset, Path(cfg.data_dir)
        self.src_lang, self.tgt_lang, self.test_set = cfg.src_lang, cfg.tgt_lang, cfg.test_set
        self.max_tokens, self.eval_max_tokens = cfg.max_tokens, cfg.eval_max_tokens or cfg.max_tokens
        self.max_len = cfg.max_len
        self.datasets: dict[str, ParallelText] = {}

    # ---- files and tokenizer -----------------------------------------------------------------
    @property
    def pair(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    def split_file(self, split: str, lang: str) -> str:
        """``train``/``val``/``test`` -> file name of that split in ``lang``."""
        return f"{self.test_set if split == 'test' else split}.{lang}"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / self.dataset / "cache"

    @property
    def fingerprint(self) -> str:
        """Identifies the tokenizer's training text: both train files' SHA-256s (language order
        sorted, so the two directions of a pair share one tokenizer)."""
        source = DATASETS[self.dataset]
        langs = sorted((self.src_lang, self.tgt_lang))
        sums = ",".join(source.file(f"train.{lang}").sha256 for lang in langs)
        return f"{self.dataset}|joint:{'+'.join(langs)}|{sums}"

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        """(source lines, target lines) of a split, fetched and verified first."""
        files = [self.split_file(split, lang) for lang in (self.src_lang, self.tgt_lang)]
        folder = ensure_dataset(self.dataset, self.data_dir, files)
        src, tgt = (read_lines(folder / f) for f in files)
        if len(src) != len(tgt):
            raise ConfigError(f"data: {files[0]} has {len(src)} lines but {files[1]} has {len(tgt)}")
        return src, tgt

    def _build_tokenizer(self) -> TextTokenizer:
        """Joint BPE trained on (or loaded from the cache for) both sides of the train split."""
        by_lang = dict(zip((self.src_lang, self.tgt_lang), self.read_split("train"), strict=True))
        langs = sorted(by_lang)
        return train_or_load(
            self.settings,
            lambda: (line for lang in langs for line in by_lang[lang]),
            self.cache_dir,
            self.fingerprint,
        )

    def prepare_data(self) -> None:
        """Runs once per node under DDP: fetch and verify the files, train/cache the tokenizer."""
        self.prepare_tokenizer()
        for split in ("val", "test"):
            self.read_split(split)

    # ---- datasets ----------------------------------------------------------------------------
    def build_split(self, split: str) -> ParallelText:
        """Encode one split; training pairs longer than ``max_len`` tokens (either side) are dropped."""
        tok = self.prepare_tokenizer()
        src_text, tgt_text = self.read_split(split)
        src = self._encode(self.split_file(split, self.src_lang), src_text)
        tgt = self._encode(self.split_file(split, self.tgt_lang), tgt_text)
        index = list(range(len(src)))
        if split == "train":
            keep = [i for i in index if 0 < len(src[i]) < self.max_len and 0 < len(tgt[i]) < self.max_len]
            if len(keep) < len(index):
                log.info(
                    "translation data: dropped %d of %d train pairs longer than max_len=%d",
                    len(index) - len(keep),
                    len(index),
                    self.max_len,
                )
            src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            tgt_text, index = [tgt_text[i] for i in keep], keep
        return ParallelText(src, tgt, tgt_text, tok.bos_id, tok.eos_id, tok.pad_id, index)

    def _encode(self, file: str, lines: list[str]) -> list[list[int]]:
        """Token ids of every line, cached on disk per (file hash, tokenizer) as one flat tensor
        plus offsets: encoding the 29k-line train split takes seconds, loading it milliseconds."""
        tok = self.prepare_tokenizer()
        digest = DATASETS[self.dataset].file(file).sha256[:12]
        path = self.cache_dir / f"ids-{file}-{digest}-{tok.digest}.pt"
        saved = read_id_cache(path, _is_flat_ids)
        if saved is not None:
            flat, offsets = saved["ids"].tolist(), saved["offsets"].tolist()
            return [flat[a:b] for a, b in itertools.pairwise(offsets)]
        ids = tok.encode_batch(lines)
        offsets = np.cumsum([0] + [len(x) for x in ids])
        flat_ids = torch.tensor([i for x in ids for i in x], dtype=torch.int32)
        write_id_cache(path, {"ids": flat_ids, "offsets": torch.from_numpy(offsets)})
        return ids

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", ("train", "val", "test")
        )
        for split in wanted:
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split)
        if "train" in wanted:
            lengths = self.datasets["train"].src_lengths
            log.info(
                "translation data: %s, %d train pairs, %d batches of <= %d tokens, vocab %d",
                self.pair,
                len(lengths),
                len(self._sampler("train")),
                self.max_tokens,
                self.tokenizer.vocab_size,
            )

    def _sampler(self, split: str) -> TokenBatchSampler:
        data = self.datasets[split]
        train = split == "train"
        return TokenBatchSampler(
            data.src_lengths,
            data.tgt_lengths,
            self.max_tokens if train else self.eval_max_tokens,
            shuffle=train,
            seed=self.seed,
        )

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return DataLoader(
            self.datasets[split],
            batch_size=None,  # the sampler yields whole batches of indices
            sampler=self._sampler(split),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _is_flat_ids(obj: Any) -> bool:
    """What :meth:`_encode` caches: every line's ids end to end, and the line offsets."""
    return isinstance(obj, dict) and is_id_tensor(obj.get("ids")) and is_id_tensor(obj.get("offsets"))
