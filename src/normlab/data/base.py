"""What every normlab datamodule shares: one ``_loader(split)`` behind Lightning's three loader
hooks, and the integer checks of their constructor arguments (one-line ConfigErrors)."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from normlab.errors import ConfigError


def check_int(key: str, value: Any, minimum: int) -> None:
    """``data.<key>`` must be an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data.{key}: must be an integer >= {minimum}, got {value!r}")


class SplitDataModule(L.LightningDataModule):
    """Subclasses implement ``_loader(split)`` for ``"train"``, ``"val"`` and ``"test"``."""

    def _loader(self, split: str) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
