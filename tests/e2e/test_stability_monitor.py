"""The stability monitor measures what it says: per-block gradient norms and block-output RMS.

Checked against independent facts: a Post-LN block ends in a LayerNorm with unit weight and zero
bias at init, so every block output has RMS 1 on the first (pre-update) step; Pre-LN's residual
stream grows with depth instead; the per-block gradient norms equal a direct computation on the
same step; and the per-layer profiles land in ``<run dir>/stability.jsonl``. (The FSDP reduction
is checked against a single process in tests/distributed/test_fsdp.py.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from normlab.callbacks.stability import StabilityMonitor
from normlab.errors import ConfigError
from normlab.models.transformer import transformer_stacks
from normlab.run import train

pytestmark = pytest.mark.slow

DEPTH = 4
RUN = ["experiment=debug", f"model.depth={DEPTH}", "trainer.max_steps=4", "test=false"]
RUN += ["callbacks.stability_monitor.every_n_steps=2", "optim.warmup_steps=0"]


class DirectBlockNorms(L.Callback):
    """Runs after the monitor on the same hook: per-block gradient norms computed plainly."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        (stack,) = transformer_stacks(pl_module)
        self.by_step[trainer.global_step + 1] = [
            float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in b.parameters()])))
            for b in stack.layers
        ]


def _run(make_cfg, tmp_path: Path, norm: str) -> tuple[StabilityMonitor, DirectBlockNorms, Path]:
    cfg = make_cfg("train", [*RUN, f"model.norm={norm}"], out_dir=tmp_path / norm)
    with open_dict(cfg):
        cfg.callbacks.direct = {"_target_": "tests.e2e.test_stability_monitor.DirectBlockNorms"}
    _, objects = train(cfg)
    callbacks = objects["trainer"].callbacks
    monitor = next(c for c in callbacks if isinstance(c, StabilityMonitor))
    direct = next(c for c in callbacks if isinstance(c, DirectBlockNorms))
    return monitor, direct, tmp_path / norm


def test_profiles_match_direct_gradients_and_post_ln_unit_rms(make_cfg, tmp_path: Path) -> None:
    monitor, direct, run_dir = _run(make_cfg, tmp_path, "postln")
    assert [r["step"] for r in monitor.history] == [1, 3]  # every 2 steps, the first one included
    for record in monitor.history:
        grads = record["decoder"]["grad_norm"]
        assert len(grads) == DEPTH and all(g > 0 for g in grads)
        assert grads == pytest.approx(direct.by_step[record["step"]], rel=1e-5)
    first = monitor.history[0]["decoder"]["act_rms"]
    assert first == pytest.approx([1.0] * DEPTH, abs=1e-3)  # LN(weight 1, bias 0) output, per token
    lines = (run_dir / "stability.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == monitor.history


def test_pre_ln_residual_stream_grows_with_depth(make_cfg, tmp_path: Path) -> None:
    monitor, _, _ = _run(make_cfg, tmp_path, "preln")
    acts = monitor.history[0]["decoder"]["act_rms"]
    assert all(math.isfinite(a) for a in acts)
    assert all(b > a for a, b in zip(acts, acts[1:], strict=False)), acts


def test_bad_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every_n_steps"):
        StabilityMonitor(every_n_steps=0)
