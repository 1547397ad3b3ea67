"""Advance a norm strategy's training-progress state (e.g. BranchNorm's exponent) every step.

The progress lives in buffers of the strategy module, so it is saved in every checkpoint and a
resumed run continues where it stopped. The callback sets it from ``trainer.global_step``, which
counts optimizer steps (not micro-batches), so gradient accumulation is respected. It is added
automatically by the run when the chosen strategy has a schedule.
"""

from __future__ import annotations

from typing import Any

import lightning as L


class NormScheduleCallback(L.Callback):
    def _sync(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy = pl_module.norm_strategy
        if strategy is None:
            return
        strategy.set_progress(trainer.global_step)
        for key, value in strategy.schedule_values().items():
            pl_module.log(f"norm/{key}", float(value), on_step=True, on_epoch=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.norm_strategy.set_progress(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._sync(trainer, pl_module)
