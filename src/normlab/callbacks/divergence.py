"""Stop a run the moment it diverges, before the bad step reaches the weights or a checkpoint.

Why: at depth, a too-high learning rate or an unstable norm placement turns the loss into ``nan``
within a few steps, and Lightning would keep training (and, with ``should_stop``, even run one more
validation that overwrites ``last.ckpt`` with ``nan`` weights). This callback checks the global
gradient norm in ``on_before_optimizer_step``, i.e. after backward and before clipping and the
optimizer step, and raises :class:`~normlab.errors.TrainingDiverged` when it is not finite (a ``nan``
or ``inf`` loss always gives a non-finite gradient). Raising, rather than requesting a stop, means:

- the optimizer never applies the bad update, and no checkpoint is written after it, so
  ``last.ckpt`` and the best checkpoint stay the last good ones and remain resumable;
- the command line prints one line (``normlab: error: training diverged ...``) and exits with
  code 3 (see :func:`normlab.utils.one_line_errors`).

Under FSDP2 the norm is reduced over all shards (``full_tensor``), so every rank sees the same value
and all ranks raise at the same step. With gradient accumulation the check runs once per optimizer
step, which covers every micro-batch of it.

Config: ``callbacks/divergence_guard.yaml`` (on by default); ``~callbacks.divergence_guard`` turns it
off, e.g. to study how a strategy fails.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from normlab.errors import TrainingDiverged
from normlab.optimizer import global_grad_norm


class DivergenceGuard(L.Callback):
    """Raise :class:`TrainingDiverged` on the first optimizer step with a non-finite gradient norm."""

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        cached = getattr(pl_module, "step_grad_norm", None)  # normlab tasks compute it once per step
        total = cached() if cached is not None else global_grad_norm(pl_module)
        if total is None or math.isfinite(norm := float(total)):
            return
        step = trainer.global_step + 1  # the step that would have been taken
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise TrainingDiverged(
            f"training diverged: gradient norm is {norm} at optimizer step {step}; the step was not "
            f"applied and checkpoints were left untouched (last: {ckpt}); lower optim.lr, raise "
            "optim.warmup_steps or pick a depth-stable model.norm (e.g. deepnorm)"
        )
