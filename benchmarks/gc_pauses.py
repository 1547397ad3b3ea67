"""Time Python's garbage collector takes per training step in ``python train.py``, with
``compute.freeze_gc`` on (the default) and off.

    python benchmarks/gc_pauses.py                          # deepnorm, depth 1000, 12 steps
    python benchmarks/gc_pauses.py --depth 100 --steps 30 --out benchmarks/results/gc_pauses_depth100

Each setting is one ``python train.py`` run with the model and shapes of benchmarks/overhead.py
(d_model 64, 8 x 64 tokens, vocabulary 8000, one thread, no validation, default callbacks) and a
benchmark callback, :class:`CollectorClock`, that times every collection through ``gc.callbacks``
(start to stop, per generation) and the wall time of every step. What is reported is measured, not
inferred: the collector's seconds per step (median and mean over the steps after the first two,
which also hold the freeze's own one-off ``gc.collect()``), how many full (generation 2) collections
ran and what one took, and the median step for scale. The collector's time does not depend on how
fast the machine is at that moment, so unlike the step times it is comparable between the two runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from overhead import run_train, train_args
from results_io import publish

CLOCK = "+callbacks.collector_clock._target_=gc_pauses.CollectorClock"
SETTINGS = {
    "on": ("compute.freeze_gc=true (default)", []),
    "off": ("compute.freeze_gc=false", ["compute.freeze_gc=false"]),
}


class CollectorClock(L.Callback):
    """Benchmark-only: the collector's time per generation and the wall time of every step, written
    to ``<run dir>/collector.json`` at the end of the fit."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self._current = self._empty()
        self._started = 0.0
        self._step_start: float | None = None
        gc.callbacks.append(self._on_gc)

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"seconds": [0.0, 0.0, 0.0], "count": [0, 0, 0]}

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self._current["seconds"][generation] += time.perf_counter() - self._started
        self._current["count"][generation] += 1

    def on_train_batch_start(self, *args: Any) -> None:
        now = time.perf_counter()
        if self._step_start is not None:
            self.steps.append(
                {**self._current, "step_s": now - self._step_start, "frozen": gc.get_freeze_count()}
            )
        self._current, self._step_start = self._empty(), now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.on_train_batch_start()  # closes the last step
        gc.callbacks.remove(self._on_gc)
        (Path(trainer.default_root_dir) / "collector.json").write_text(json.dumps(self.steps))


def run(depth: int, steps: int, extra: list[str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        run_train([*train_args(depth, steps, extra, out), CLOCK])
        return json.loads((out / "collector.json").read_text())[2:]  # after two warm-up steps


def table(depth: int, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        f"deepnorm, depth {depth}, `python train.py` with the default callbacks, one thread; "
        f"{len(next(iter(results.values())))} steps after two warm-up steps per setting.",
        "",
        "| setting | collector s per step (median) | (mean) | full collections "
        "| s per full collection (median) | objects frozen | step s (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, rows in results.items():
        per_step = [sum(r["seconds"]) for r in rows]
        full = [r["seconds"][2] / r["count"][2] for r in rows if r["count"][2]]
        lines.append(
            f"| {SETTINGS[key][0]} | {statistics.median(per_step):.3f} | {statistics.mean(per_step):.3f} | "
            f"{sum(r['count'][2] for r in rows)} | {statistics.median(full) if full else 0:.3f} | "
            f"{max(r['frozen'] for r in rows):,} | {statistics.median(r['step_s'] for r in rows):.3f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", type=Path, help="write the table to <out>.md and the steps to <out>.json")
    args = parser.parse_args(argv)
    results = {key: run(args.depth, args.steps, SETTINGS[key][1]) for key in args.settings}
    return publish(table(args.depth, results), {"depth": args.depth, **results}, args.out)


if __name__ == "__main__":
    sys.exit(main())
