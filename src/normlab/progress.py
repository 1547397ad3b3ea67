"""Modules whose forward pass depends on the training step, and how they are driven.

BranchNorm's branch scale and ProRes' residual warm-up change with the optimizer step ``t``. Only
the Trainer knows ``t``, so such a module keeps what it computes from ``t`` in buffers (saved in
every checkpoint, present on every FSDP rank, invisible to ``torch.compile`` guards) and exposes
:meth:`ProgressDriven.set_progress`, which :class:`normlab.callbacks.schedule.ScheduleCallback`
calls with ``trainer.global_step``: at the start of training and after every optimizer step.

The contract fails loudly: every module remembers the last step it was set for
(``driven_step``), and the task refuses to run a training batch when a scheduled module was not
set for the current step (:func:`check_driven`), so a schedule can never silently stay at its
initial value because nobody drove it.
"""

from __future__ import annotations

from torch import nn

from normlab.errors import ConfigError


class ProgressDriven:
    """Mixin for ``nn.Module`` subclasses whose output depends on the optimizer step.

    Subclasses implement :meth:`apply_progress` (write the buffers for step ``t``) and
    :meth:`schedule_values` (what to log, ``name -> value``); :meth:`set_progress` wraps the first
    and records the step.
    """

    driven_step: int | None = None
    schedule_prefix: str = "schedule"  # logged as <prefix>/<key>

    def apply_progress(self, step: int) -> None:
        raise NotImplementedError

    def schedule_values(self) -> dict[str, float]:
        return {}

    def set_progress(self, step: int) -> None:
        self.apply_progress(int(step))
        self.driven_step = int(step)


def scheduled_modules(net: nn.Module) -> list[ProgressDriven]:
    """Every step-dependent module of ``net`` (also when wrapped by FSDP or checkpointing)."""
    return [m for m in net.modules() if isinstance(m, ProgressDriven)]


def check_driven(modules: list[ProgressDriven], step: int) -> None:
    """Refuse a training step whose schedules were not set for it (one-line ConfigError)."""
    for module in modules:
        if module.driven_step != step:
            raise ConfigError(
                f"{type(module).__name__}: its schedule was set for step {module.driven_step}, but the "
                f"trainer is at step {step}; nothing drives it. Fit normlab tasks with a Lightning "
                "Trainer (the task adds normlab.callbacks.schedule.ScheduleCallback itself) and do not "
                "remove that callback"
            )
