"""Disk faults end in one line and lose nothing: an unwritable or impossible log folder stops the
command before any work (exit 2); a checkpoint write that fails (disk full) names the file and the
free space, exits with code 4, and leaves the previous checkpoint complete and loadable."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from normlab.checkpoints import read_checkpoint_meta
from normlab.errors import CheckpointWriteError
from normlab.run import train
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", ["file_as_folder", "proc"])
def test_an_impossible_log_folder_is_one_line_before_anything_runs(tmp_path: Path, kind: str) -> None:
    if kind == "file_as_folder":
        (tmp_path / "afile").write_text("x")
        log_dir = tmp_path / "afile" / "logs"
    else:
        log_dir = Path("/proc/normlab-logs")
    proc = subprocess.run(
        [sys.executable, "train.py", "experiment=debug", f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "normlab: error: paths.log_dir: cannot create the run folder"
    )


class DiskFullAt(L.Callback):
    """From the optimizer step ``step`` on, every checkpoint write fails with ENOSPC half-way."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        original = io._write

        def full(data, f) -> None:
            if trainer.global_step >= self.step:
                f.write(data[: len(data) // 3])
                raise OSError(errno.ENOSPC, "No space left on device")
            original(data, f)

        io._write = full


def test_a_failed_checkpoint_write_keeps_the_previous_one(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        ["experiment=debug", "trainer.max_steps=12", "trainer.val_check_interval=4", "test=false"]
        + [
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "+callbacks.full._target_=tests.e2e.test_disk_faults.DiskFullAt",
        ]
        + ["+callbacks.full.step=6"],
    )
    with pytest.raises(CheckpointWriteError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "MB free" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert read_checkpoint_meta(last)["global_step"] == 4  # the last good one, complete
    assert not list((tmp_path / "checkpoints").glob(".*.tmp-*"))  # the torn temp file is gone


def test_the_command_line_exits_4_in_one_line(tmp_path: Path) -> None:
    args = ["experiment=debug", "trainer.max_steps=12", "trainer.val_check_interval=4", "test=false"]
    args += ["callbacks.model_checkpoint.every_n_train_steps=2", f"paths.log_dir={tmp_path}", "run_id=full"]
    args += ["+callbacks.full._target_=tests.e2e.test_disk_faults.DiskFullAt", "+callbacks.full.step=6"]
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 4, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("normlab: error:")]
    assert len(errors) == 1 and "could not be written" in errors[0] and "Traceback" not in proc.stderr
