"""The spike score (OLMo 2; as ProRes uses it): the percentage of steps in the 10%-90% phase that
lie at least 7 standard deviations from the rolling mean of the previous 1,000 steps."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.metrics.spikes import spike_score


def _noise(n: int, seed: int = 0, scale: float = 0.01, level: float = 5.0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (level + scale * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


def test_known_spikes_in_a_noisy_series() -> None:
    x = _noise(5000)
    assert spike_score(x) == 0.0  # Gaussian noise never reaches 7 sigma in 4,000 draws
    for i in (1000, 2000, 3000, 4000, 4400):  # inside the 10%-90% phase [500, 4500)
        x[i] += 1.0  # 100 sigma
    x[100] += 1.0  # before the phase: not scored
    x[4700] += 1.0  # after it: not scored
    assert spike_score(x) == pytest.approx(100 * 5 / 4000)


def test_threshold_is_seven_standard_deviations_of_the_previous_window() -> None:
    x = _noise(2000, seed=1)
    std = torch.tensor(x[1000 - 1000 : 1000]).std(unbiased=False).item()
    mean = sum(x[:1000]) / 1000
    x[1000] = mean + 6.9 * std
    assert spike_score(x) == 0.0
    x[1000] = mean + 7.01 * std
    assert spike_score(x) == pytest.approx(100 / 1600)


def test_window_is_the_previous_1000_steps_only() -> None:
    """A level shift long ago no longer inflates the window: the spike is seen once the window
    has moved past the shift."""
    x = _noise(4000, seed=2, scale=0.001)
    for i in range(0, 1500):
        x[i] += 10.0 * (i % 2)  # a wildly oscillating start: huge spread
    x[2000] += 0.5  # 500 sigma of the calm part; its window [1000, 2000) holds 500 wild steps
    assert spike_score(x) == pytest.approx(0.0)
    x[3000] += 0.5  # window [2000, 3000): calm
    assert spike_score(x) == pytest.approx(100 / 3200)


def test_non_finite_points_are_spikes_and_short_series_have_no_score() -> None:
    x = _noise(1000, seed=3)
    x[500] = math.nan
    x[600] = math.inf
    assert spike_score(x) == pytest.approx(100 * 2 / 800)
    assert spike_score([1.0, 2.0]) is None
    assert spike_score([]) is None
    assert spike_score([3.0] * 100) == 0.0  # a constant series has no spike
