"""How much memory this process holds and held at most: what run records and benchmarks report.

On CUDA the number that matters is the allocator's peak (``torch.cuda.max_memory_allocated``); on
the CPU it is the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``,
Linux), which includes torch itself (about 220 MB after import).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` entry (``VmRSS``, ``VmHWM``, ...) in MB; NaN where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return math.nan
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return math.nan


def peak_memory_mb(device: torch.device | str | None = None) -> dict[str, float]:
    """``{"host_peak_rss_mb": ..., "cuda_peak_allocated_mb": ...}`` (the second only on CUDA)."""
    out = {"host_peak_rss_mb": status_mb("VmHWM")}
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def reset_peak(device: torch.device | str | None = None) -> None:
    """Start a new high-water mark: the process peak becomes the current RSS (Linux ``clear_refs``),
    and CUDA's allocator peak is reset. Several runs in one process (a Hydra sweep) then each report
    their own peak, not the largest of all earlier ones."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
