"""callbacks/shared_batch.py: the first batch of a loader, the same on every rank, without touching
the training RNG; an empty loader gives None (so every rank fails the same way, none hangs)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from normlab.callbacks.shared_batch import first_batch_on_every_rank


def test_first_batch_sliced_and_rng_untouched() -> None:
    data = [{"x": torch.tensor([i])} for i in range(10)]
    torch.manual_seed(0)
    expected_next = torch.rand(3)
    torch.manual_seed(0)
    batch = first_batch_on_every_rank(
        True, lambda: DataLoader(data, batch_size=4, shuffle=True), torch.device("cpu"), 2
    )
    assert batch["x"].shape == (2, 1)
    assert torch.equal(torch.rand(3), expected_next)  # the DataLoader's seed draw was forked away


def test_an_empty_loader_or_none_gives_none() -> None:
    empty = lambda: DataLoader([], batch_size=4)  # noqa: E731
    assert first_batch_on_every_rank(True, empty, torch.device("cpu")) is None
    assert first_batch_on_every_rank(True, None, torch.device("cpu")) is None
    assert first_batch_on_every_rank(False, empty, torch.device("cpu")) is None
