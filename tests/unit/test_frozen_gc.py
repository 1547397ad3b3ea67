"""``compute.freeze_gc`` (``normlab.callbacks.frozen_gc``): the objects alive at train start are
frozen while a fit runs and released afterwards, also after a failed fit; it changes no loss; and
it leaves a freeze that someone else made alone."""

from __future__ import annotations

import gc
from pathlib import Path

import lightning as L
import pytest

from normlab.callbacks.frozen_gc import FrozenGarbageCollector
from normlab.run import train

STEPS = 3


class Probe(L.Callback):
    """What a training step sees: the frozen-object count at each batch and each step's loss."""

    frozen: list[int] = []
    losses: list[float] = []
    fail_at: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        Probe.frozen.append(gc.get_freeze_count())
        if Probe.fail_at == trainer.global_step:
            raise RuntimeError("probe: a failure inside training")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, *args) -> None:
        Probe.losses.append(float(outputs["loss"]))


@pytest.fixture(autouse=True)
def _fresh_probe():
    Probe.frozen, Probe.losses, Probe.fail_at = [], [], None
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()  # never leave a frozen heap to the next test, whatever happened


def _fit(make_cfg, tmp_path: Path, name: str, *extra: str) -> None:
    overrides = ["experiment=debug", f"trainer.max_steps={STEPS}", "test=false", "callbacks=none", "~logger"]
    overrides += ["trainer.limit_val_batches=0", "+callbacks.probe._target_=tests.unit.test_frozen_gc.Probe"]
    train(make_cfg("train", [*overrides, *extra], tmp_path / name))


def test_fit_runs_frozen_and_releases_after(make_cfg, tmp_path: Path) -> None:
    _fit(make_cfg, tmp_path, "on")
    assert len(Probe.frozen) == STEPS
    assert min(Probe.frozen) > 1000  # the model, Lightning and the rest of the process
    assert gc.get_freeze_count() == 0  # released at the end of the fit


def test_switched_off_nothing_is_frozen_and_the_losses_are_the_same(make_cfg, tmp_path: Path) -> None:
    _fit(make_cfg, tmp_path, "on")
    frozen_losses = list(Probe.losses)
    Probe.frozen, Probe.losses = [], []
    _fit(make_cfg, tmp_path, "off", "compute.freeze_gc=false")
    assert Probe.frozen == [0] * STEPS
    assert len(frozen_losses) == STEPS and Probe.losses == frozen_losses  # bit for bit


def test_a_failed_fit_releases_the_freeze(make_cfg, tmp_path: Path) -> None:
    Probe.fail_at = 1
    with pytest.raises(RuntimeError, match="probe: a failure inside training"):
        _fit(make_cfg, tmp_path, "failed")
    assert Probe.frozen[0] > 1000 and gc.get_freeze_count() == 0


def test_a_freeze_made_by_someone_else_is_left_to_them() -> None:
    gc.freeze()
    # (the count is not compared exactly: frozen objects that reference counting frees leave it)
    callback = FrozenGarbageCollector()
    callback.on_train_start(None, None)
    assert callback.frozen == 0 and gc.get_freeze_count() > 1000
    callback.on_train_end(None, None)
    assert gc.get_freeze_count() > 1000  # still frozen: the callback did not release their freeze


def test_garbage_made_during_training_is_still_collected() -> None:
    callback = FrozenGarbageCollector()
    callback.on_train_start(None, None)
    try:
        assert callback.frozen > 0
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # the new cycle is found: only what was alive at the freeze is skipped
    finally:
        callback.teardown(None, None, "fit")
    assert gc.get_freeze_count() == 0 and callback.frozen == 0
