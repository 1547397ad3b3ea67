"""The stability monitor measures what it says: per-block gradient norms, block-output RMS and
DeepNet's model update.

Checked against independent facts: a Post-LN block ends in a LayerNorm with unit weight and zero
bias at init, so every block output has RMS 1 on the first (pre-update) step; Pre-LN's residual
stream grows with depth instead; the per-block gradient norms equal a direct computation on the
same step; and the per-layer profiles land in ``<run dir>/stability.jsonl``. (The FSDP reduction
is checked against a single process in tests/distributed/test_fsdp.py.) The model update is 0 at
step 0 and equals ||F(x, theta_t) - F(x, theta_0)|| computed directly from the network on the probe
batch; the layer x step heatmaps reach TensorBoard as images, the weight histograms as histograms.
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
    """Runs after the monitor on the same hooks: per-block gradient norms computed plainly, and the
    probe outputs at every step (to recompute the model update independently)."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[float]] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        monitor = next(c for c in trainer.callbacks if isinstance(c, StabilityMonitor))
        pl_module.eval()
        h, z = pl_module.net.probe(monitor._probe["input_ids"])
        pl_module.train()
        self.outputs[trainer.global_step] = (h.clone(), z.clone())

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
    layered = [r for r in monitor.history if "decoder" in r]
    assert [r["step"] for r in layered] == [1, 3]  # every 2 steps, the first one included
    for record in layered:
        grads = record["decoder"]["grad_norm"]
        assert len(grads) == DEPTH and all(g > 0 for g in grads)
        assert grads == pytest.approx(direct.by_step[record["step"]], rel=1e-5)
    first = layered[0]["decoder"]["act_rms"]
    assert first == pytest.approx([1.0] * DEPTH, abs=1e-3)  # LN(weight 1, bias 0) output, per token
    lines = (run_dir / "stability.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == monitor.history


def test_pre_ln_residual_stream_grows_with_depth(make_cfg, tmp_path: Path) -> None:
    monitor, _, _ = _run(make_cfg, tmp_path, "preln")
    acts = next(r for r in monitor.history if "decoder" in r)["decoder"]["act_rms"]
    assert all(math.isfinite(a) for a in acts)
    assert all(b > a for a, b in zip(acts, acts[1:], strict=False)), acts


def test_model_update_is_zero_at_step_0_and_equals_a_direct_computation(make_cfg, tmp_path: Path) -> None:
    monitor, direct, run_dir = _run(make_cfg, tmp_path, "deepnorm")
    updates = {r["step"]: r["update"] for r in monitor.history if "update" in r}
    assert sorted(updates) == [0, 1, 2, 3]  # update_steps 0, 1, 2, 3 (5 is past max_steps=4)
    assert updates[0]["hidden_rms"] == 0.0 and updates[0]["logits_rms"] == 0.0
    h0, z0 = direct.outputs[0]
    for step in (1, 2, 3):
        h, z = direct.outputs[step]
        expected_h = float((h - h0).pow(2).mean().sqrt())
        expected_z = float((z - z0).pow(2).mean().sqrt())
        assert updates[step]["hidden_rms"] == pytest.approx(expected_h, rel=1e-5)
        assert updates[step]["logits_rms"] == pytest.approx(expected_z, rel=1e-5)
        assert updates[step]["hidden_rel"] == pytest.approx(
            expected_h / float(h0.pow(2).mean().sqrt()), rel=1e-5
        )
    assert 0 < updates[1]["hidden_rms"] < updates[3]["hidden_rms"]  # the model moves away from theta_0


def test_heatmaps_and_histograms_reach_tensorboard(make_cfg, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg("train", [*RUN, "model.norm=postln", "logger=tensorboard"], out_dir=tmp_path)
    train(cfg)
    (events,) = (tmp_path / "tensorboard").rglob("events.out.tfevents*")
    acc = EventAccumulator(str(events), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"stability/decoder/grad_norm_heatmap", "stability/decoder/act_rms_heatmap"} <= set(tags["images"])
    image = acc.Images("stability/decoder/grad_norm_heatmap")
    assert [i.step for i in image] == [1, 3] and image[-1].width > 200 and image[-1].height > 100
    assert any(t.startswith("weights/decoder/layer_0/") for t in tags["histograms"])
    assert any(t.startswith(f"weights/decoder/layer_{DEPTH - 1}/") for t in tags["histograms"])
    steps = [e.step for e in acc.Scalars("update/hidden_rms")]
    assert steps == [0, 1, 2, 3]  # logged exactly at the measured steps, not on Lightning's grid
    assert [e.step for e in acc.Scalars("stability/decoder/grad_norm_first")] == [1, 3]


def test_bad_interval_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every_n_steps"):
        StabilityMonitor(every_n_steps=0)


def test_measures_at_names_exactly_the_measuring_steps() -> None:
    """What benchmarks/overhead.py uses to leave measuring steps out of the steady-state cost: the
    update steps (0, 1, 2, 3, 5, 10, 20, 50, 100) and every every_n_steps-th step, nothing else."""
    from normlab.callbacks.stability import StabilityMonitor

    monitor = StabilityMonitor(every_n_steps=100, filename=None, images=False)
    measuring = [s for s in range(0, 401) if monitor.measures_at(s)]
    assert measuring == [0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 300, 400]
    every_7 = StabilityMonitor(every_n_steps=7, filename=None, update_steps=(0, 1), images=False)
    assert [s for s in range(0, 22) if every_7.measures_at(s)] == [0, 1, 7, 14, 21]
