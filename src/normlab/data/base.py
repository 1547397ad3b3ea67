"""What every normlab datamodule shares: a typed config (``Config``, a dataclass validated with
one-line errors, the one place its defaults live), one ``_loader(split)`` behind Lightning's three
loader hooks, and the tokenizer built once (from a checkpoint's JSON, else trained or loaded from
the cache)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from normlab.data.sampling import train_sampler
from normlab.data.tokenizer import TextTokenizer, TokenizerSettings
from normlab.errors import ConfigError
from normlab.typed_config import as_plain, to_dataclass


def check_min(key: str, value: int, minimum: int) -> None:
    """``data.<key>`` must be >= ``minimum`` (its type is checked by the typed config)."""
    if value < minimum:
        raise ConfigError(f"data.{key}: must be an integer >= {minimum}, got {value!r}")


def check_splits(splits: list[float]) -> None:
    if len(splits) != 3 or min(splits) <= 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.splits: need three positive fractions (train, val, test) summing to 1, got {list(splits)}"
        )


class SplitDataModule(L.LightningDataModule):
    """Subclasses set ``Config`` (a dataclass with ``tokenizer: TokenizerSettings``, ``seed``,
    ``num_workers``, ``tokenizer_json``) and implement ``_loader(split)`` for ``"train"``,
    ``"val"`` and ``"test"`` and ``_build_tokenizer()``. Hydra passes the YAML keys as keyword
    arguments; unknown keys and wrong types fail in one line naming ``data.<key>``."""

    Config: type
    batch_size: int

    def __init__(self, **values: Any) -> None:
        super().__init__()
        self.cfg = to_dataclass(self.Config, values, "data")
        self.settings: TokenizerSettings = self.cfg.tokenizer
        self.tokenizer_json: str | None = self.cfg.tokenizer_json
        self.num_workers: int = self.cfg.num_workers
        self.seed: int = self.cfg.seed
        self._tokenizer: TextTokenizer | None = None

    def data_config(self) -> dict[str, Any]:
        """The config as plain values (minus the tokenizer JSON): rebuilds this module."""
        out = as_plain(self.cfg)
        out.pop("tokenizer_json", None)
        return out

    def batches(
        self, data: Dataset, split: str, collate_fn: Callable[[list[Any]], Any] | None = None
    ) -> DataLoader:
        """Fixed-size batches of ``data``: for train shuffled by ``(seed, epoch, rank)``, resumable
        mid-epoch and without the ragged last batch; for val/test the whole split in order."""
        train = split == "train"
        return DataLoader(
            data,
            batch_size=self.batch_size,
            sampler=train_sampler(data, self.trainer, self.batch_size, self.seed) if train else None,
            drop_last=train,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.prepare_tokenizer()

    def prepare_tokenizer(self) -> TextTokenizer:
        """The tokenizer, built once: the checkpoint's (``tokenizer_json``) when given, else
        ``_build_tokenizer()`` (fetches the data, trains or loads the cached one); call this
        before building the model, whose vocabulary size it fixes."""
        if self._tokenizer is None:
            if self.tokenizer_json is not None:
                self._tokenizer = TextTokenizer.from_json(self.tokenizer_json, self.settings)
            else:
                self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    def _build_tokenizer(self) -> TextTokenizer:
        raise NotImplementedError

    def _loader(self, split: str) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
