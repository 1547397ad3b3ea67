"""Does it matter when the gradients are freed? The same step in two orders, in one process.

    python benchmarks/gradient_lifetime.py                 # depth 1000, deepnorm, 10 rounds
    python benchmarks/gradient_lifetime.py --depth 300 --rounds 20

Lightning's automatic optimisation runs ``training_step`` (the forward) first and only then
``zero_grad``, so every forward runs while the last step's gradients are still alive and they are
freed just before the backward. A plain loop (and ``benchmarks/peers.py``) frees them right after the
optimizer step. Both give the same numbers: every backward starts from no gradients. This script
measures whether they cost the same, because ``TransformerTask.optimizer_step`` frees the gradients
right after the step on the strength of it (README, "What Lightning and the callbacks cost"):

- **freed**: zero_grad, forward, loss, backward, optimizer step, zero_grad (the plain loop);
- **kept**: forward, zero_grad, backward, optimizer step, the gradients left alive (Lightning's order).

Each round takes one *freed* step, then two *kept* steps; only the second *kept* step is timed as
*kept*, because the first one's forward still finds no gradients. The table shows the medians, the
median of the per-round ratios kept / freed, and the split into forward (with the loss) and
backward. The network, batch and optimizer are those of ``peers.py``'s normlab row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peers import BATCH, SEQ, VOCAB, build_normlab
from results_io import publish


def _step(forward: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor, kept: bool) -> tuple[float, float]:
    """One step in the given order; (forward s, backward s): the optimizer step is the same in both."""
    if not kept:
        optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = F.cross_entropy(forward(x).float().flatten(0, 1), y.flatten())
    t1 = time.perf_counter()
    if kept:
        optimizer.zero_grad(set_to_none=True)  # where Lightning's closure frees them
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    if not kept:
        optimizer.zero_grad(set_to_none=True)
    float(loss.detach())
    return t1 - t0, t2 - t1


def measure(norm: str, depth: int, rounds: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as peers.py
    torch.manual_seed(0)
    _, forward, optimizer = build_normlab(norm, depth, "default")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    for kept in (False, True, True):  # warm-up, both orders
        _step(forward, optimizer, x, y, kept)
    freed, kept = [], []
    for _ in range(rounds):
        freed.append(_step(forward, optimizer, x, y, kept=False))
        _step(forward, optimizer, x, y, kept=True)  # its forward finds no gradients yet: not timed
        kept.append(_step(forward, optimizer, x, y, kept=True))
    ratios = [sum(k) / sum(f) for f, k in zip(freed, kept, strict=True)]
    return {
        "norm": norm,
        "depth": depth,
        "rounds": rounds,
        "freed": freed,
        "kept": kept,
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def table(result: dict[str, Any]) -> list[str]:
    def med(order: str, phase: int | None) -> float:
        steps = result[order]
        return statistics.median(sum(s) if phase is None else s[phase] for s in steps)

    lo, hi = result["ratio_range"]
    lines = [
        f"{result['norm']}, depth {result['depth']}, d_model 64, {BATCH} x {SEQ} tokens, one thread, "
        f"{result['rounds']} rounds in one process (median s per step; the optimizer step, the same in "
        "both orders, is not timed).",
        "",
        "| order | forward + backward s | forward s (with the loss) | backward s |",
        "|---|---:|---:|---:|",
    ]
    for order, name in (
        ("freed", "freed after the step (plain loop, normlab)"),
        ("kept", "kept until after the next forward (Lightning)"),
    ):
        lines.append(f"| {name} | {med(order, None):.3f} | {med(order, 0):.3f} | {med(order, 1):.3f} |")
    lines += ["", f"kept / freed, per round: **{result['ratio_median']:.3f}** (range {lo:.2f}-{hi:.2f})"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", default="deepnorm")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the table to <out>.md and the steps to <out>.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = measure(args.norm, args.depth, args.rounds)
    return publish(table(result), result, args.out)


if __name__ == "__main__":
    sys.exit(main())
