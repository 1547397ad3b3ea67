"""The norm-schedule callback through ``train(cfg)`` on real data (norms.md §3, issue point 3):
added automatically for a scheduled strategy; the exponent advances once per optimizer step
(also under gradient accumulation) and is logged; a run resumed from a checkpoint continues the
schedule exactly where it stopped, and the checkpoint itself holds the progress buffer."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from normlab.callbacks.schedule import NormScheduleCallback
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


T = 10  # max_norm_step: a_t = 1 - t/10
BASE = [
    "experiment=debug",
    "model.depth=2",
    "model.norm=branchnorm",
    f"++model.norm_args.max_norm_step={T}",
    "test=false",
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "callbacks=none",
    "trainer.limit_val_batches=1",
    "data.seq_len=32",
    "data.batch_size=4",
]


def _logged(out_dir: Path, key: str) -> dict[int, float]:
    """optimizer step (the logged ``norm/progress``) -> value of ``key`` in the CSV metrics.

    Keyed by the logged progress rather than the logger's x-axis: after a mid-epoch resume
    Lightning's logger step lags the optimizer step by one, which is Lightning's bookkeeping.
    """
    (path,) = out_dir.rglob("metrics.csv")
    values = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row.get(key):
                values[int(float(row["norm/progress"]))] = float(row[key])
    return values


def _with_checkpoints(out_dir: Path) -> list[str]:
    return [
        "callbacks=default",
        "~callbacks.rich_progress_bar",
        "~callbacks.lr_monitor",
        f"callbacks.model_checkpoint.dirpath={out_dir / 'checkpoints'}",
    ]


def test_resume_continues_the_exponent_from_the_saved_value(make_cfg, tmp_path: Path) -> None:
    first_dir, resumed_dir = tmp_path / "first", tmp_path / "resumed"
    first = make_cfg(
        "train",
        BASE + _with_checkpoints(first_dir) + ["trainer.max_steps=4", "trainer.val_check_interval=4"],
        out_dir=first_dir,
    )
    _, objects = train(first)
    assert any(isinstance(c, NormScheduleCallback) for c in objects["trainer"].callbacks)
    strategy = objects["task"].norm_strategy
    assert (int(strategy.progress), float(strategy.exponent)) == (4, pytest.approx(0.6))
    assert _logged(first_dir, "norm/exponent") == pytest.approx({0: 1.0, 1: 0.9, 2: 0.8, 3: 0.7})

    ckpt = first_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert int(state["net.norm_strategy.progress"]) == 4
    assert float(state["net.norm_strategy.exponent"]) == pytest.approx(0.6)

    resumed = make_cfg(
        "train",
        BASE + [f"ckpt_path={ckpt}", "trainer.max_steps=7", "trainer.val_check_interval=7"],
        out_dir=resumed_dir,
    )
    _, objects = train(resumed)
    assert objects["trainer"].global_step == 7
    strategy = objects["task"].norm_strategy
    assert (int(strategy.progress), float(strategy.exponent)) == (7, pytest.approx(0.3))
    # the resumed run's first step uses a_4 = 0.6, not a restarted a_0 = 1
    assert _logged(resumed_dir, "norm/exponent") == pytest.approx({4: 0.6, 5: 0.5, 6: 0.4})


def test_gradient_accumulation_advances_once_per_optimizer_step(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        BASE + ["trainer.max_steps=3", "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=6"],
        out_dir=tmp_path,
    )
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 3
    strategy = objects["task"].norm_strategy
    assert (int(strategy.progress), float(strategy.exponent)) == (3, pytest.approx(0.7))
    assert _logged(tmp_path, "norm/exponent") == pytest.approx({0: 1.0, 1: 0.9, 2: 0.8})


def test_not_added_for_strategies_without_a_schedule(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg(
        "train",
        [
            "experiment=debug",
            "model.depth=1",
            "model.norm=preln",
            "test=false",
            "~logger",
            "callbacks=none",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=1",
            "trainer.val_check_interval=1",
            "data.seq_len=16",
            "data.batch_size=2",
        ],
        out_dir=tmp_path,
    )
    _, objects = train(cfg)
    assert not any(isinstance(c, NormScheduleCallback) for c in objects["trainer"].callbacks)
