"""Config fuzzing: random override sets drawn from the config schema (wrong types, out-of-range
numbers, unknown keys and values, in every group) either run a 1-step training or fail with exit
code 2 and exactly one ``normlab: error:`` line, never a traceback.

300 cases run in-process through the CLI's own steps (``cli.prepare_argv`` -> compose ->
``cli.one_line_errors(train)``), seeded, each valid one training 1 step of a 1-layer model; 12 more
go through the real ``python train.py`` to check the process-level contract (exit code, stderr)."""

from __future__ import annotations

import dataclasses
import io
import random
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from normlab.cli import one_line_errors, prepare_argv
from normlab.config import ComputeConfig, ModelConfig, OptimConfig
from normlab.data.lm import LMDataConfig
from normlab.norms import registered_names
from normlab.run import train
from tests.conftest import CONFIG_DIR, ROOT

pytestmark = pytest.mark.slow

BASE = [
    "experiment=debug",
    "trainer.max_steps=1",
    "trainer.val_check_interval=1",
    "trainer.limit_val_batches=1",
    "test=false",
    "~logger",
    "~callbacks.rich_progress_bar",
    "model.depth=1",
    "data.seq_len=16",
    "data.batch_size=2",
]
BAD_VALUES = ["abc", "-3", "0", "1.5", "true", "null", "[1,2]", "1e9", "''", "{a: 1}"]
GROUP_OPTIONS = {
    "model": ["decoder", "encoder", "nope"],
    "optim": ["adamw", "sgd"],
    "trainer": ["cpu", "default", "gpu", "fsdp", "tpu"],
    "compute": ["default", "fast"],
    "data": ["tinyshakespeare", "mnist"],
    "task": ["lm", "mlm", "classify", "regression"],
    "experiment": ["debug", "no_such_exp"],
    "callbacks": ["default", "none", "some"],
}
SCHEMAS = {"model": ModelConfig, "optim": OptimConfig, "compute": ComputeConfig, "data": LMDataConfig}
OTHER_KEYS = [
    "trainer.precision",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.gradient_clip_val",
    "trainer.accumulate_grad_batches",
    "callbacks.stability_monitor.every_n_steps",
    "callbacks.model_checkpoint.every_n_train_steps",
    "callbacks.model_checkpoint.save_top_k",
    "seed",
]
VALID = {
    "model.norm": registered_names(),
    "model.activation": ["gelu", "relu", "swiglu"],
    "trainer.precision": ["32-true", "bf16-true", "16-mixed", "64"],
    "compute.activation_checkpointing": ["none", "full", "selective", "some"],
    "model.residual_warmup.schedule": ["linear", "equal", "fix-L", "cosine"],
    "model.residual_warmup.T": ["1", "10", "0"],
}


def _mutation(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        group = rng.choice(list(GROUP_OPTIONS))
        return f"{group}={rng.choice(GROUP_OPTIONS[group])}"
    if kind < 0.35:
        key = rng.choice(list(VALID))
        return f"{key}={rng.choice(VALID[key])}"
    if kind < 0.45:
        group = rng.choice(["model", "optim", "compute", "data", "trainer", "task"])
        return f"{group}.{rng.choice(['depht', 'lr_max', 'colour', 'x'])}={rng.choice(BAD_VALUES)}"
    if kind < 0.55:
        return f"{rng.choice(OTHER_KEYS)}={rng.choice(BAD_VALUES)}"
    if kind < 0.65:
        key = rng.choice(["alpha", "max_norm_step", "form", "k", "zzz"])
        return f"model.norm_args.{key}={rng.choice(BAD_VALUES)}"
    group = rng.choice(list(SCHEMAS))
    field = rng.choice(dataclasses.fields(SCHEMAS[group]))
    return f"{group}.{field.name}={rng.choice(BAD_VALUES)}"


def cases(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[_mutation(rng) for _ in range(rng.randint(1, 3))] for _ in range(n)]


def _in_process(argv: list[str], data_dir: Path, out_dir: Path) -> tuple[int, str]:
    """What train.py does, without the subprocess: (exit code, stderr)."""
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            argv = prepare_argv(argv, CONFIG_DIR, "train")
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                cfg = compose(config_name="train", overrides=argv)
            with open_dict(cfg):
                cfg.paths.data_dir, cfg.paths.output_dir = str(data_dir), str(out_dir)
            one_line_errors(train)(cfg)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        finally:
            GlobalHydra.instance().clear()
    return code, err.getvalue()


def _check(code: int, stderr: str, argv: list[str]) -> None:
    errors = [line for line in stderr.splitlines() if line.startswith("normlab: error:")]
    assert "Traceback" not in stderr, (argv, stderr[-2000:])
    if code == 0:
        assert not errors, (argv, errors)
    else:
        assert code in (2, 3), (argv, code, stderr[-2000:])
        assert len(errors) == 1, (argv, stderr[-2000:])


def test_random_overrides_run_or_fail_in_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a fuzzed relative path (data.data_dir=abc) lands here, not in the repo
    trained = refused = 0
    for i, mutations in enumerate(cases(300, seed=2026)):
        code, stderr = _in_process(BASE + mutations, data_dir, tmp_path / f"run{i}")
        _check(code, stderr, mutations)
        trained += code == 0
        refused += code != 0
    assert trained >= 5 and refused >= 150, (trained, refused)  # the draw exercises both outcomes


@pytest.mark.parametrize("mutations", cases(12, seed=7))
def test_the_real_command_line_keeps_the_contract(
    mutations: list[str], data_dir: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *BASE,
        *mutations,
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}",
    ]
    # run from tmp_path: a fuzzed relative path (data.data_dir=abc) must not land in the repository
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    _check(proc.returncode, proc.stderr, mutations)
    if proc.returncode == 2:  # a refused command leaves no run folder behind
        assert not [p for p in tmp_path.rglob("runs/*") if p.is_dir()], mutations
