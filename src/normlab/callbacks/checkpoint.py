"""Checkpoints whose "best" is decided only on a fresh validation, and a ``last.ckpt`` on a schedule.

Lightning's ``ModelCheckpoint`` with ``every_n_train_steps`` compares the monitored metric at every
save, and between validations that metric is the value of the *previous* validation: with
checkpoints every 50 steps and validation every 100, "best" could be a step-250 checkpoint scored with
the step-200 loss (measured: an interrupted-and-resumed run and an uninterrupted one tested different
"best" files, neither the real best). Here:

- the best-k checkpoints are saved and ranked only in ``on_validation_end``, with the metric that
  validation just computed;
- ``last.ckpt`` is written at every validation and, with ``every_n_train_steps: N``, also every N
  optimizer steps in between (what a resume after a crash starts from); those periodic saves never
  touch the best-k ranking.

Config: ``callbacks/model_checkpoint.yaml`` (``every_n_train_steps`` is the checkpoint frequency).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from normlab.errors import ConfigError


class RunCheckpoint(ModelCheckpoint):
    def __init__(self, every_n_train_steps: int = 0, **kwargs: Any) -> None:
        n = every_n_train_steps
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(
                f"callbacks.model_checkpoint.every_n_train_steps: must be an integer >= 0 (0: only at "
                f"validations), got {every_n_train_steps!r}"
            )
        if "every_n_epochs" in kwargs or "train_time_interval" in kwargs:
            raise ConfigError(
                "callbacks.model_checkpoint: every_n_epochs / train_time_interval are not used; best "
                "checkpoints follow trainer.val_check_interval, last.ckpt every_n_train_steps"
            )
        super().__init__(every_n_train_steps=0, every_n_epochs=1, **kwargs)
        self.last_every = every_n_train_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.last_every or step % self.last_every or self._should_skip_saving_checkpoint(trainer):
            return
        saved = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # a validation at this same step must still rank its (fresh) metric and save best-k
        self._last_global_step_saved = saved
