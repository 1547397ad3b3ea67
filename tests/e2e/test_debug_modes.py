"""``debug=fast`` runs end to end (it drops the logger, so logger-bound callbacks must go too)."""

from __future__ import annotations

import math

import pytest

from normlab.run import train

pytestmark = pytest.mark.slow


def test_debug_fast_trains_validates_and_tests_without_a_logger(make_cfg) -> None:
    cfg = make_cfg("train", ["debug=fast"])
    assert cfg.logger is None
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 5
    assert math.isfinite(metrics["test/loss"]) and math.isfinite(metrics["val/loss"])
