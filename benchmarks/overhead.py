"""What Lightning and each default callback add to the 1,000-layer step, against the bare step.

    python benchmarks/overhead.py                          # depth 1000, deepnorm, 8 steps, 2 rounds
    python benchmarks/overhead.py --depth 100 --steps 20 --rounds 1   # quicker

Each row is one ``python train.py model.norm=deepnorm model.depth=1000`` process (d_model 64, 8 x 64
tokens of the default run's data, vocabulary 8000 as in the bare step, one intra-op thread, no
validation, no test), with a different set of callbacks; the step time is the median, over the steps
after the first two, of the run record's per-step wall time (``train_curve.csv``: batch start to
batch end, i.e. forward, backward, clipping, optimizer step and every callback hook of the step).
The bare row is ``benchmarks/peers.py``'s step of the same model (forward, loss, backward, optimizer step; no
clipping, no Lightning). All rows run one after the other in each of ``--rounds`` interleaved rounds,
so their ratios are comparable; absolute times are not (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import one_row_command, read_row
from results_io import publish

ROOT = Path(__file__).resolve().parents[1]
NO_CLIP = "trainer.gradient_clip_val=null"
ROWS = {
    "Lightning, no callbacks, no clipping": ["callbacks=none", NO_CLIP],
    "+ gradient clipping 1.0 (the default)": ["callbacks=none"],
    "+ divergence guard": [
        "callbacks=none",
        "+callbacks.guard._target_=normlab.callbacks.divergence.DivergenceGuard",
    ],
    "+ stability monitor": [
        "callbacks=none",
        "+callbacks.monitor._target_=normlab.callbacks.stability.StabilityMonitor",
    ],
    "default callbacks (checkpoint, progress bar, guard, monitor), clipping": [],
}


def bare(depth: int, steps: int) -> float:
    spec = {"impl": "normlab", "norm": "deepnorm", "depth": depth, "variant": "default"}
    spec.update(warmup=2, steps=steps, device="cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        one_row_command(spec), capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT
    )
    row = read_row(proc.stdout)
    if row is None:
        raise RuntimeError(f"the bare step printed no row: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return row["step_s"]


def through_train(depth: int, steps: int, extra: list[str], out: Path) -> list[float]:
    args = [
        "model.norm=deepnorm",
        f"model.depth={depth}",
        "model.pos_encoding=none",
        "data.tokenizer.vocab_size=8000",  # the bare step's vocabulary
        f"trainer.max_steps={steps + 2}",
        "trainer.limit_val_batches=0",
        "test=false",
        "compute.threads=1",
        f"hydra.run.dir={out}",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    rows = (out / "train_curve.csv").read_text().splitlines()[1:]
    return [float(r.split(",")[3]) for r in rows[2:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table to <out>.md")
    args = parser.parse_args(argv)
    bares: list[float] = []
    per_row: dict[str, list[float]] = {name: [] for name in ROWS}
    slowest: dict[str, float] = dict.fromkeys(ROWS, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # interleaved: every row sees the same machine load
            bares.append(bare(args.depth, args.steps))
            print(f"[overhead] round {round_} bare step: {bares[-1]:.3f} s", flush=True)
            for i, (name, extra) in enumerate(ROWS.items()):
                steps = through_train(args.depth, args.steps, extra, Path(tmp) / f"r{round_}-{i}")
                per_row[name].append(statistics.median(steps))
                slowest[name] = max(slowest[name], *steps)
                print(f"[overhead] round {round_} {name}: {per_row[name][-1]:.3f} s", flush=True)
    base = statistics.median(bares)
    lines = [
        f"deepnorm, depth {args.depth}, d_model 64, 8 x 64 tokens, one thread; per round the median of "
        f"{args.steps} steps after two warm-up steps, then the median over {args.rounds} interleaved "
        "rounds. 'slowest step' shows what a measuring step of a callback costs (the stability monitor "
        "measures at steps 0, 1, 2, 3, 5, 10, 20, 50, 100, then every 100).",
        "",
        "| configuration | step s | per round | vs bare step | slowest step s |",
        "|---|---:|---|---:|---:|",
        f"| bare step (benchmarks/peers.py: forward, loss, backward, AdamW; no Lightning) | {base:.3f} | "
        f"{', '.join(f'{b:.3f}' for b in bares)} | 1.00 | |",
    ]
    results: dict[str, object] = {"depth": args.depth, "bare_s": bares}
    for name, medians in per_row.items():
        step = statistics.median(medians)
        results[name] = {"step_s": medians, "slowest_s": slowest[name]}
        rounds = ", ".join(f"{m:.3f}" for m in medians)
        lines.append(f"| {name} | {step:.3f} | {rounds} | {step / base:.3f} | {slowest[name]:.3f} |")
    return publish(lines, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
