"""``compute`` settings reach torch: ``flush_denormal`` (subnormal floats compute as zero) and
``threads`` (intra-op threads).

Deep Post-LN backward passes underflow into subnormals, which x86 CPUs process tens of times slower
(benchmarks/step_time.py --keep-denormals shows the difference at depth 1000).
"""

from __future__ import annotations

import pytest
import torch

from normlab.config import ComputeConfig
from normlab.run import apply_compute, train

SUBNORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


@pytest.fixture(autouse=True)
def _restore():
    threads = torch.get_num_threads()
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def _survives() -> bool:
    return bool((torch.tensor([SUBNORMAL]) * 1.0).item() != 0.0)


def test_apply_compute_switches_torch() -> None:
    apply_compute(ComputeConfig(flush_denormal=False))
    assert _survives()
    apply_compute(ComputeConfig(flush_denormal=True, threads=1))
    assert not _survives() and torch.get_num_threads() == 1


@pytest.mark.parametrize(("flag", "survives"), [("true", False), ("false", True)])
def test_train_applies_the_config_flag(make_cfg, flag: str, survives: bool) -> None:
    cfg = make_cfg(
        "train",
        ["experiment=debug", "trainer.max_steps=2", "test=false", f"compute.flush_denormal={flag}"]
        + ["compute.threads=1"],
    )
    assert make_cfg("train", ["experiment=debug"]).compute.flush_denormal is True  # the default
    assert make_cfg("train", ["experiment=debug"]).compute.threads is None  # all cores
    train(cfg)
    assert _survives() is survives
    assert torch.get_num_threads() == 1
