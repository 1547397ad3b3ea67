"""Masked-LM pretraining data: an English corpus from the staged data sets, BERT-style masking.

Corpus (``corpora``, any subset, in this order): Multi30k English captions (its own train / val /
test_2016_flickr files), Tiny Shakespeare and WikiText-2 *validation* (each cut into contiguous
train/val/test character ranges by ``splits``, as the LM data does, so no near-duplicate context
leaks across splits). Each split is the concatenation of the chosen corpora; one byte-level BPE
tokenizer is trained on the train split and cached beside the data.

Examples are packed like BERT's pair input, so pretraining sees the format fine-tuning uses
(``[CLS] a [SEP] b [SEP]``, segment 0 then 1): the token stream of a split is cut into
non-overlapping windows of ``seq_len - 3`` tokens and each window is split in the middle into
``a`` and ``b``. Every example has exactly ``seq_len`` tokens, so there is no padding.

Masking (Devlin et al. 2019, Sec. 3.1 and App. A; ``create_pretraining_data.py``): in each example,
``round(mask_prob * n)`` of its ``n`` ordinary tokens (at least one; never ``[CLS]``/``[SEP]``/pad)
are selected uniformly at random; a selected token becomes ``[MASK]`` with probability 0.8, a
uniformly random ordinary token with 0.1, and stays itself with 0.1. ``labels`` hold the original
id at selected positions and -100 elsewhere, so the loss is computed on selected positions only.
Training masks are drawn afresh every time an example is loaded (dynamic masking, as RoBERTa);
validation and test masks are a fixed function of (``eval_mask_seed``, example index), so
val/test losses are comparable across evaluations and runs.
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
from normlab.data.lm import unigram_cross_entropy
from normlab.data.sources import DATASETS, ensure_dataset
from normlab.data.tokenizer import (
    SPECIAL_TOKENS,
    TextTokenizer,
    TokenizerSettings,
    split_corpus,
    train_or_load,
)
from normlab.errors import ConfigError

log = logging.getLogger("normlab.data")

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
CLS_ID, SEP_ID, MASK_ID = 4, 5, 6  # fixed by SPECIAL_TOKENS (checked below)
N_SPECIAL = len(SPECIAL_TOKENS)  # ids below this are never selected nor used as random tokens
assert SPECIAL_TOKENS[CLS_ID] == "[CLS]" and SPECIAL_TOKENS[SEP_ID] == "[SEP]"
assert SPECIAL_TOKENS[MASK_ID] == "[MASK]"

# corpus name -> (data-set folder, files); multi30k brings its own splits, the others are cut
CORPORA: dict[str, tuple[str, tuple[str, ...]]] = {
    "multi30k": ("multi30k", ("train.en", "val.en", "test_2016_flickr.en")),
    "tinyshakespeare": ("tinyshakespeare", ("input.txt",)),
    "wikitext2_valid": ("wikitext-2-valid-test", ("wiki.valid.tokens",)),
}


def mask_tokens(
    ids: Tensor,
    vocab_size: int,
    generator: torch.Generator | None = None,
    mask_prob: float = 0.15,
    mask_frac: float = 0.8,
    random_frac: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """BERT masking of a batch ``ids`` [B, T] -> (corrupted inputs, labels with -100 elsewhere).

    Exactly ``max(1, round(mask_prob * n))`` of each row's ``n`` ordinary tokens are selected
    (BERT's ``num_to_predict``); of those ``mask_frac`` become ``[MASK]``, ``random_frac`` a random
    ordinary token, the rest are kept. Special tokens (ids < 7) are never selected.
    """
    ordinary = ids >= N_SPECIAL
    n_ordinary = ordinary.sum(dim=1)
    n_select = torch.where(
        n_ordinary > 0,
        torch.clamp(torch.round(n_ordinary.double() * mask_prob).long(), min=1),
        torch.zeros_like(n_ordinary),
    )
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~ordinary, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # 0 = smallest score among the row
    selected = rank < n_select[:, None]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    action = torch.rand(ids.shape, generator=generator)
    to_mask = selected & (action < mask_frac)
    to_random = selected & (action >= mask_frac) & (action < mask_frac + random_frac)
    random_ids = torch.randint(N_SPECIAL, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(to_mask, torch.full_like(ids, MASK_ID), ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def pair_windows(stream: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Cut a 1-D token stream into ``[CLS] a [SEP] b [SEP]`` rows [n, seq_len] + segment ids."""
    body = seq_len - 3
    n = len(stream) // body
    chunks = stream[: n * body].view(n, body)
    half = body // 2
    cls = torch.full((n, 1), CLS_ID, dtype=torch.long)
    sep = torch.full((n, 1), SEP_ID, dtype=torch.long)
    ids = torch.cat([cls, chunks[:, :half], sep, chunks[:, half:], sep], dim=1)
    segments = torch.zeros_like(ids)
    segments[:, half + 2 :] = 1  # b and its closing [SEP]
    return ids, segments


class MaskedPairs(Dataset):
    """Packed examples; items carry their index so eval masking can be a function of it."""

    def __init__(self, ids: Tensor, segments: Tensor) -> None:
        self.ids, self.segments = ids, segments

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"ids": self.ids[i], "segments": self.segments[i], "index": i}


