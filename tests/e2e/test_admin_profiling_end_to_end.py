"""Admin with the original profiling init, end to end on Tiny Shakespeare through ``train(cfg)``:
omega is profiled once on the first training batch (logged), trains below the unigram baseline,
is saved in the checkpoint, reproduces the test loss in eval.py, and a resumed run does not profile
again and ends with the straight run's weights."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from normlab.norms.admin import ProfiledOmegaResidual
from normlab.run import evaluate, train

pytestmark = pytest.mark.slow

COMMON = [
    "experiment=debug",
    "logger=csv",
    "model.norm=admin",
    "++model.norm_args.output_change_scale=profiling",
    "trainer.val_check_interval=10",
    "optim.schedule=constant",
    "optim.lr=1e-2",
]
PROFILED = "Admin: profiled on the first training batch"


def _omegas(task) -> list[float]:
    return [float(m.omega) for m in task.net.modules() if isinstance(m, ProfiledOmegaResidual)]


def test_profiled_once_trained_saved_evaluated_and_resumed(make_cfg, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="normlab")
    straight_cfg = make_cfg("train", [*COMMON, "trainer.max_steps=60"], out_dir=tmp_path / "a")
    metrics, straight = train(straight_cfg)
    assert sum(PROFILED in r.getMessage() for r in caplog.records) == 1
    omegas = _omegas(straight["task"])
    assert omegas[0] == 1.0 and all(w > 1.0 for w in omegas[1:])
    assert metrics["test/loss"] < metrics["unigram_baseline"], metrics

    best = straight["trainer"].checkpoint_callback.best_model_path
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    saved = [v for k, v in state.items() if k.endswith("_residual.profiled")]
    assert saved and all(bool(v) for v in saved)
    eval_cfg = make_cfg(
        "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=4"], out_dir=tmp_path / "eval"
    )
    eval_metrics, _ = evaluate(eval_cfg)
    assert eval_metrics["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-4)

    make_cfg_b = make_cfg("train", [*COMMON, "trainer.max_steps=30", "test=false"], out_dir=tmp_path / "b")
    train(make_cfg_b)
    caplog.clear()
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    resume_cfg = make_cfg(
        "train", [*COMMON, "trainer.max_steps=60", "test=false", f"ckpt_path={last}"], out_dir=tmp_path / "c"
    )
    _, resumed = train(resume_cfg)
    assert not any(PROFILED in r.getMessage() for r in caplog.records)  # restored, not profiled again
    assert _omegas(resumed["task"]) == omegas
    a, b = straight["task"].net.state_dict(), resumed["task"].net.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=1e-5)
