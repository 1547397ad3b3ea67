"""Runs the profiling pass of modules measured on data before training (Admin's original init).

Why a callback: only the run has data, and the pass must happen after the model is built, sharded
and on its device but before anything else runs a forward (Lightning's sanity check, the stability
monitor's step-0 reference), which is ``on_fit_start``. Every rank profiles on the same batch (the
first training batch, taken on rank 0 and broadcast), in eval mode and without gradients, so the
result is the same everywhere and the training RNG is untouched. A module already profiled (loaded
from a checkpoint, or an encoder carried over by ``model.init_from``) is left as it is. Under a
strategy that restores checkpoints after setup (FSDP2), a resumed run profiles once more and then
the restored values replace the new ones.

The task adds this callback itself when its norm strategy can be profiled (``configure_callbacks``).
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from normlab.callbacks.shared_batch import first_batch_on_every_rank
from normlab.errors import ConfigError
from normlab.profiling import profiled_modules

log = logging.getLogger("normlab")


class InitProfile(L.Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = [m for m in profiled_modules(pl_module) if m.needs_profile()]
        if not pending:
            return
        loader = trainer.datamodule.train_dataloader if trainer.datamodule is not None else None
        batch = first_batch_on_every_rank(trainer.is_global_zero, loader, pl_module.device)
        if batch is None:
            raise ConfigError(
                f"{type(pending[0]).__name__}: its profiling pass needs the first training batch; fit "
                "with a LightningDataModule (trainer.fit(task, datamodule=...))"
            )
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for module in pending:
                    module.profile(lambda: pl_module.probe_outputs(batch))
        finally:
            pl_module.train(was_training)
        for module in pending:
            for stack, values in module.profiled_values().items():
                if trainer.is_global_zero and values:
                    log.info(
                        "%s: profiled on the first training batch, %s omega %.4g (first sublayer) ... %.4g "
                        "(last of %d)",
                        type(module).__name__,
                        stack,
                        values[0],
                        values[-1],
                        len(values),
                    )
