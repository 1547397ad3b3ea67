"""What Lightning and each default callback add to the 1,000-layer step, against the bare step.

    python benchmarks/overhead.py                          # depth 1000, deepnorm, 8 steps, 1 round
    python benchmarks/overhead.py --depth 100 --steps 20   # quicker
    python benchmarks/overhead.py --rows default --steps 20   # only `python train.py` as it comes

Each row is one ``python train.py model.norm=deepnorm model.depth=1000`` process (d_model 64, 8 x 64
tokens of the default run's data, vocabulary 8000, one intra-op thread, no validation, no test) with
a different set of callbacks. Two ratios are reported, because this machine's speed drifts by 10% and
more between processes (a shared VM), which is more than the overhead being measured:

- **paired** (the one to read): inside each run, :class:`PairedBareStep` takes one bare step of the
  run's own network with the run's own optimizer (zero_grad, forward, loss, backward, optimizer
  step, zero_grad, as peers.py's step; no Lightning, no clipping, no callback) on the same batch just before
  every Lightning iteration, and times the Lightning iteration as everything between the end of one
  bare step and the start of the next (the other callbacks' hooks, the training step, clipping, the
  optimizer step, logging, fetching the next batch). Each Lightning iteration is divided by the bare
  step next to it; the table shows the median of these ratios over the steps after the first two.
  (The run takes two optimizer steps per batch; what it learns does not matter here.)
- **paired CPU time**: the same pairs in CPU seconds of the whole process (``time.process_time``,
  every thread: the progress bar's and the data loader's included). Time the VM's other tenants take
  from this process (steal) is not in it, so it drifts less than the wall-clock ratio; work Lightning
  adds shows in both.
- **where the time goes**: the same steps split at Lightning's hooks (forward = ``training_step``,
  backward, optimizer phase from ``on_before_optimizer_step``, and the rest) beside the bare step's
  forward, backward and optimizer step.
- **vs own process**: the Lightning step against ``benchmarks/peers.py``'s bare step run in a process
  of its own, before the rows (what the two would cost run separately, drift included).

The step columns are over the steps at which no stability monitor measures (99 of every 100 in a
long run); 'a measuring step' is the median Lightning iteration of those at which it does (steps 0,
1, 2, 3, 5, 10, 20, 50, 100, then every 100): what a measurement costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from peers import one_row_command, run_measuring
from results_io import publish

from normlab.callbacks.stability import StabilityMonitor

ROOT = Path(__file__).resolve().parents[1]
NO_CLIP = "trainer.gradient_clip_val=null"
PAIRED = "+callbacks.paired._target_=overhead.PairedBareStep"
ROWS = {  # --rows key: (label, train.py overrides)
    "none": ("Lightning, no callbacks, no clipping", ["callbacks=none", NO_CLIP]),
    "clip": ("+ gradient clipping 1.0 (the default)", ["callbacks=none"]),
    "guard": (
        "+ divergence guard",
        ["callbacks=none", "+callbacks.guard._target_=normlab.callbacks.divergence.DivergenceGuard"],
    ),
    "monitor": (
        "+ stability monitor",
        ["callbacks=none", "+callbacks.monitor._target_=normlab.callbacks.stability.StabilityMonitor"],
    ),
    "default": ("default callbacks (checkpoint, progress bar, guard, monitor), clipping", []),
}


class PairedBareStep(L.Callback):
    """Benchmark-only (see the module docstring): a bare step of the run's network and optimizer
    before every Lightning iteration, and the time of the iteration between two bare steps, in
    ``paired.json``."""

    def __init__(self) -> None:
        self.bare_s: list[float] = []
        self.lightning_s: list[float] = []
        self.bare_cpu_s: list[float] = []  # the same spans in CPU seconds of the whole process
        self.lightning_cpu_s: list[float] = []
        self.measuring: list[bool] = []  # a stability monitor measures at this step
        # per step, where the time goes: {"bare": {phase: s}, "lightning": {phase: s}} (PHASES)
        self.phases: list[dict[str, dict[str, float]]] = []
        self._marks: dict[str, float] = {}
        self._end: float | None = None
        self._end_cpu = 0.0
        self._monitors: list[StabilityMonitor] = []

    def _mark(self, name: str) -> None:
        self._marks[name] = time.perf_counter()

    def on_before_zero_grad(self, *args: Any) -> None:  # Lightning: after training_step (the forward)
        self._mark("forward")

    def on_before_backward(self, *args: Any) -> None:
        self._mark("before_backward")

    def on_after_backward(self, *args: Any) -> None:
        self._mark("backward")

    def on_before_optimizer_step(self, *args: Any) -> None:
        self._mark("before_optimizer")

    def on_train_batch_end(self, *args: Any) -> None:
        self._mark("optimizer")

    def _close_lightning_phases(self, now: float) -> None:
        m = self._marks
        if self._end is None or not {"forward", "before_backward", "backward", "optimizer"} <= m.keys():
            return
        spans = {
            "forward": m["forward"] - self._end,
            "backward": m["backward"] - m["before_backward"],
            "optimizer": m["optimizer"] - m.get("before_optimizer", m["backward"]),
        }
        spans["rest"] = (now - self._end) - sum(spans.values())
        self.phases[-1]["lightning"] = spans

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._monitors = [cb for cb in trainer.callbacks if isinstance(cb, StabilityMonitor)]

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        if self._end is not None:
            self.lightning_s.append(start - self._end)
            self.lightning_cpu_s.append(start_cpu - self._end_cpu)
            self._close_lightning_phases(start)
        self._marks = {}
        optimizer = trainer.optimizers[0]  # the run's own (FlatAdamW on the CPU), not Lightning's wrapper
        # zero_grad first, in case the Lightning step left gradients (backward would add to them)
        optimizer.zero_grad(set_to_none=True)
        loss = pl_module._loss(batch)[0]  # the LM task's own loss, without its logging
        forward_end = time.perf_counter()
        loss.backward()
        backward_end = time.perf_counter()
        optimizer.step()
        # as peers.py's bare step and normlab's task (TransformerTask.optimizer_step) do: free the
        # gradients right after the step, so the next forward (Lightning's) runs without them
        optimizer.zero_grad(set_to_none=True)
        float(loss)  # the host sync the bare benchmark step has too
        self._end, self._end_cpu = time.perf_counter(), time.process_time()
        bare_phases = {"forward": forward_end - start, "backward": backward_end - forward_end}
        bare_phases.update(optimizer=self._end - backward_end, rest=0.0)
        self.phases.append({"bare": bare_phases})
        self.bare_s.append(self._end - start)
        self.bare_cpu_s.append(self._end_cpu - start_cpu)
        self.measuring.append(any(m.measures_at(trainer.global_step) for m in self._monitors))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self.lightning_s.append(now - self._end)  # the last iteration
        self.lightning_cpu_s.append(time.process_time() - self._end_cpu)
        self._close_lightning_phases(now)
        record = {
            "bare_s": self.bare_s,
            "lightning_s": self.lightning_s,
            "bare_cpu_s": self.bare_cpu_s,
            "lightning_cpu_s": self.lightning_cpu_s,
            "measuring": self.measuring,
            "phases": self.phases,
        }
        (Path(trainer.default_root_dir) / "paired.json").write_text(json.dumps(record))


def bare(depth: int, steps: int) -> float:
    spec = {"impl": "normlab", "norm": "deepnorm", "depth": depth, "variant": "default"}
    spec.update(warmup=2, steps=steps, device="cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    row, tail = run_measuring(one_row_command(spec), env)
    if row is None:
        raise RuntimeError(f"the bare step printed no row: {tail}")
    return row["step_s"]


def train_args(depth: int, steps: int, extra: list[str], out: Path, norm: str = "deepnorm") -> list[str]:
    """The ``python train.py`` overrides of a row: the bare step's model and shapes, ``steps`` + 2
    steps, no validation, no test, one thread (also used by callback_costs and gradient_lifetime)."""
    return [
        f"model.norm={norm}",
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


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    """``python train.py <args>`` of this checkout with one thread, this checkout's ``src/`` (not
    whichever normlab the environment installed) and ``benchmarks/`` (the benchmark callbacks) on
    the path; a failed run raises with its last line (also used by callback_costs and
    gradient_lifetime)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "benchmarks")]),
    }
    proc = subprocess.run(
        [sys.executable, "train.py", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600
    )
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["train.py failed"])[-1])
    return proc


