"""Sentence-pair classification data: MRPC (Dolan & Brockett 2005) as BERT pair inputs.

Files: the staged dataset-sts copy of MRPC (``msr-para-{train,val,test}.tsv``: 3,576 / 500 / 1,725
pairs, label 1 = paraphrase), read with ``utf-8-sig`` (the train/test files start with a BOM) and
split on tabs only (sentences contain unescaped double quotes). It ships its own validation file
(the last 500 pairs of the original training set), so no split is carved here; the test set is
the original labelled MSRP test set, so test numbers compare with papers reporting on it.

An example is ``[CLS] a [SEP] b [SEP]`` with segment ids 0 for ``[CLS] a [SEP]`` and 1 for
``b [SEP]`` (Devlin et al. 2019, Sec. 3). Pairs longer than ``max_len`` are cut longest-first,
one token at a time, as BERT's ``_truncate_seq_pair``. Batches are padded on the right to their
longest example with ``[PAD]`` (id 0); ``padding_mask`` is True on real tokens.

Tokenizer, in order of precedence: ``tokenizer_json`` (what eval.py passes from a checkpoint),
the tokenizer saved in the checkpoint ``tokenizer_from`` (``configs/data/mrpc.yaml`` sets it to
``${model.init_from}``, so fine-tuning from an MLM checkpoint encodes text with the ids it was
pretrained on), else a BPE tokenizer trained on the train sentences and cached beside the data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from normlab.checkpoints import read_extras
from normlab.data.base import SplitDataModule, check_min
from normlab.data.sources import DATASETS, ensure_dataset
from normlab.data.tokenizer import TextTokenizer, TokenizerSettings, train_or_load
from normlab.errors import ConfigError

log = logging.getLogger("normlab.data")

SPLITS = ("train", "val", "test")
CLS_ID, SEP_ID, PAD_ID = 4, 5, 0
# data set -> (folder, file per split)
PAIR_DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "mrpc": ("mrpc", {"train": "msr-para-train.tsv", "val": "msr-para-val.tsv", "test": "msr-para-test.tsv"}),
}


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int


def read_mrpc(path: Path) -> list[Pair]:
    """Rows of a dataset-sts MRPC file: ``Quality, #1 ID, #2 ID, #1 String, #2 String``."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = lines[0].split("\t")
    if header[0] != "Quality" or len(header) != 5:
        raise ConfigError(f"{path}: unexpected header {header}; expected the dataset-sts MRPC format")
    pairs = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 5 or cols[0] not in ("0", "1"):
            raise ConfigError(f"{path}:{n}: expected 5 tab-separated columns with label 0/1")
        pairs.append(Pair(cols[3], cols[4], int(cols[0])))
    return pairs


