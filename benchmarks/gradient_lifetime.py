"""Does it matter when the gradients are freed? The same step in two orders, in one process.

    python benchmarks/gradient_lifetime.py                 # depth 1000, deepnorm, 10 rounds, both parts
    python benchmarks/gradient_lifetime.py --depth 300 --rounds 20 --part train

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

The second part (``--part train``) asks the same of ``python train.py`` itself, in one run (the
shapes of benchmarks/overhead.py, ``callbacks=none``, clipping on). :class:`KeepGradientsOnAlternateSteps`
holds a reference to every gradient from the optimizer step of every other step through the next
forward, and lets go where Lightning's closure frees them (``on_before_zero_grad``): those
iterations run in Lightning's order, the others in the task's (freed right after the step). Each
iteration in which the gradients were kept is divided by the freed iteration just before it, in
wall-clock and in CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from overhead import run_train, train_args
from peers import BATCH, SEQ, VOCAB, build_normlab
from results_io import publish


def _step(forward: Any, optimizer: Any, x: torch.Tensor, y: torch.Tensor, kept: bool) -> tuple[float, float]:
    """One step in the given order; (forward s, backward s). The optimizer step and zero_grad,
    the same work in both orders, are not timed."""
    if not kept:
        optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    loss = F.cross_entropy(forward(x).float().flatten(0, 1), y.flatten())
    t1 = time.perf_counter()
    if kept:
        optimizer.zero_grad(set_to_none=True)  # where Lightning's closure frees them
    t1b = time.perf_counter()  # freeing is timed in neither order: both free once per step
    loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    if not kept:
        optimizer.zero_grad(set_to_none=True)
    float(loss.detach())
    return t1 - t0, t2 - t1b


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


def loop_table(result: dict[str, Any]) -> list[str]:
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


class KeepGradientsOnAlternateSteps(L.Callback):
    """Benchmark-only (see the module docstring): Lightning's gradient lifetime on every other step,
    the task's on the others, and the time of every iteration, in ``lifetime.json``."""

    def __init__(self) -> None:
        self._held: list[torch.Tensor] = []
        self._start: tuple[float, float] | None = None
        self.kept: list[bool] = []  # this iteration's forward ran with the last step's gradients alive
        self.wall_s: list[float] = []
        self.cpu_s: list[float] = []

    def _close(self) -> tuple[float, float]:
        now = (time.perf_counter(), time.process_time())
        if self._start is not None:
            self.wall_s.append(now[0] - self._start[0])
            self.cpu_s.append(now[1] - self._start[1])
        return now

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._start = self._close()
        self.kept.append(bool(self._held))

    def on_before_zero_grad(self, *args: Any) -> None:  # after training_step, before backward
        self._held = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % 2 == 1:
            self._held = [p.grad for p in pl_module.parameters() if p.grad is not None]

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._close()
        record = {"kept": self.kept, "wall_s": self.wall_s, "cpu_s": self.cpu_s}
        (Path(trainer.default_root_dir) / "lifetime.json").write_text(json.dumps(record))


def through_train(norm: str, depth: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        extra = [
            "callbacks=none",
            "+callbacks.lifetime._target_=gradient_lifetime.KeepGradientsOnAlternateSteps",
        ]
        run_train(train_args(depth, 2 * rounds + 1, extra, Path(tmp), norm=norm))
        record = json.loads((Path(tmp) / "lifetime.json").read_text())
    steps = list(zip(record["kept"], record["wall_s"], record["cpu_s"], strict=True))[3:]  # after warm-up
    pairs = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if not a[0] and b[0]]  # freed, then kept
    return {
        "norm": norm,
        "depth": depth,
        "pairs": [[a[1], b[1], a[2], b[2]] for a, b in pairs],
        "ratio_median": statistics.median(b[1] / a[1] for a, b in pairs),
        "cpu_ratio_median": statistics.median(b[2] / a[2] for a, b in pairs),
        "ratio_range": [min(b[1] / a[1] for a, b in pairs), max(b[1] / a[1] for a, b in pairs)],
    }


def train_table(result: dict[str, Any]) -> list[str]:
    pairs = result["pairs"]  # [freed wall, kept wall, freed CPU, kept CPU] per pair

    def med(column: int) -> float:
        return statistics.median(p[column] for p in pairs)

    lo, hi = result["ratio_range"]
    return [
        f"`python train.py model.norm={result['norm']} model.depth={result['depth']}` (callbacks=none, "
        f"clipping 1.0), one run, {len(pairs)} pairs of iterations (median s):",
        "",
        "| iteration | wall s | CPU s |",
        "|---|---:|---:|",
        f"| gradients freed right after the step (normlab's task) | {med(0):.3f} | {med(2):.3f} |",
        f"| gradients kept through the next forward (Lightning's order) | {med(1):.3f} | {med(3):.3f} |",
        "",
        f"kept / freed, per pair: **{result['ratio_median']:.3f}** wall (range {lo:.2f}-{hi:.2f}), "
        f"**{result['cpu_ratio_median']:.3f}** CPU time",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", default="deepnorm")
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--part", choices=["loop", "train", "both"], default="both")
    parser.add_argument("--out", type=Path, help="write the table to <out>.md and the steps to <out>.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict[str, Any] = {}
    lines: list[str] = []
    if args.part in ("loop", "both"):
        results["loop"] = measure(args.norm, args.depth, args.rounds)
        lines += loop_table(results["loop"])
    if args.part in ("train", "both"):
        results["train"] = through_train(args.norm, args.depth, args.rounds)
        lines += ([""] if lines else []) + train_table(results["train"])
    return publish(lines, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
