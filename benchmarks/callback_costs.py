"""What each callback's hooks cost per call in ``python train.py``, from Lightning's own profiler.

    python benchmarks/callback_costs.py                              # deepnorm, depth 1000, 8 steps
    python benchmarks/callback_costs.py --norms deepnorm branchnorm --depth 300 --steps 20

Each norm is one ``python train.py ... +trainer.profiler=simple`` run (the model and shapes of
benchmarks/overhead.py: d_model 64, 8 x 64 tokens, vocabulary 8000, one thread, no validation, the
default callbacks). Lightning's SimpleProfiler times every hook of every callback and of the task;
this script reads its report and prints the per-step hooks of the callbacks and the task's gradient
clipping, with the whole batch, the training step, the backward and the task's optimizer step (the
closure, i.e. forward and backward, included) for scale. The mean is
over every call, so the stability monitor's mean includes its measuring steps (steps 0, 1, 2, 3, 5,
10, 20, 50, 100, then every 100): with few steps most of them measure. Why a script and not a
test: timings are evidence, never assertions (README, "Benchmarks").
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from overhead import run_train, train_args
from results_io import publish

SCALE = (
    "run_training_batch",
    "[Strategy]SingleDeviceStrategy.training_step",
    "[Strategy]SingleDeviceStrategy.backward",
)
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "configure_gradient_clipping",
)


def read_report(output: str) -> list[dict[str, Any]]:
    """The rows of the 'FIT Profiler Report' table Lightning's SimpleProfiler printed."""
    rows = []
    for line in output[output.index("FIT Profiler Report") :].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("Action", "Total"):
            continue
        try:
            mean, calls, total = float(cells[1]), int(cells[2]), float(cells[3])
        except ValueError:
            continue
        name = re.sub(r"\{.*?\}", "", cells[0])  # ModelCheckpoint prints its settings in its name
        rows.append({"action": name, "mean_s": mean, "calls": calls, "total_s": total})
    return rows


def profile(norm: str, depth: int, steps: int) -> dict[str, Any]:
    """The profiler's rows of one run, and the gradient norm of each of its steps (from the run
    record's train_curve.csv: whether the clip had work to do)."""
    with tempfile.TemporaryDirectory() as tmp:
        # train_args counts two warm-up steps on top: the profile covers all `steps`
        try:
            proc = run_train(train_args(depth, steps - 2, ["+trainer.profiler=simple"], Path(tmp), norm=norm))
        except RuntimeError as error:
            raise RuntimeError(f"{norm}: {error}") from None
        with open(Path(tmp) / "train_curve.csv", newline="") as f:
            grad_norms = [float(row["grad_norm"]) for row in csv.DictReader(f)]
    output = proc.stdout + proc.stderr  # Lightning logs the report (stderr)
    if "FIT Profiler Report" not in output:
        raise RuntimeError(f"{norm}: train.py printed no profiler report")
    return {"rows": read_report(output), "grad_norms": grad_norms}


def selected(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scale = [r for name in SCALE for r in rows if r["action"] == name]
    scale += [
        r
        for r in rows
        if r["action"].startswith("[LightningModule]") and r["action"].endswith(".optimizer_step")
    ]
    hooks = [
        r
        for r in rows
        if (r["action"].startswith("[Callback]") or r["action"].startswith("[LightningModule]"))
        and r["action"].rsplit(".", 1)[-1] in PER_STEP_HOOKS
        and r["total_s"] >= 1e-4
    ]
    return scale + sorted(hooks, key=lambda r: -r["total_s"])


def table(results: dict[str, list[dict[str, Any]]], depth: int, steps: int) -> list[str]:
    lines = [
        f"depth {depth}, d_model 64, 8 x 64 tokens, one thread, {steps} steps, default callbacks and "
        "clipping 1.0; Lightning's SimpleProfiler (mean over every call; hooks under 0.1 ms in total "
        "left out).",
        "",
        "| norm | action | calls | mean ms per call | total s |",
        "|---|---|---:|---:|---:|",
    ]
    for norm, run in results.items():
        for r in selected(run["rows"]):
            lines.append(
                f"| {norm} | {r['action']} | {r['calls']} | {r['mean_s'] * 1e3:.2f} | {r['total_s']:.3f} |"
            )
    for norm, run in results.items():
        norms = run["grad_norms"]
        clipped = sum(n > 1.0 for n in norms)
        lines.append(
            f"\n{norm}: gradient norms of the {len(norms)} steps {min(norms):.2f}-{max(norms):.2f}, "
            f"{clipped} of them above the clip (1.0)."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["deepnorm"])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the table to <out>.md and the rows to <out>.json")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: must be at least 1, got {args.steps}")
    results = {norm: profile(norm, args.depth, args.steps) for norm in args.norms}
    return publish(table(results, args.depth, args.steps), results, args.out)


if __name__ == "__main__":
    sys.exit(main())
