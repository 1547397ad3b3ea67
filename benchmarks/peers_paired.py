"""normlab, torchscale and the plain stack timed step by step in **one** process, in rotating order:
the step-time ratios of ``benchmarks/peers.py`` without the drift between processes.

    python benchmarks/peers_paired.py --depths 100 1000 --rounds 8 --out benchmarks/results/peers_paired

Why: ``peers.py`` runs every configuration in its own process (the only way to measure each one's peak
memory), so two rows it compares ran a minute or more apart. On a shared machine whose speed drifts by
10-30% over minutes that is more than the differences being asked about (e.g. 0.67× against 0.70×).
Here one process per norm and depth builds all three implementations (the same model, the same builders
and the same step as ``peers.py``), warms each up, then runs one step of each per round, rotating which
goes first (round r starts with implementation r mod 3), so consecutive steps of the implementations
being compared are seconds apart. Each row's "vs torchscale, paired" is the median over rounds of its
step divided by torchscale's step of the same round.

What this does not measure: peak memory (the three share one process; ``peers.py`` measures it) and the
first-touch costs of a fresh process. The three models' parameters and optimizer states are resident
together, which does not change the arithmetic of a step but does share one allocator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from peers import BATCH, SEQ, build, machine_name, process_settings, run_measuring, train_step
from peers_table import report

IMPLS = ("normlab", "torchscale", "plain")
SCRIPT = "benchmarks/peers_paired.py"


def rotation(impls: list[str], round_: int) -> list[str]:
    """Round r starts with the r-th implementation (cyclically), so every one runs first equally often."""
    k = round_ % len(impls)
    return impls[k:] + impls[:k]


def measure_together(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """All of ``spec['impls']`` for one norm and depth in this process: one row per implementation and
    round, in the row format of ``peers.py`` (peak memory not measured: ``nan``)."""
    import torch

    process_settings(1)
    impls = list(spec["impls"])
    base = {"norm": spec["norm"], "depth": spec["depth"], "variant": "default", "device": spec["device"]}
    built = {impl: build({**base, "impl": impl}) for impl in impls}
    # what a row says about its implementation, fixed after the build: not recomputed between steps
    fixed = {
        impl: {
            **base,
            "impl": impl,
            "build_s": b["build_s"],
            "peak_mb": math.nan,
            "params_m": sum(p.numel() for p in b["net"].parameters()) / 1e6,
            "machine": machine_name(b["x"].device),
            "torch": torch.__version__,
        }
        for impl, b in built.items()
    }
    losses: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(spec["warmup"]):
        for impl in impls:
            losses[impl].append(train_step(built[impl])[1])
    rows = []
    for round_ in range(spec["rounds"]):
        for position, impl in enumerate(rotation(impls, round_)):
            seconds, loss = train_step(built[impl])
            losses[impl].append(loss)
            rows.append(
                {
                    **fixed[impl],
                    "round": round_,
                    "position": position,
                    "step_s": seconds,
                    "tokens_per_s": BATCH * SEQ / seconds,
                }
            )
    for row in rows:
        row["losses"] = losses[row["impl"]]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--norms", nargs="+", default=["deepnorm", "preln"])
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--rounds", type=int, default=8, help="timed steps of each implementation")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each, before the rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("ROWS " + json.dumps(measure_together(json.loads(args.one))), flush=True)
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows: list[dict[str, Any]] = []
    failed = 0
    for depth in args.depths:
        for norm in args.norms:
            spec = {"norm": norm, "depth": depth, "impls": args.impls, "rounds": args.rounds}
            spec.update(warmup=args.warmup, device=args.device)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
            measured, tail = run_measuring(cmd, env, marker="ROWS")
            if measured is None:
                print(f"[peers_paired] {norm} depth {depth}: failed: {tail}", flush=True)
                failed += 1
                continue
            rows += measured
            print(f"[peers_paired] {norm} depth {depth}: {args.rounds} rounds done", flush=True)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
                args.out.with_suffix(".md").write_text(report(rows, argv, SCRIPT) + "\n")
    print(report(rows, argv, SCRIPT))
    return 1 if failed else 0  # a failed configuration makes the table incomplete, whatever else ran


if __name__ == "__main__":
    sys.exit(main())
