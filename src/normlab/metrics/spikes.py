"""The spike score of a training curve (OLMo 2, Team OLMo 2024, "2 OLMo 2 Furious", arXiv
2501.00656; used by ProRes, arXiv 2603.05369, to compare loss and gradient-norm stability).

    spike score = 100 * (points at least 7 standard deviations away from the rolling mean of the
                  previous 1,000 points) / (points scored)

scored over the stable phase of training, the 10%-90% range of the steps (warm-up transients and
the annealed end excluded). The window is the previous ``window`` steps (fewer at the start); its
mean and standard deviation are taken over its finite points, and a point needs at least two of
them to be scored. A non-finite point counts as a spike. With a window of zero spread, any
deviation is a spike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

WINDOW = 1000
N_STD = 7.0
PHASE = (0.1, 0.9)


def spike_score(
    values: Sequence[float],
    window: int = WINDOW,
    n_std: float = N_STD,
    phase: tuple[float, float] = PHASE,
) -> float | None:
    """Percentage of spikes in ``values`` (one per optimizer step); None if nothing can be scored."""
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    n = len(x)
    lo, hi = int(math.floor(phase[0] * n)), int(math.floor(phase[1] * n))
    if hi <= lo:
        return None
    finite = torch.isfinite(x)
    clean = torch.where(finite, x, torch.zeros_like(x))
    zero = torch.zeros(1, dtype=torch.float64)
    count = torch.cat([zero, finite.double().cumsum(0)])  # prefix sums: entry i covers x[:i]
    s1 = torch.cat([zero, clean.cumsum(0)])
    s2 = torch.cat([zero, clean.square().cumsum(0)])
    idx = torch.arange(lo, hi)
    start = (idx - window).clamp(min=0)
    k = count[idx] - count[start]
    scored = k >= 2
    mean = (s1[idx] - s1[start]) / k.clamp(min=1)
    std = ((s2[idx] - s2[start]) / k.clamp(min=1) - mean.square()).clamp(min=0).sqrt()
    deviation = (x[idx] - mean).abs()
    spike = ~finite[idx] | ((deviation > 0) & (deviation >= n_std * std))
    n_scored = int(scored.sum())
    return None if n_scored == 0 else 100.0 * int((spike & scored).sum()) / n_scored
