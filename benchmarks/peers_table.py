"""The table ``benchmarks/peers.py`` (and ``benchmarks/peers_paired.py``) print: one row per
implementation, norm and depth; ratios against torchscale and the plain stack, of the medians of rounds
and paired within a round; the peak above the same implementation's depth-1 peak, when depth 1 was
measured; and the provenance line above it (date, machine, torch, normlab commit, command). Pure
functions of the measured rows, so tests can check them without starting a process.

Why "above depth 1": a process's resident peak includes what every implementation pays whatever its
depth (the torch runtime, the modules ``torch.optim`` imports on first use, the embedding, the logits
and the loss): several hundred MB on the CPU, about the same for all three. Beside a 100-layer
model that floor is most of the peak, so the ratio of whole peaks says little about what an
implementation keeps per layer; the ratio of peaks above depth 1 says that."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def label(spec: dict[str, Any]) -> str:
    name = spec["impl"]
    variant = spec.get("variant", "default")
    return name if variant == "default" or not name.startswith("normlab") else f"{name} ({variant})"


def _ratio(a: float, b: float | None) -> str:
    return "–" if b is None or not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def _mb(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0f}"  # nan: not measured (benchmarks/peers_paired.py)


def paired_ratio(group: list[dict[str, Any]], rows: list[dict[str, Any]], impl: str) -> float | None:
    """Median over rounds of this row's step time divided by ``impl``'s in the *same* round: the two ran
    minutes apart, not a whole round apart, so a machine whose speed drifts moves both alike."""
    other = {(r["norm"], r["depth"], r["round"]): r["step_s"] for r in rows if label(r) == impl}
    keys = [(x["norm"], x["depth"], x["round"]) for x in group]
    ratios = [x["step_s"] / other[k] for x, k in zip(group, keys, strict=True) if k in other]
    return statistics.median(ratios) if ratios else None


def above_depth_1(key: tuple[str, str, int], peak: dict[tuple, float]) -> float:
    """The peak of (implementation, norm, depth) minus the same implementation's and norm's at depth 1:
    what the other depth - 1 blocks cost. nan at depth 1 itself, and where depth 1 was not measured."""
    name, norm, depth = key
    floor = peak.get((name, norm, 1), math.nan)
    return math.nan if depth == 1 else peak[key] - floor


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| implementation | norm | depth | step s (median of rounds) | per round | vs torchscale "
        "| vs torchscale, paired | vs plain | tokens/s | peak MB | vs torchscale "
        "| above depth 1 MB | vs torchscale | build s |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((label(r), r["norm"], r["depth"]), []).append(r)
    step = {k: statistics.median(x["step_s"] for x in v) for k, v in groups.items()}
    peak = {k: statistics.median(x["peak_mb"] for x in v) for k, v in groups.items()}
    above = {k: above_depth_1(k, peak) for k in groups}
    for key in sorted(groups, key=lambda k: (k[2], k[1], k[0])):
        name, norm, depth = key
        ts, plain = ("torchscale", norm, depth), ("plain", norm, depth)
        group = groups[key]
        rounds = ", ".join(f"{x['step_s']:.3f}" for x in group)
        tokens = statistics.median(x["tokens_per_s"] for x in group)
        build = statistics.median(x["build_s"] for x in group)
        paired = paired_ratio(group, rows, "torchscale")
        lines.append(
            f"| {name} | {norm} | {depth} | {step[key]:.3f} | {rounds} | {_ratio(step[key], step.get(ts))} | "
            f"{'–' if paired is None else f'{paired:.2f}'} | "
            f"{_ratio(step[key], step.get(plain))} | {tokens:.0f} | {_mb(peak[key])} | "
            f"{_ratio(peak[key], peak.get(ts))} | {_mb(above[key])} | {_ratio(above[key], above.get(ts))} | "
            f"{build:.1f} |"
        )
    return "\n".join(lines)


def provenance(
    rows: list[dict[str, Any]],
    argv: list[str] | None,
    script: str = "benchmarks/peers.py",
) -> str:
    """One line above the table: when, on what, with which torch and which normlab, by which command."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "src"):
        commit += " with uncommitted changes in src/"
    machines = sorted({r.get("machine", "?") for r in rows}) or ["?"]
    torches = sorted({r.get("torch", "?") for r in rows}) or ["?"]
    command = " ".join([f"python {script}", *(sys.argv[1:] if argv is None else argv)])
    return (
        f"{time.strftime('%Y-%m-%d')} · {', '.join(machines)} · torch {', '.join(torches)} · "
        f"normlab {commit} · `{command}`"
    )


def report(rows: list[dict[str, Any]], argv: list[str] | None, script: str = "benchmarks/peers.py") -> str:
    """The provenance line, a blank line and the table: what the scripts print and write to ``.md``."""
    return provenance(rows, argv, script) + "\n\n" + table(rows)
