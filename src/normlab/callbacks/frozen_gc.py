"""Keep Python's cyclic garbage collector from re-scanning the whole model on every full collection.

Why: a 1,000-layer network is about 650,000 Python objects (modules, their dicts, parameters), plus
Lightning's and Hydra's. None of them is garbage while training runs, but CPython's full (oldest
generation) collection traverses every tracked object each time it runs, and during training it runs
every few steps: measured in ``python train.py model.norm=deepnorm model.depth=1000`` on the CPU,
one full collection every ~6 steps at 0.34-0.46 s each (README, "What Lightning and the callbacks
cost"). ``gc.freeze()`` moves every object alive at that moment into a permanent generation that
the collector skips; reference counting still frees them as usual, and objects created afterwards
are collected as before. This changes no number a run computes, only where the collector spends time.

When: at ``on_train_start``, after Lightning has set up the model, the optimizer and the loops and
after one ``gc.collect()`` (so no garbage is frozen with them); released at ``on_train_end``, on an
exception and at teardown, so a process that fits several times (tests, sweeps in one process) does
not keep freezing more. If something else had already frozen objects, this leaves the freezing to
it and does nothing. Off with ``compute.freeze_gc=false``.
"""

from __future__ import annotations

import gc
from typing import Any

import lightning as L


class FrozenGarbageCollector(L.Callback):
    """``gc.freeze()`` for the duration of a fit (see the module docstring)."""

    def __init__(self) -> None:
        self.frozen = 0  # objects this callback froze (0: not frozen by it)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.frozen or gc.get_freeze_count():
            return  # frozen already, by this callback or by someone else: theirs to release
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()

    def _release(self) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._release()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: Any) -> None:
        self._release()
