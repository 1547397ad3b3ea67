"""Runs the profiling pass of modules measured on data before training (Admin's original init).

Why a callback: only the run has data, and the pass must happen after the model is built, sharded
and on its device but before anything else runs a forward (Lightning's sanity check, the stability
monitor's step-0 reference), which is ``on_fit_start``. Every rank profiles on the same batch (the
first training batch, taken on rank 0 and broadcast) in train mode, as the original profiles (its
dropout on, with the run's seed on every rank, so the masks agree), without gradients, eagerly
(compiled blocks would recompile for the pass), and inside a forked RNG, so training's random
stream is the one it would have been. Under FSDP2 the units are resharded before the measured
values are written, so they land in the sharded parameters. A module already profiled (loaded from
a checkpoint, or an encoder carried over by ``model.init_from``) is left as it is. Under a
strategy that restores checkpoints after setup (FSDP2), a resumed run profiles once more and then
the restored values replace the new ones.

The task adds this callback itself when its norm strategy can be profiled (``configure_callbacks``).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import nn

from normlab.callbacks.shared_batch import first_batch_on_every_rank
from normlab.errors import ConfigError
from normlab.profiling import profiled_modules

log = logging.getLogger("normlab")


def _reshard(net: nn.Module) -> None:
    """Free FSDP2's gathered parameters (also with ``reshard_after_forward=false``)."""
    from torch.distributed.fsdp import FSDPModule

    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class InitProfile(L.Callback):
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending = [m for m in profiled_modules(pl_module) if m.needs_profile()]
        if not pending:
            return
        loader = trainer.datamodule.train_dataloader if trainer.datamodule is not None else None
        batch = first_batch_on_every_rank(trainer.is_global_zero, loader, pl_module.device)
        if batch is None:
            raise ConfigError(
                f"{type(pending[0]).__name__}: its profiling pass needs a first training batch; fit with "
                "a LightningDataModule whose training split holds at least one batch"
            )

        def run_forward() -> None:
            pl_module.probe_outputs(batch)
            _reshard(pl_module)

        device = pl_module.device
        devices = []  # the CUDA generators to fork besides the CPU one
        if device.type == "cuda":
            devices = [device.index if device.index is not None else torch.cuda.current_device()]
        was_training = pl_module.training
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(int(pl_module.hparams.get("seed", 0)))
            pl_module.train()
            try:
                with torch.compiler.set_stance("force_eager"):
                    for module in pending:
                        module.profile(run_forward)
            finally:
                pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        for module in pending:
            for stack, values in module.profiled_values().items():
                log.info(
                    "%s: profiled on the first training batch, %s omega %.4g (first sublayer) ... %.4g "
                    "(last of %d)",
                    type(module).__name__,
                    stack,
                    values[0],
                    values[-1],
                    len(values),
                )
