"""Every registered norm strategy trains a 48-layer decoder on real Tiny Shakespeare for a few
steps through ``train(cfg)`` with a finite loss, and the headline command
``python train.py model.norm=branchnorm model.depth=1000`` runs with no strategy argument.

Kept cheap on purpose (d_model 32, seq 32, batch 4, 3 steps, BPE vocab 512): this guards that
every strategy builds, initialises, trains and validates at depth; whether it *learns* at depth
is what ``benchmarks/stability.py`` measures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normlab.norms import registered_names
from normlab.progress import ProgressDriven
from normlab.run import train

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine the
    two threads' spin-waiting made these runs 10-40x slower (measured: 1.3 s vs 15-41 s CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ROOT = Path(__file__).resolve().parents[2]
DEEP = [
    "experiment=debug",
    "model.depth=48",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ffn=64",
    "data.seq_len=32",
    "data.batch_size=4",
    "data.tokenizer.vocab_size=512",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=1",
    "optim.warmup_steps=0",
    "test=false",
    "~logger",
    "callbacks=none",
]


@pytest.mark.parametrize("norm", registered_names())
def test_every_strategy_trains_a_48_layer_decoder(norm: str, make_cfg, tmp_path: Path) -> None:
    metrics, objects = train(make_cfg("train", DEEP + [f"model.norm={norm}"], out_dir=tmp_path))
    assert objects["trainer"].global_step == 3
    net = objects["task"].net
    assert len(net.decoder.layers) == 48
    for key in ("train/loss", "val/loss"):
        assert math.isfinite(metrics[key]), (norm, key, metrics)
        assert metrics[key] < 2 * math.log(512), (norm, key, metrics)  # not blown up
    assert all(torch.isfinite(p).all() for p in net.parameters()), norm
    strategy = objects["task"].norm_strategy
    if isinstance(strategy, ProgressDriven):  # advanced by the callback the task adds
        assert strategy.schedule_values()["progress"] == 3.0


def test_headline_command_branchnorm_depth_1000(data_dir: Path, tmp_path: Path) -> None:
    """``python train.py model.norm=branchnorm model.depth=1000``: no strategy argument needed
    (max_norm_step has a documented default); only width/steps are shrunk for the test."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "model.norm=branchnorm",
        "model.depth=1000",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_ffn=32",
        "data.seq_len=16",
        "data.batch_size=2",
        "data.tokenizer.vocab_size=512",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu",
        "test=false",
        "~logger",
        "callbacks=none",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "norm strategy: branchnorm  (arch=decoder, N=0, M=1000)" in result.stdout
    assert "T=20000 steps (20 x layers, the default)" in result.stdout
    assert "form=ramp" in result.stdout and "scale=0.000000" in result.stdout
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 3
    assert math.isfinite(record["final_train_loss"]) and math.isfinite(record["val"]["final"]["val/loss"])