class MaskingCollator:
    """Stack examples and mask them: fresh random masks (``seed=None``) or fixed per example."""

    def __init__(
        self, vocab_size: int, mask_prob: float, mask_frac: float, random_frac: float, seed: int | None = None
    ) -> None:
        self.vocab_size, self.seed = vocab_size, seed
        self.probs = {"mask_prob": mask_prob, "mask_frac": mask_frac, "random_frac": random_frac}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        ids = torch.stack([it["ids"] for it in items])
        if self.seed is None:
            inputs, labels = mask_tokens(ids, self.vocab_size, None, **self.probs)
        else:
            rows = [
                mask_tokens(
                    it["ids"][None],
                    self.vocab_size,
                    torch.Generator().manual_seed(self.seed * 1_000_003 + it["index"]),
                    **self.probs,
                )
                for it in items
            ]
            inputs = torch.cat([r[0] for r in rows])
            labels = torch.cat([r[1] for r in rows])
        return {
            "input_ids": inputs,
            "segments": torch.stack([it["segments"] for it in items]),
            "labels": labels,
        }


@dataclass(frozen=True)
class MLMDataConfig:
    """``data`` of ``configs/data/mlm_corpus.yaml`` (normlab.data.mlm.MLMDataModule)."""

    corpora: list[str] = field(default_factory=lambda: ["multi30k", "tinyshakespeare", "wikitext2_valid"])
    data_dir: str = "data"
    seq_len: int = 128  # tokens per example, [CLS] and both [SEP] included
    batch_size: int = 32
    num_workers: int = 0
    tokenizer: TokenizerSettings = field(default_factory=lambda: TokenizerSettings(vocab_size=4096))
    splits: list[float] = field(default_factory=lambda: [0.9, 0.05, 0.05])
    mask_prob: float = 0.15  # fraction of ordinary tokens selected in every example
    mask_frac: float = 0.8  # of the selected: replaced by [MASK] ...
    random_frac: float = 0.1  # ... by a random token; the rest are kept
    eval_mask_seed: int = 0  # val/test masks are a fixed function of this and the example index
    seed: int = 0
    tokenizer_json: str | None = None

    def validate(self) -> None:
        unknown = [c for c in self.corpora if c not in CORPORA]
        if not self.corpora or unknown:
            raise ConfigError(
                f"data.corpora: {unknown or self.corpora!r} is not a non-empty list of {', '.join(CORPORA)}"
            )
        check_min("seq_len", self.seq_len, 8)
        check_min("batch_size", self.batch_size, 1)
        check_min("num_workers", self.num_workers, 0)
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"data.mask_prob: must be in (0, 1), got {self.mask_prob}")
        if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1.0:
            raise ConfigError(
                f"data.mask_frac + data.random_frac: need two fractions >= 0 summing to <= 1 "
                f"(BERT: 0.8 + 0.1), got {self.mask_frac} + {self.random_frac}"
            )
        check_splits(self.splits)


