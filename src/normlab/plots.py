"""The figures of a study, drawn with matplotlib's Agg backend (no display needed).

Used in two places: the stability monitor renders its layer x step heatmaps into TensorBoard images
during training, and ``python -m normlab.report`` writes the study figures as PNG files. Every
function takes plain lists and dicts (what the run records hold), never a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 110


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values)
    out[~np.isfinite(out)] = np.nan
    return out


def heatmap(
    matrix: Sequence[Sequence[float]], steps: Sequence[int], title: str, label: str, log: bool = True
) -> Figure:
    """A layer x step heatmap: ``matrix[i][l]`` is the value of layer ``l`` at ``steps[i]``."""
    data = np.asarray(matrix, dtype=float).T  # layers on the y axis
    if log:
        data = _log10(data)
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=DPI)
    image = ax.imshow(data, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
    ticks = np.linspace(0, len(steps) - 1, num=min(6, len(steps))).round().astype(int)
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=f"log10 {label}" if log else label)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """An RGB uint8 image [H, W, 3] of ``fig`` (for TensorBoard's add_image), then close it."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return rgba[..., :3].copy()


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    hline: tuple[float, str] | None = None,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
    ax: Any = None,
) -> Figure | None:
    """One line per name: ``series[name] = (x, y)``; NaN points are gaps. Draws into ``ax`` when
    given (a panel of a larger figure), else returns a new figure."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=DPI)
    for name, (x, y) in series.items():
        ax.plot(list(x), list(y), marker="o" if markers else None, markersize=3, linewidth=1.2, label=name)
    if hline is not None and math.isfinite(hline[0]):
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
        return fig
    return None


def panels(n: int, title: str) -> tuple[Figure, list[Any]]:
    """A row of ``n`` panels sharing one title."""
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), dpi=DPI, squeeze=False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes[0])
