"""How many intra-op threads a run should use when other runs share the machine.

    python benchmarks/threads.py                  # depth 100, deepnorm, 2 concurrent runs
    python benchmarks/threads.py --depth 1000 --steps 3

Why: torch's default is one intra-op thread per core. Two such processes on the same cores (a sweep
with ``--jobs 2``, tests beside a training run, a colleague's job) oversubscribe them: their OpenMP
threads spin-wait on barriers while the other process holds the core, and each step can get many times
slower. ``compute.threads`` (``configs/compute/default.yaml``) sets a run's thread count; this script
measures when to lower it.

Rows, each the step of ``benchmarks/peers.py`` (normlab, d_model 64, batch 8 x 64 tokens): one process
alone with all cores, one process alone with one thread, ``--concurrent`` processes at the same time
with all cores each, and the same with ``cores / concurrent`` threads each. Median of ``--steps`` steps
after two warm-up steps; for concurrent rows the slowest process's median (the pair finishes when it
does). Throughput is sequences per second of all processes together.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from peers import one_row_command, read_row
from results_io import publish

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


def run_together(n: int, threads: int, depth: int, steps: int) -> list[float]:
    """Start ``n`` identical step benchmarks at once with ``threads`` threads each (0: torch's default)."""
    spec = {"impl": "normlab", "norm": "deepnorm", "depth": depth, "variant": "default"}
    spec.update(warmup=2, steps=steps, device="cpu", threads=threads)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = one_row_command(spec)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) for _ in range(n)]
    times = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        row = read_row(out)
        if row is None:
            raise RuntimeError("a concurrent step benchmark printed no row (see its stderr above)")
        times.append(row["step_s"])
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    share = max(1, cores // args.concurrent)
    rows = [
        ("1 process, all cores (threads: null)", 1, 0),
        ("1 process, compute.threads=1", 1, 1),
        (f"{args.concurrent} processes, all cores each (threads: null)", args.concurrent, 0),
        (f"{args.concurrent} processes, compute.threads={share} each", args.concurrent, share),
    ]
    lines = [
        f"deepnorm, depth {args.depth}, d_model 64, batch {BATCH} x 64 tokens, {cores} cores; median of "
        f"{args.steps} steps after two warm-up steps (concurrent rows: the slowest process)",
        "",
        "| configuration | step s | vs 1 process, all cores | sequences/s, all processes |",
        "|---|---:|---:|---:|",
    ]
    results, first = [], None
    for name, n, threads in rows:
        step = max(run_together(n, threads, args.depth, args.steps))
        first = first or step
        results.append({"configuration": name, "processes": n, "threads": threads, "step_s": step})
        lines.append(f"| {name} | {step:.3f} | {step / first:.2f} | {n * BATCH / step:.1f} |")
        print(lines[-1], flush=True)
    return publish(lines, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
