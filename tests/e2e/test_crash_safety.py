"""kill -9 loses nothing: a training process killed with SIGKILL during a step, during validation or in
the middle of writing a checkpoint leaves a complete, loadable ``last.ckpt``, and resuming from it
reproduces the uninterrupted run's training losses exactly (same seed, same data order). Also: "best"
is decided on fresh validations only, so a resumed run and an uninterrupted one test the same file.

Each run is a real ``python train.py`` process (debug LM, 20 steps, validation every 5, ``last.ckpt``
every 2 steps); the kill comes from a callback of this module at a chosen point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from normlab.checkpoints import read_checkpoint_meta
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

KILLER = "tests.e2e.test_crash_safety.KillAt"
RUN = [
    "experiment=debug",
    "trainer.max_steps=20",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "~callbacks.rich_progress_bar",
    "logger=csv",
]


class KillAt(L.Callback):
    """SIGKILL this process at ``point`` once the optimizer step count reaches ``step``:
    ``step`` (after backward, before the optimizer step), ``validation`` (its first batch) or
    ``write`` (half-way through writing a checkpoint's bytes)."""

    def __init__(self, point: str, step: int) -> None:
        self.point, self.step = point, step

    def _die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.point != "write":
            return
        io = trainer.strategy.checkpoint_io
        original = io._write

        def dying(data, f) -> None:
            if trainer.global_step >= self.step:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                self._die()
            original(data, f)

        io._write = dying

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.point == "step" and trainer.global_step == self.step:
            self._die()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.point == "validation" and trainer.global_step >= self.step and not trainer.sanity_checking:
            self._die()


def _train(args: list[str], data_dir: Path, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *RUN, *args, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _curve(run_dir: Path) -> list[str]:
    """step,loss rows of the run record, as written (exact float reprs)."""
    rows = (run_dir / "train_curve.csv").read_text().splitlines()[1:]
    return [",".join(r.split(",")[:2]) for r in rows]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    proc = _train([], data_dir, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize(("point", "step"), [("step", 7), ("validation", 10), ("write", 12)])
def test_kill_9_then_resume_reproduces_the_straight_run(
    straight: Path, data_dir: Path, tmp_path: Path, point: str, step: int
) -> None:
    run_dir = tmp_path / "run"
    killed = _train(
        [
            f"+callbacks.killer._target_={KILLER}",
            f"+callbacks.killer.point={point}",
            f"+callbacks.killer.step={step}",
        ],
        data_dir,
        run_dir,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    meta = read_checkpoint_meta(last)  # complete and loadable (raises on a torn file)
    assert 0 < meta["global_step"] <= step
    resumed = _train([f"ckpt_path={last}"], data_dir, tmp_path / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _curve(run_dir) == _curve(straight)  # every one of the 20 losses, bit for bit
    assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))  # the torn temp file was cleaned up
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 20


def test_resumed_and_straight_runs_test_the_same_best_checkpoint(
    straight: Path, data_dir: Path, tmp_path: Path
) -> None:
    """Checkpoints every 2 steps, validations every 5: best is ranked on validations only, and the
    resumed run keeps its best-so-far because it continues in its own folder."""
    run_dir = tmp_path / "run"
    killed = _train(
        [f"+callbacks.killer._target_={KILLER}", "+callbacks.killer.point=step", "+callbacks.killer.step=13"],
        data_dir,
        run_dir,
    )
    assert killed.returncode == -signal.SIGKILL
    resumed = _train([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], data_dir, tmp_path / "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((run_dir / "metrics.json").read_text())
    best_a = sorted(p.name for p in (straight / "checkpoints").glob("best-*.ckpt"))
    best_b = sorted(p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best_a == best_b and len(best_a) == 1
    best_step = int(best_a[0].removeprefix("best-step").removesuffix(".ckpt"))
    assert best_step % 5 == 0  # a validation step, never a periodic save scored with a stale loss
    vals = {v["step"]: v["val/loss"] for v in a["val_history"]}
    assert best_step == min(vals, key=vals.get)  # the real best
    assert b["test"]["test/loss"] == pytest.approx(a["test"]["test/loss"], abs=1e-6)
    assert "dirpath has changed" not in resumed.stderr
