"""Drive every step-dependent module of a task's network (BranchNorm's branch scale, the ProRes
residual warm-up) from the optimizer step, and log what they hold.

Why a callback and buffers: the schedules are functions of the optimizer step, which only the
Trainer knows, and they must survive checkpoints, FSDP and ``torch.compile``. So each such module
(:class:`normlab.progress.ProgressDriven`) keeps its state in buffers and this callback writes
``trainer.global_step`` into them:

- ``on_train_start``: after a resume, ``global_step`` and the restored buffers already agree;
  setting them again makes a run started from a weights-only or foreign checkpoint consistent too;
- ``on_train_batch_end``: after every batch. ``global_step`` counts optimizer steps, not
  micro-batches, so with ``accumulate_grad_batches=k`` the progress advances once per k batches
  and every micro-batch of one optimizer step sees the same value.

It logs each module's values as ``<prefix>/<key>`` at the batch that uses them (``norm/scale``,
``warmup/decoder/alpha_l1``, ...). Nobody wires it by hand: every normlab task returns it from
``configure_callbacks`` when its model has a schedule, so any Lightning Trainer that fits the task
drives it, and the task refuses a training step whose schedules were not set for it.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from normlab.progress import ProgressDriven, scheduled_modules


class ScheduleCallback(L.Callback):
    def __init__(self) -> None:
        self._found: tuple[int, list[ProgressDriven]] | None = None  # (id of the network, modules)

    def _modules(self, pl_module: L.LightningModule) -> list[ProgressDriven]:
        """The network's scheduled modules, found once per network (a 1,000-layer model has
        ~20,000 modules; walking them three times per step would cost more than the schedules)."""
        net = getattr(pl_module, "net", None)
        if net is None:
            return []
        if self._found is None or self._found[0] != id(net):
            self._found = (id(net), scheduled_modules(net))
        return self._found[1]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for module in self._modules(pl_module):
            module.set_progress(trainer.global_step)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for module in self._modules(pl_module):
            for key, value in module.schedule_values().items():
                pl_module.log(f"{module.schedule_prefix}/{key}", float(value), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for module in self._modules(pl_module):
            module.set_progress(trainer.global_step)
