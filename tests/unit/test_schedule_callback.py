"""Schedules through ``train(cfg)`` and through a bare Lightning Trainer, on real data: the task adds
the schedule driver itself (``configure_callbacks``); BranchNorm's ramp and the ProRes alphas
advance once per optimizer step (also under gradient accumulation) and are logged; a resumed run
continues them exactly where they stopped, from the checkpointed buffers; a schedule nobody
drives is an error, not a silent no-op."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from normlab.callbacks.run_record import RunRecord
from normlab.callbacks.schedule import ScheduleCallback
from normlab.errors import ConfigError
from normlab.run import train
from tests.task_helpers import bare_trainer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine the
    two threads' spin-waiting made these runs 10-40x slower (measured: 1.3 s vs 15-41 s CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


T = 10  # max_norm_step: s_t = t/10
COMMON = [
    "experiment=debug",
    "model.depth=2",
    "test=false",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "callbacks=none",
    "trainer.limit_val_batches=1",
    "data.seq_len=32",
    "data.batch_size=4",
]
BRANCHNORM = [*COMMON, "model.norm=branchnorm", f"++model.norm_args.max_norm_step={T}"]
# ProRes linear, T = 2: layer 1 warms up over 2 steps, layer 2 over 4
PRORES = [
    *COMMON,
    "model.norm=postln",
    "++model.residual_warmup.schedule=linear",
    "++model.residual_warmup.T=2",
]


def _logged(out_dir: Path, key: str, step_key: str) -> dict[int, float]:
    """optimizer step (the logged ``step_key``) -> value of ``key`` in the CSV metrics.

    Keyed by the logged progress rather than the logger's x-axis: after a mid-epoch resume
    Lightning's logger step lags the optimizer step by one, which is Lightning's bookkeeping.
    """
    path = max(out_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)  # a resume adds a version
    values = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                values[int(float(row[step_key]))] = float(row[key])
    return values


def _with_checkpoints(out_dir: Path) -> list[str]:
    return [
        "callbacks=default",
        "~callbacks.rich_progress_bar",
        f"callbacks.model_checkpoint.dirpath={out_dir / 'checkpoints'}",
    ]


def _run_and_resume(make_cfg, tmp_path: Path, base: list[str], check_first) -> tuple[Path, dict, dict]:
    """4 steps with checkpoints, ``check_first(run_dir)``, then a resume to step 7 from last.ckpt."""
    first_dir, resumed_dir = tmp_path / "first", tmp_path / "resumed"
    first = make_cfg(
        "train",
        base + _with_checkpoints(first_dir) + ["trainer.max_steps=4", "trainer.val_check_interval=4"],
        out_dir=first_dir,
    )
    _, a = train(first)
    check_first(first_dir)
    ckpt = first_dir / "checkpoints" / "last.ckpt"
    resumed = make_cfg(
        "train",
        base + [f"ckpt_path={ckpt}", "trainer.max_steps=7", "trainer.val_check_interval=7"],
        resumed_dir,
    )
    _, b = train(resumed)
    # the resumed run continues in the run folder of its checkpoint, not in a new one
    assert b["trainer"].default_root_dir == str(first_dir) and not (resumed_dir / "checkpoints").exists()
    return first_dir, a, b


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "state_dict"
    ]


def test_branchnorm_ramp_resumes_from_the_saved_value(make_cfg, tmp_path: Path) -> None:
    def first(run_dir: Path) -> None:
        assert _logged(run_dir, "norm/scale", "norm/progress") == pytest.approx(
            {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3}
        )
        state = _state(run_dir)
        assert int(state["net.norm_strategy.progress"]) == 4
        assert float(state["net.norm_strategy.scale"]) == pytest.approx(0.4)

    run_dir, a, b = _run_and_resume(make_cfg, tmp_path, BRANCHNORM, first)
    assert any(isinstance(c, ScheduleCallback) for c in a["trainer"].callbacks)
    strategy = b["task"].norm_strategy
    assert b["trainer"].global_step == 7
    assert (int(strategy.progress), float(strategy.scale)) == (7, pytest.approx(0.7))
    # the resumed run's first step uses s_4 = 0.4, not a restarted s_0 = 0
    assert _logged(run_dir, "norm/scale", "norm/progress") == pytest.approx({4: 0.4, 5: 0.5, 6: 0.6})


def test_prores_alphas_resume_from_the_saved_values(make_cfg, tmp_path: Path) -> None:
    def first(run_dir: Path) -> None:
        l1 = _logged(run_dir, "warmup/decoder/alpha_l1", "warmup/step")
        l2 = _logged(run_dir, "warmup/decoder/alpha_l2", "warmup/step")
        assert l1 == pytest.approx({0: 0.0, 1: 0.5, 2: 1.0, 3: 1.0})
        assert l2 == pytest.approx({0: 0.0, 1: 0.25, 2: 0.5, 3: 0.75})
        state = _state(run_dir)
        assert state["net.residual_warmup.alpha_decoder"].tolist() == [1.0, 1.0]
        assert int(state["net.residual_warmup.step"]) == 4

    run_dir, _, b = _run_and_resume(make_cfg, tmp_path, PRORES, first)
    assert _logged(run_dir, "warmup/decoder/alpha_l2", "warmup/step") == pytest.approx(
        {4: 1.0, 5: 1.0, 6: 1.0}
    )
    assert int(b["task"].net.residual_warmup.step) == 7


def test_gradient_accumulation_advances_once_per_optimizer_step(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        BRANCHNORM
        + ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=6"],
        out_dir=tmp_path,
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 3
    strategy = objects["task"].norm_strategy
    assert (int(strategy.progress), float(strategy.scale)) == (3, pytest.approx(0.3))
    assert _logged(tmp_path, "norm/scale", "norm/progress") == pytest.approx({0: 0.0, 1: 0.1, 2: 0.2})
    record = next(c for c in objects["trainer"].callbacks if isinstance(c, RunRecord))
    assert record.steps == [1, 2, 3]  # one row per optimizer step, not per micro-batch


def test_not_added_for_strategies_without_a_schedule(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        [*COMMON, "model.depth=1", "model.norm=preln", "~logger", "trainer.max_steps=1"]
        + ["trainer.val_check_interval=1", "data.seq_len=16", "data.batch_size=2"],
        out_dir=tmp_path,
    )
    _, objects = train(cfg)
    assert not any(isinstance(c, ScheduleCallback) for c in objects["trainer"].callbacks)
    assert any(isinstance(c, RunRecord) for c in objects["trainer"].callbacks)


def _bare_task_and_data(make_cfg, tmp_path: Path):
    """A task and datamodule built as a notebook would, without normlab.run."""
    from hydra.utils import instantiate

    from normlab.config import validate_model_config, validate_optim_config
    from normlab.tasks.lm import LanguageModelTask
    from normlab.typed_config import as_plain

    cfg = make_cfg("train", BRANCHNORM, out_dir=tmp_path)
    data = instantiate(cfg.data, _convert_="all")
    vocab = data.prepare_tokenizer().vocab_size
    model = as_plain(validate_model_config(cfg.model))
    task = LanguageModelTask(model=model, optim=as_plain(validate_optim_config(cfg.optim)), vocab_size=vocab)
    return task, data


def _bare_trainer(tmp_path: Path, steps: int) -> L.Trainer:
    return bare_trainer(tmp_path, max_steps=steps, limit_val_batches=0)


def test_a_bare_trainer_gets_the_schedule_from_the_task(make_cfg, tmp_path: Path) -> None:
    task, data = _bare_task_and_data(make_cfg, tmp_path)
    trainer = _bare_trainer(tmp_path, steps=3)
    trainer.fit(task, datamodule=data)
    assert any(isinstance(c, ScheduleCallback) for c in trainer.callbacks)
    assert (int(task.norm_strategy.progress), float(task.norm_strategy.scale)) == (3, pytest.approx(0.3))
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "train_curve.csv").exists()


def test_an_undriven_schedule_is_an_error(make_cfg, tmp_path: Path, monkeypatch) -> None:
    task, data = _bare_task_and_data(make_cfg, tmp_path)
    monkeypatch.setattr(task, "configure_callbacks", lambda: [])  # e.g. a subclass that drops it
    trainer = _bare_trainer(tmp_path, steps=2)
    with pytest.raises(
        ConfigError, match=r"BranchNorm: its schedule was set for step 0.*trainer is at step 1"
    ):
        trainer.fit(task, datamodule=data)
