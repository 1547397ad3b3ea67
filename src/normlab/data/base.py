"""What every normlab datamodule shares: one ``_loader(split)`` behind Lightning's three loader
hooks, the tokenizer built once (from a checkpoint's JSON, else trained or loaded from the cache),
and the integer checks of their constructor arguments (one-line ConfigErrors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from normlab.data.sampling import train_sampler
from normlab.data.tokenizer import TextTokenizer, TokenizerSettings
from normlab.errors import ConfigError


def check_int(key: str, value: Any, minimum: int) -> None:
    """``data.<key>`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data.{key}: must be an integer >= {minimum}, got {value!r}")


class SplitDataModule(L.LightningDataModule):
    """Subclasses implement ``_loader(split)`` for ``"train"``, ``"val"`` and ``"test"`` and
    ``_build_tokenizer()``, and set ``settings``, ``tokenizer_json`` and ``_tokenizer = None``."""

    settings: TokenizerSettings
    tokenizer_json: str | None
    _tokenizer: TextTokenizer | None
    batch_size: int
    num_workers: int
    seed: int

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