def through_train(depth: int, steps: int, extra: list[str], out: Path) -> dict[str, list[float]]:
    run_train([*train_args(depth, steps, extra, out), PAIRED])
    paired = json.loads((out / "paired.json").read_text())
    return {key: values[2:] for key, values in paired.items()}  # after two warm-up steps


def _steps(run: dict[str, list]) -> list[tuple[float, float, float, bool]]:
    """(Lightning s, bare s, Lightning / bare in CPU seconds, a monitor measured) per step of one run."""
    cpu = [t / b for t, b in zip(run["lightning_cpu_s"], run["bare_cpu_s"], strict=True)]
    return list(zip(run["lightning_s"], run["bare_s"], cpu, run["measuring"], strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--out", type=Path, help="write the table to <out>.md")
    args = parser.parse_args(argv)
    own_process: list[float] = []
    rows = {ROWS[key][0]: ROWS[key][1] for key in args.rows}
    runs: dict[str, list[dict[str, list[float]]]] = {name: [] for name in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            own_process.append(bare(args.depth, args.steps))
            print(f"[overhead] round {round_} bare step, own process: {own_process[-1]:.3f} s", flush=True)
            for i, (name, extra) in enumerate(rows.items()):
                run = through_train(args.depth, args.steps, extra, Path(tmp) / f"r{round_}-{i}")
                runs[name].append(run)
                light, beside = (statistics.median(run[k]) for k in ("lightning_s", "bare_s"))
                print(f"[overhead] round {round_} {name}: Lightning {light:.3f} s, bare {beside:.3f} s")
    base = statistics.median(own_process)
    lines = [
        f"deepnorm, depth {args.depth}, d_model 64, 8 x 64 tokens, one thread, {args.steps} paired steps "
        f"after two warm-up steps per run, {args.rounds} round(s). Paired: each Lightning iteration "
        "divided by the bare step of the run's own network and optimizer taken just before it in the "
        "same process (median of the ratios over the steps at which no stability monitor measures, and "
        "their range).",
        "",
        "| configuration | Lightning step s | bare step beside it s | **paired ratio** | paired range "
        "| paired CPU-time ratio (range) | steps | vs bare step in own process | a measuring step s |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| bare step in its own process (benchmarks/peers.py) | | {base:.3f} | | | | | 1.00 | |",
    ]
    results: dict[str, Any] = {"depth": args.depth, "own_process_bare_s": own_process}
    for name, name_runs in runs.items():
        results[name] = name_runs
        steady = [(t, b, c) for run in name_runs for t, b, c, m in _steps(run) if not m]
        measuring = [t for run in name_runs for t, _, _, m in _steps(run) if m]
        ratios = [t / b for t, b, _ in steady]
        cpu = [c for _, _, c in steady]
        step = statistics.median(t for t, _, _ in steady)
        lines.append(
            f"| {name} | {step:.3f} | {statistics.median(b for _, b, _ in steady):.3f} | "
            f"**{statistics.median(ratios):.3f}** | {min(ratios):.2f}-{max(ratios):.2f} | "
            f"{statistics.median(cpu):.3f} ({min(cpu):.2f}-{max(cpu):.2f}) | {len(ratios)} | "
            f"{step / base:.3f} | {statistics.median(measuring) if measuring else math.nan:.3f} |"
        )
    lines += ["", *phase_table(runs)]
    return publish(lines, results, args.out)


PHASES = ("forward", "backward", "optimizer", "rest")


def phase_table(runs: dict[str, list[dict[str, list]]]) -> list[str]:
    """Where the Lightning iteration's extra time goes: per phase, the median over the steps at
    which no monitor measures, Lightning's against the bare step's beside it."""
    lines = [
        "Where the time goes (median s per step; Lightning's forward is its training_step and what runs "
        "before it, its optimizer phase starts at on_before_optimizer_step and includes the gradient norm "
        "the run record logs and the clip, 'rest' is the other hooks, logging and fetching the next batch):",
        "",
        "| configuration | " + " | ".join(f"{p}: Lightning / bare" for p in PHASES) + " |",
        "|---|" + "---:|" * len(PHASES),
    ]
    for name, name_runs in runs.items():
        steps = [
            ph
            for run in name_runs
            for ph, measuring in zip(run["phases"], run["measuring"], strict=True)
            if not measuring and "lightning" in ph
        ]
        if not steps:
            continue
        cells = [
            f"{statistics.median(ph['lightning'][p] for ph in steps):.3f} / "
            f"{statistics.median(ph['bare'][p] for ph in steps):.3f}"
            for p in PHASES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
