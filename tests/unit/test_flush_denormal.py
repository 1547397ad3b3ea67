"""``flush_denormal`` (train.yaml / eval.yaml) reaches torch: subnormal floats compute as zero.

Deep Post-LN backward passes underflow into subnormals, which x86 CPUs process tens of times slower
(benchmarks/step_time.py --keep-denormals shows the difference at depth 1000).
"""

from __future__ import annotations

import pytest
import torch

from normlab.run import set_flush_denormal, train

SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


@pytest.fixture(autouse=True)
def _restore():
    yield
    torch.set_flush_denormal(False)


def _survives() -> bool:
    return bool((torch.tensor([SUBNORMAL]) * 1.0).item() != 0.0)


def test_set_flush_denormal_switches_torch() -> None:
    set_flush_denormal(False)
    assert _survives()
    set_flush_denormal(True)
    assert not _survives()


@pytest.mark.parametrize(("flag", "survives"), [("true", False), ("false", True)])
def test_train_applies_the_config_flag(make_cfg, flag: str, survives: bool) -> None:
    cfg = make_cfg(
        "train", ["experiment=debug", "trainer.max_steps=2", "test=false", f"flush_denormal={flag}"]
    )
    assert make_cfg("train", ["experiment=debug"]).flush_denormal is True  # the default
    train(cfg)
    assert _survives() is survives
