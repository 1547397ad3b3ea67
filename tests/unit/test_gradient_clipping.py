"""Clipping by global norm reuses the step's gradient norm (computed once for the guard, the run
record, the log and the clip) and gives bit-identical training to Lightning's own clipping, which
computes the norm a second time: same weights after clipped steps, same pre-clip norm."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from normlab.tasks.lm import LanguageModelTask
from tests.task_helpers import VOCAB, fit_tiny_lm, flat_weights, random_lm_batches, tiny_lm_model


class LightningClipping(LanguageModelTask):
    """The task with Lightning's default clipping hook (norm recomputed by clip_grad_norm_)."""

    configure_gradient_clipping = L.LightningModule.configure_gradient_clipping


class NormRecorder(L.Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.norms.append(float(pl_module.step_grad_norm()))


def _fit(
    root: Path, task_class: type, clip: float | None, algorithm: str | None = None
) -> tuple[torch.Tensor, list]:
    recorder = NormRecorder()
    task = fit_tiny_lm(
        task_class,
        root,
        "deepnorm",
        random_lm_batches(6),
        [recorder],
        max_steps=6,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )
    return flat_weights(task), recorder.norms


@pytest.mark.parametrize("clip", [0.05, 1.0])
def test_clipping_with_the_cached_norm_equals_lightnings(tmp_path: Path, clip: float) -> None:
    ours, norms = _fit(tmp_path / "ours", LanguageModelTask, clip)
    theirs, their_norms = _fit(tmp_path / "lightning", LightningClipping, clip)
    assert torch.equal(ours, theirs) and norms == their_norms  # bit-identical
    if clip == 0.05:  # the norm is above the threshold, so clipping really acted
        assert min(norms) > clip
        unclipped, _ = _fit(tmp_path / "unclipped", LanguageModelTask, None)
        assert not torch.allclose(ours, unclipped, rtol=1e-4, atol=1e-5)


def test_value_clipping_takes_lightnings_path(tmp_path: Path) -> None:
    ours, _ = _fit(tmp_path / "ours", LanguageModelTask, 0.001, "value")
    theirs, _ = _fit(tmp_path / "lightning", LightningClipping, 0.001, "value")
    assert torch.equal(ours, theirs)


def test_the_parameter_list_is_built_once_per_fit() -> None:
    task = LanguageModelTask(model=tiny_lm_model("deepnorm"), optim={}, vocab_size=VOCAB, seed=0)
    task.configure_model()
    first = task.trainable_parameters()
    assert task.trainable_parameters() is first
    assert len(first) == len([p for p in task.parameters() if p.requires_grad])
    task.on_fit_start()
    assert task.trainable_parameters() is not first
