"""A run that goes nan stops at that step, keeps its last good checkpoint and exits in one line.

The divergence is injected (a ``nan`` written into one gradient at a chosen optimizer step) so the
step is known exactly; a real nan/inf loss reaches the guard the same way, through the gradients.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from normlab.errors import TrainingDiverged
from normlab.run import train
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

DEBUG = ["experiment=debug", "trainer.max_steps=8", "trainer.val_check_interval=2", "test=false"]
INJECTOR = "tests.e2e.test_divergence_guard.NaNGradientInjector"


class NaNGradientInjector(L.Callback):
    """Write nan into the first gradient on the batch that completes optimizer step ``at_step``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step + 1 == self.at_step:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = math.nan


def test_nan_gradient_stops_before_the_update_and_keeps_last_checkpoint(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("train", DEBUG)
    with open_dict(cfg):
        cfg.callbacks.nan_injector = {"_target_": INJECTOR, "at_step": 5}
    with pytest.raises(TrainingDiverged) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message and "optimizer step 5" in message and "nan" in message
    assert "optim.lr" in message and "last.ckpt" in message
    # validation ran after steps 2 and 4; the step-5 failure must not have written anything after it
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if t.is_floating_point())
    # the run record says so, for the study report: diverged, after 4 good steps
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "diverged" and record["steps"] == 4
    assert "optimizer step 5" in record["error"]
    assert len((tmp_path / "train_curve.csv").read_text().splitlines()) == 1 + 4


def test_command_line_prints_one_line_and_exits_3(tmp_path: Path) -> None:
    args = [*DEBUG, f"paths.log_dir={tmp_path}", f"+callbacks.nan_injector._target_={INJECTOR}"]
    args.append("+callbacks.nan_injector.at_step=3")
    proc = subprocess.run(
        [sys.executable, "train.py", *args, f"run_id={tmp_path.name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("normlab: error:")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "optimizer step 3" in lines[0]
    assert "Traceback" not in proc.stderr


def test_healthy_run_is_not_stopped(make_cfg, tmp_path: Path) -> None:
    """The guard is on by default and a normal run trains to its last step; its run record holds
    the curve, the validations and the spike scores."""
    cfg = make_cfg("train", DEBUG)
    assert "divergence_guard" in cfg.callbacks
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 8 and math.isfinite(metrics["train/loss"])
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 8
    assert [v["step"] for v in record["val_history"]] == [2, 4, 6, 8]
    assert record["val"]["final"]["val/loss"] == pytest.approx(metrics["val/loss"])
    assert record["val"]["best"]["val/loss"] == min(v["val/loss"] for v in record["val_history"])
    assert set(record["spike_score"]) == {"train_loss", "grad_norm"}
    assert record["seconds_per_step"] > 0 and record["memory"]["host_peak_rss_mb"] > 100
    rows = (tmp_path / "train_curve.csv").read_text().splitlines()
    assert rows[0] == "step,loss,grad_norm,seconds"
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 9))
