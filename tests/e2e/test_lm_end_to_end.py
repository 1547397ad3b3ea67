"""End to end on real data: ``train(cfg)`` then ``evaluate(cfg)`` on Tiny Shakespeare.

Asserts the loss falls below the unigram baseline, the checkpoint alone reproduces the test
metrics, eval writes metrics.json, and resuming from last.ckpt continues identically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from normlab.run import evaluate, train

pytestmark = pytest.mark.slow

DEBUG = ["experiment=debug", "logger=tensorboard", "callbacks=default", "~callbacks.rich_progress_bar"]


def test_train_then_eval_from_checkpoint_alone(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        DEBUG + ["trainer.max_steps=150", "trainer.val_check_interval=50", "model.depth=2", "optim.lr=1e-2"],
        out_dir=tmp_path / "train",
    )
    metrics, objects = train(cfg)
    baseline = metrics["unigram_baseline"]
    assert math.log(512) > baseline > 3.0
    # the loss falls from ~log(V) to clearly below the unigram baseline
    assert metrics["val/loss"] < baseline - 0.1, metrics
    assert metrics["test/loss"] < baseline - 0.1, metrics
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-3)
    ckpt_dir = tmp_path / "train" / "checkpoints"
    assert (ckpt_dir / "last.ckpt").exists()
    assert list((tmp_path / "train" / "tensorboard").rglob("events.out.tfevents*"))
    record = json.loads((tmp_path / "train" / "metrics.json").read_text())  # fit and test in one record
    assert record["status"] == "finished" and record["steps"] == 150 and len(record["val_history"]) == 3
    assert record["test"]["test/loss"] == pytest.approx(metrics["test/loss"])

    best = objects["trainer"].checkpoint_callback.best_model_path
    eval_cfg = make_cfg(
        "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=4"], out_dir=tmp_path / "eval"
    )
    eval_metrics, _ = evaluate(eval_cfg)
    assert eval_metrics["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-4)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["metrics"]["test/ppl"] == pytest.approx(eval_metrics["test/ppl"])
    assert report["norm"]["norm"] == "preln"


def test_resume_from_last_checkpoint_continues_identically(make_cfg, tmp_path: Path) -> None:
    """Train 20 steps straight vs 10 steps + resume to 20: same weights at the end."""
    common = DEBUG + [
        "trainer.val_check_interval=10",
        "test=false",
        "model.norm=deepnorm",
        "optim.schedule=constant",
        "logger=csv",
    ]
    straight_cfg = make_cfg("train", common + ["trainer.max_steps=20"], out_dir=tmp_path / "a")
    _, straight = train(straight_cfg)
    first_cfg = make_cfg("train", common + ["trainer.max_steps=10"], out_dir=tmp_path / "b")
    train(first_cfg)
    # max_steps must equal the straight run's so the LR schedule is the same function of step
    resume_cfg = make_cfg(
        "train",
        common + ["trainer.max_steps=20", f"ckpt_path={tmp_path / 'b' / 'checkpoints' / 'last.ckpt'}"],
        out_dir=tmp_path / "c",
    )
    _, resumed = train(resume_cfg)
    assert resumed["trainer"].global_step == 20
    a = straight["task"].net.state_dict()
    b = resumed["task"].net.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