class MLMDataModule(SplitDataModule):
    """The English pretraining corpus as masked ``[CLS] a [SEP] b [SEP]`` examples."""

    Config = MLMDataConfig

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        cfg = self.cfg
        self.corpora, self.data_dir = list(cfg.corpora), Path(cfg.data_dir)
        self.seq_len, self.batch_size = cfg.seq_len, cfg.batch_size
        self.splits = tuple(cfg.splits)
        self.mask_prob, self.mask_frac, self.random_frac = cfg.mask_prob, cfg.mask_frac, cfg.random_frac
        self.eval_mask_seed = cfg.eval_mask_seed
        self.ids: dict[str, Tensor] = {}  # split -> 1-D token stream
        self._baseline: float | None = None

    # ---- corpus --------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Identifies the exact text of every split: corpora, their files' SHA-256s, splits."""
        parts = []
        for name in self.corpora:
            folder, files = CORPORA[name]
            parts.append(name + ":" + ",".join(DATASETS[folder].file(f).sha256 for f in files))
        return f"mlm|{'|'.join(parts)}|splits={list(self.splits)}"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "mlm_corpus" / "cache"

    def split_texts(self) -> dict[str, str]:
        """Fetch/verify the files; each split is the corpora's texts joined by blank lines."""
        out: dict[str, list[str]] = {s: [] for s in SPLITS}
        s_train, s_val, _ = self.splits
        for name in self.corpora:
            folder_name, files = CORPORA[name]
            folder = ensure_dataset(folder_name, self.data_dir, files)
            texts = [(folder / f).read_text(encoding="utf-8") for f in files]
            if name == "multi30k":
                parts = dict(zip(SPLITS, texts, strict=True))
            else:
                text = texts[0]
                a, b = int(len(text) * s_train), int(len(text) * (s_train + s_val))
                parts = {"train": text[:a], "val": text[a:b], "test": text[b:]}
            for split in SPLITS:
                out[split].append(parts[split].strip("\n"))
        return {split: "\n\n".join(texts) + "\n" for split, texts in out.items()}

    def _build_tokenizer(self) -> TextTokenizer:
        """BPE trained on (or loaded from the cache for) the corpus's train split."""
        train_text = self.split_texts()["train"]
        return train_or_load(
            self.settings, lambda: split_corpus(train_text), self.cache_dir, self.fingerprint
        )

    # ---- encoded splits ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._load_ids()

    def setup(self, stage: str | None = None) -> None:
        ids = self._load_ids()
        n_train = len(ids["train"]) // (self.seq_len - 3)
        if n_train < self.batch_size:
            raise ConfigError(
                f"data.batch_size: the train split has only {n_train} examples of "
                f"seq_len={self.seq_len}, fewer than batch_size={self.batch_size}; lower batch_size"
            )

    def _load_ids(self) -> dict[str, Tensor]:
        if self.ids:
            return self.ids
        tok = self.prepare_tokenizer()
        key = hashlib.sha256(self.fingerprint.encode()).hexdigest()[:12]
        paths = {s: self.cache_dir / f"ids-{s}-{tok.digest}-{key}.pt" for s in SPLITS}
        cached = {s: read_id_cache(p, is_id_tensor) for s, p in paths.items()}
        if all(ids is not None for ids in cached.values()):
            self.ids = cached
            return self.ids
        texts = self.split_texts()
        for split, path in paths.items():
            self.ids[split] = torch.tensor(tok.encode_corpus(texts[split]), dtype=torch.long)
            write_id_cache(path, self.ids[split])
        log.info(
            "mlm data: tokens train/val/test = %s, vocab %d",
            "/".join(str(len(self.ids[s])) for s in SPLITS),
            tok.vocab_size,
        )
        return self.ids

    @property
    def unigram_baseline(self) -> float:
        """Nats per masked token of a model that predicts train token frequencies, ignoring
        context (masked tokens are a uniform sample of ordinary tokens): an MLM must beat it."""
        if self._baseline is None:
            ids = self._load_ids()
            self._baseline = unigram_cross_entropy(ids["train"], ids["val"], self.tokenizer.vocab_size)
        return self._baseline

    def dataset(self, split: str) -> MaskedPairs:
        return MaskedPairs(*pair_windows(self._load_ids()[split], self.seq_len))

    # ---- loaders -------------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader:
        data = self.dataset(split)
        train = split == "train"
        collate = MaskingCollator(
            self.tokenizer.vocab_size,
            self.mask_prob,
            self.mask_frac,
            self.random_frac,
            seed=None if train else self.eval_mask_seed,
        )
        return self.batches(data, split, collate)
