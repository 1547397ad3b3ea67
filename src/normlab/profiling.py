"""Modules whose constants are measured on data before training: Admin's profiling initialisation.

The original Admin (Liu et al. 2020) sets each sublayer's shortcut weight omega from the output
variances of a forward pass over one training batch. Only the run has the data, so such a module
(:class:`ProfiledAtStart`) exposes :meth:`ProfiledAtStart.profile`, which
:class:`normlab.callbacks.init_profile.InitProfile` calls once at the start of a fit with the
network's forward on the first training batch. What it measures lives in buffers, so every
checkpoint holds it and a resumed or evaluated model never profiles again.

The contract fails loudly: a profiled module refuses to run a forward pass before it was profiled
(or loaded from a checkpoint that was), so an unprofiled model can never silently compute with its
placeholder constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn


class ProfiledAtStart:
    """Mixin for ``nn.Module`` subclasses with constants measured by one forward pass on data.

    Subclasses implement :meth:`needs_profile` and :meth:`profile`; :meth:`profiled_values` says
    what was measured, for the log.
    """

    def needs_profile(self) -> bool:
        raise NotImplementedError

    def profile(self, run_forward: Callable[[], Any]) -> None:
        """Measure: ``run_forward()`` runs the whole network once on the profiling batch."""
        raise NotImplementedError

    def profiled_values(self) -> dict[str, list[float]]:
        return {}


def profiled_modules(net: nn.Module) -> list[ProfiledAtStart]:
    """Every module of ``net`` measured on data at the start of training."""
    return [m for m in net.modules() if isinstance(m, ProfiledAtStart)]
