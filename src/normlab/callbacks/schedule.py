"""Advance a norm strategy's training-progress state (e.g. BranchNorm's exponent a_t) every step.

Why a callback and a buffer: the schedule is a function of the optimizer step, which only the
Trainer knows, and it must survive checkpoints, FSDP and ``torch.compile``. So the strategy keeps
its progress in buffers (saved with the weights) and this callback writes
``trainer.global_step`` into them:

- ``on_train_start``: after a resume, ``global_step`` and the restored buffer already agree; setting
  it again makes a run started from a weights-only or foreign checkpoint consistent too;
- ``on_train_batch_end``: after every batch. ``global_step`` counts optimizer steps, not
  micro-batches, so with ``accumulate_grad_batches=k`` the progress advances once per k batches
  and every micro-batch of one optimizer step sees the same value.

It logs every scheduled value as ``norm/<key>`` (e.g. ``norm/exponent``) at the batch that uses
it, so TensorBoard shows the exponent next to ``train/loss``. :func:`normlab.run.train` adds it
automatically when ``strategy.has_schedule`` is true; nothing to wire by hand.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class NormScheduleCallback(L.Callback):
    def _strategy(self, pl_module: L.LightningModule) -> Any:
        return getattr(pl_module, "norm_strategy", None)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy = self._strategy(pl_module)
        if strategy is not None:
            strategy.set_progress(trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        strategy = self._strategy(pl_module)
        if strategy is None:
            return
        for key, value in strategy.schedule_values().items():
            pl_module.log(f"norm/{key}", float(value), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        strategy = self._strategy(pl_module)
        if strategy is not None:
            strategy.set_progress(trainer.global_step)
