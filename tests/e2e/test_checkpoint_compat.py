"""Checkpoints are data: older checkpoints still evaluate to the numbers they gave when written,
anything else is refused in one line, and nothing in a checkpoint ever runs.

The fixtures in tests/fixtures/pre_format2/ were written by normlab at commit 5e15f84 (before the
checkpoint ``format`` field, when BranchNorm had only its variance-exponent form): a 2-layer
Pre-LN and a 2-layer BranchNorm decoder (d_model 16) trained 4 steps on Tiny Shakespeare. Their
test losses (3 batches) were measured with that commit's eval.py."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from normlab.checkpoints import read_checkpoint_meta
from normlab.errors import ConfigError
from normlab.run import evaluate
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

FIXTURES = ROOT / "tests" / "fixtures" / "pre_format2"
# test/loss of each fixture over 3 test batches, printed by eval.py at commit 5e15f84
OLD_TEST_LOSS = {"preln": 6.147117614746094, "branchnorm": 6.136289119720459}


@pytest.mark.parametrize("norm", sorted(OLD_TEST_LOSS))
def test_pre_format_2_checkpoints_evaluate_to_their_old_numbers(make_cfg, tmp_path: Path, norm: str) -> None:
    ckpt = FIXTURES / f"{norm}_last.ckpt"
    cfg = make_cfg("eval", [f"ckpt_path={ckpt}", "trainer.limit_test_batches=3"], out_dir=tmp_path)
    metrics, objects = evaluate(cfg)
    assert metrics["test/loss"] == pytest.approx(OLD_TEST_LOSS[norm], abs=1e-5)
    if norm == "branchnorm":  # migrated to the form and T it was trained with
        args = objects["task"].norm_strategy.args
        assert (args.form, args.max_norm_step) == ("standardize", 4000)


class _Payload:
    """What a hostile checkpoint would carry: unpickling it would run code."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/normlab-pwned",))


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = Path("/tmp/normlab-pwned")
    marker.unlink(missing_ok=True)
    state = torch.load(FIXTURES / "preln_last.ckpt", weights_only=True)
    state["hyper_parameters"]["data"] = _Payload()
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    with pytest.raises(ConfigError, match=r"holds a posix\.system object, which is code, not data") as info:
        read_checkpoint_meta(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    assert not marker.exists()


def random_bytes(seed: int, n: int = 100) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


def test_random_bytes_always_end_in_one_line_and_no_warning(tmp_path: Path) -> None:
    """600 seeded random files: about 6 in 100 used to escape as IndexError / KeyError from the legacy
    unpickler (with a "Detected pickle protocol" warning line before it)."""
    path = tmp_path / "random.ckpt"
    reasons = set()
    for seed in range(600):
        path.write_bytes(random_bytes(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConfigError) as info:
                read_checkpoint_meta(path)
        message = str(info.value)
        assert message.startswith("ckpt_path: ") and "\n" not in message, (seed, message)
        reasons.add(message.rsplit("(", 1)[-1])
    assert any("neither a torch zip archive nor a pickle" in r for r in reasons)


def _corrupt(kind: str, tmp_path: Path) -> Path:
    good = (FIXTURES / "preln_last.ckpt").read_bytes()
    path = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random":  # seed 15: bytes on which the legacy unpickler fails with an IndexError
        path.write_bytes(random_bytes(15))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "pickle_list":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "directory", "pickle_list"])
def test_bad_checkpoint_files_end_in_one_line(tmp_path: Path, kind: str) -> None:
    path = _corrupt(kind, tmp_path)
    with pytest.raises(ConfigError) as info:
        read_checkpoint_meta(path)
    message = str(info.value)
    assert message.startswith("ckpt_path: ") and str(path) in message and "\n" not in message


@pytest.mark.parametrize("entry", ["eval.py", "train.py"])
@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_the_command_line_prints_one_line_and_exits_2(tmp_path: Path, entry: str, kind: str) -> None:
    path = _corrupt(kind, tmp_path)
    before = path.read_bytes()
    args = [sys.executable, entry, f"ckpt_path={path}", f"paths.log_dir={tmp_path / 'logs'}"]
    if entry == "train.py":
        args += ["experiment=debug", "trainer.max_steps=1"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normlab: error: ckpt_path: "), proc.stderr[-2000:]
    assert path.read_bytes() == before  # nothing overwritten
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


def test_a_checkpoint_of_another_task_family_is_refused(make_cfg, tmp_path: Path) -> None:
    """The LM fixture given to the translation task: one line naming both."""
    from normlab.run import train

    cfg = make_cfg(
        "train",
        ["experiment=mt_multi30k", f"ckpt_path={FIXTURES / 'preln_last.ckpt'}", "trainer.max_steps=1"],
        out_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match=r"was written by LanguageModelTask, not TranslationTask"):
        train(cfg)


def test_fixtures_stay_small() -> None:
    sizes = [p.stat().st_size for p in FIXTURES.glob("*.ckpt")]
    assert len(sizes) == 2 and max(sizes) < 300_000