def pack_pair(a: list[int], b: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """``[CLS] a [SEP] b [SEP]`` and segment ids, truncating the longer side first to fit."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_len - 3:
        (a if len(a) > len(b) else b).pop()
    ids = [CLS_ID, *a, SEP_ID, *b, SEP_ID]
    segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ids, segments


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Pad to the longest example: ``input_ids``, ``segments``, ``padding_mask``, ``labels``."""
    width = max(len(it["ids"]) for it in items)
    ids = torch.full((len(items), width), PAD_ID, dtype=torch.long)
    segments = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        ids[row, : len(it["ids"])] = torch.tensor(it["ids"])
        segments[row, : len(it["segments"])] = torch.tensor(it["segments"])
    lengths = torch.tensor([len(it["ids"]) for it in items])
    return {
        "input_ids": ids,
        "segments": segments,
        "padding_mask": torch.arange(width)[None, :] < lengths[:, None],
        "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
    }


class PairDataset(Dataset):
    def __init__(self, examples: list[dict[str, Any]]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.examples[i]


@dataclass(frozen=True)
class PairsDataConfig:
    """``data`` of ``configs/data/mrpc.yaml`` (normlab.data.pairs.PairsDataModule)."""

    dataset: str = "mrpc"
    data_dir: str = "data"
    max_len: int = 128  # longer pairs are cut longest-first
    batch_size: int = 32
    num_workers: int = 0
    tokenizer: TokenizerSettings = field(default_factory=lambda: TokenizerSettings(vocab_size=4096))
    tokenizer_from: str | None = None  # use this checkpoint's tokenizer (null: train one on MRPC)
    tokenizer_json: str | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.dataset not in PAIR_DATASETS:
            raise ConfigError(
                f"data.dataset: unknown {self.dataset!r}; choose one of {', '.join(PAIR_DATASETS)}"
            )
        check_min("max_len", self.max_len, 8)
        check_min("batch_size", self.batch_size, 1)
        check_min("num_workers", self.num_workers, 0)


class PairsDataModule(SplitDataModule):
    """MRPC train / val / test as padded pair batches; labels 0/1 (1 = paraphrase)."""

    Config = PairsDataConfig
    n_classes = 2

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        cfg = self.cfg
        self.dataset, self.data_dir = cfg.dataset, Path(cfg.data_dir)
        self.max_len, self.batch_size = cfg.max_len, cfg.batch_size
        self.tokenizer_from = cfg.tokenizer_from
        self._pairs: dict[str, list[Pair]] = {}
        self._examples: dict[str, list[dict[str, Any]]] = {}

    # ---- raw pairs -----------------------------------------------------------------------------
    def pairs(self, split: str) -> list[Pair]:
        if not self._pairs:
            folder_name, files = PAIR_DATASETS[self.dataset]
            folder = ensure_dataset(folder_name, self.data_dir, files.values())
            self._pairs = {s: read_mrpc(folder / files[s]) for s in SPLITS}
        return self._pairs[split]

    @property
    def fingerprint(self) -> str:
        folder, files = PAIR_DATASETS[self.dataset]
        return f"pairs|{self.dataset}|{DATASETS[folder].file(files['train']).sha256}"

    @property
    def majority_class(self) -> int:
        """The most frequent train label: the constant prediction a classifier must beat."""
        labels = [p.label for p in self.pairs("train")]
        return max(range(self.n_classes), key=labels.count)

    # ---- tokenizer -----------------------------------------------------------------------------
    def _build_tokenizer(self) -> TextTokenizer:
        """An MLM checkpoint's tokenizer (``tokenizer_from``), else BPE trained on MRPC's train pairs."""
        if self.tokenizer_from is not None:
            return TextTokenizer.from_json(checkpoint_tokenizer(self.tokenizer_from))
        train = self.pairs("train")
        cache = self.data_dir / PAIR_DATASETS[self.dataset][0] / "cache"
        return train_or_load(
            self.settings, lambda: [s for p in train for s in (p.a, p.b)], cache, self.fingerprint
        )

    # ---- examples and loaders ------------------------------------------------------------------
    def examples(self, split: str) -> list[dict[str, Any]]:
        if split not in self._examples:
            pairs, tok = self.pairs(split), self.prepare_tokenizer()
            enc_a = tok.encode_batch([p.a for p in pairs])
            enc_b = tok.encode_batch([p.b for p in pairs])
            out = []
            for p, a, b in zip(pairs, enc_a, enc_b, strict=True):
                ids, segments = pack_pair(a, b, self.max_len)
                out.append({"ids": ids, "segments": segments, "label": p.label})
            self._examples[split] = out
        return self._examples[split]

    def prepare_data(self) -> None:
        self.prepare_tokenizer()

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.examples(split)

    def _loader(self, split: str) -> DataLoader:
        return self.batches(PairDataset(self.examples(split)), split, collate_pairs)


def checkpoint_tokenizer(path: str | Path) -> str:
    """The tokenizer json a normlab checkpoint embeds; one-line error if there is none."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"data.tokenizer_from: {path} does not exist; pass a checkpoint written by "
            "experiment=mlm_pretrain (<run dir>/checkpoints/last.ckpt)"
        )
    tokenizer = read_extras(path, "data.tokenizer_from").get("tokenizer")
    if not tokenizer:
        raise ConfigError(f"data.tokenizer_from: {path} holds no tokenizer; it is not a normlab checkpoint")
    return tokenizer
