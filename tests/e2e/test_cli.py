"""The command line as a user types it: ``train.py``, ``eval.py`` and ``python -m normlab.describe``.

Bad input must end in one line on stderr that names the problem and the fix, and a non-zero exit;
the describe CLI must print the resolved constants that the paper gives. (Every bad-value case
is covered in-process by tests/unit/test_config.py; here two of them go through the real CLI, since
each subprocess pays the torch + Lightning import.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.norms.deepnorm import deepnorm_constants
from normlab.norms.registry import registered_names
from tests.conftest import ROOT

TIMEOUT = 240


def run(args: list[str], tmp_path: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, NORMLAB_RUN_ID=tmp_path.name, HYDRA_FULL_ERROR="0")
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("normlab: error:")]


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("model.norm=nosuchnorm", ["model.norm", "nosuchnorm", *registered_names()]),
        ("model.d_model=65", ["model.d_model", "n_heads"]),
    ],
)
def test_train_bad_model_input_is_one_line_and_exit_2(
    override: str, names: list[str], tmp_path: Path
) -> None:
    proc = run(["train.py", override, f"paths.log_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stderr[-2000:]
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in proc.stderr


def test_eval_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    proc = run(["eval.py", f"ckpt_path={tmp_path / 'missing.ckpt'}", f"paths.log_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "missing.ckpt does not exist" in line and "last.ckpt" in line


def test_describe_prints_deepnorm_constants_for_1000_layers() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "normlab.describe", "--json", "model.norm=deepnorm", "model.depth=1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    alpha, beta = deepnorm_constants("decoder", "decoder", 0, 1000)
    assert described["decoder"]["alpha"] == pytest.approx((2 * 1000) ** 0.25)
    assert described["decoder"]["beta"] == pytest.approx((8 * 1000) ** -0.25)
    assert (described["decoder"]["alpha"], described["decoder"]["beta"]) == pytest.approx((alpha, beta))
    assert described["decoder"]["final_norm"] is False


def test_describe_list_names_every_strategy() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "normlab.describe", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) >= set(registered_names())


@pytest.mark.slow
def test_depth_1000_deepnorm_from_the_command_line(tmp_path: Path) -> None:
    """The headline command, cut to 3 optimizer steps: finite loss, a checkpoint, constants printed."""
    proc = run(
        [
            "train.py",
            "model.norm=deepnorm",
            "model.depth=1000",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.limit_val_batches=1",
            "test=false",
            "trainer.log_every_n_steps=1",
            "data.seq_len=32",
            "data.batch_size=4",
            "callbacks.rich_progress_bar=null",
            "logger=csv",
            f"paths.log_dir={tmp_path}",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "alpha=" in proc.stdout and "M=1000" in proc.stdout
    run_dir = tmp_path / "train" / "runs" / tmp_path.name
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    metrics = (next(run_dir.rglob("metrics.csv"))).read_text().splitlines()
    header = metrics[0].split(",")
    losses = [
        float(row.split(",")[header.index("train/loss")])
        for row in metrics[1:]
        if row.split(",")[header.index("train/loss")]
    ]
    assert losses and all(loss == loss and loss < 20 for loss in losses)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["train.py", "--help"], "== Configuration groups =="),
        (["eval.py", "--help"], "== Configuration groups =="),
        (["-m", "normlab.describe", "--help"], "Print a model's resolved constants"),
        (["-m", "normlab.report", "--help"], "usage: python -m normlab.report"),
    ],
)
def test_help_works_for_every_entry_point(args: list[str], expect: str) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and expect in proc.stdout, proc.stderr[-1000:]


def test_cfg_job_prints_the_config_with_the_documented_open_node_overrides(tmp_path: Path) -> None:
    """``--cfg job`` accepts ``model.norm_args.<key>=`` and ``model.residual_warmup.<key>=`` without
    Hydra's ``++``, as training does, and runs nothing (no run folder)."""
    args = ["train.py", "--cfg", "job", "model.norm=branchnorm", "model.norm_args.max_norm_step=1000"]
    args += ["model.residual_warmup.schedule=linear", f"paths.log_dir={tmp_path}"]
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "max_norm_step: 1000" in proc.stdout and "schedule: linear" in proc.stdout
    assert not any(tmp_path.iterdir())


def test_train_log_has_the_constants_and_progress_lines(tmp_path: Path) -> None:
    """The job log carries the start-of-run constants and a progress line every 50 steps."""
    args = ["train.py", "experiment=debug", "trainer.max_steps=60", "test=false", f"paths.log_dir={tmp_path}"]
    args.append("run_id=log")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "debug" / "runs" / "log" / "train.log").read_text()
    assert "norm strategy: preln  (arch=decoder, N=0, M=2)" in text and "decoder: final_norm=True" in text
    progress = [line for line in text.splitlines() if "] - step 50/60  loss " in line]
    assert len(progress) == 1 and " s/step" in progress[0] and "lr " in progress[0]
    assert "spike score" in text
