"""The task frees the gradients right after the optimizer step (normlab.tasks.base.optimizer_step),
not after the next forward as Lightning's closure does: the trained weights are bit-identical to
Lightning's order, with and without gradient accumulation, and the gradients are there when
on_before_optimizer_step reads them and gone by on_train_batch_end."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from normlab.tasks.lm import LanguageModelTask
from tests.task_helpers import fit_tiny_lm, flat_weights, random_lm_batches


class LightningOrder(LanguageModelTask):
    """The task with Lightning's own optimizer_step: the gradients live on until the next forward."""

    optimizer_step = L.LightningModule.optimizer_step


class GradientWatcher(L.Callback):
    def __init__(self) -> None:
        self.before_step: list[bool] = []  # every trainable parameter has a gradient
        self.after_batch: list[bool] = []  # no parameter has one

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before_step.append(all(p.grad is not None for p in pl_module.trainable_parameters()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_batch.append(all(p.grad is None for p in pl_module.parameters()))


def _fit(task_class: type, accumulate: int, tmp_path) -> tuple[torch.Tensor, GradientWatcher]:
    watcher = GradientWatcher()
    task = fit_tiny_lm(
        task_class,
        tmp_path,
        "preln",
        random_lm_batches(8),
        [watcher],
        max_steps=8 // accumulate,
        accumulate_grad_batches=accumulate,
    )
    return flat_weights(task), watcher


@pytest.mark.parametrize("accumulate", [1, 2])
def test_freeing_gradients_after_the_step_trains_bit_identically(accumulate: int, tmp_path) -> None:
    weights, watcher = _fit(LanguageModelTask, accumulate, tmp_path / "normlab")
    reference, reference_watcher = _fit(LightningOrder, accumulate, tmp_path / "lightning")
    assert torch.equal(weights, reference)
    assert watcher.before_step == [True] * (8 // accumulate)
    # freed after every optimizer step; with accumulation the window's first batch keeps its gradients
    assert watcher.after_batch == [(i + 1) % accumulate == 0 for i in range(8)]
    assert not any(reference_watcher.after_batch)  # Lightning's order keeps them until the next forward
