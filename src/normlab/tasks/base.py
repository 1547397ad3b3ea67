"""What every task shares: the model built in ``configure_model``, AdamW + warm-up schedule,
gradient-norm logging, and checkpoints that carry everything ``eval.py`` needs.

The network is built on the meta device inside ``configure_model`` so that (a) a 1,000-layer model
starts in seconds, (b) distributed policies (activation checkpointing, FSDP) from
:mod:`normlab.distributed` are applied *before* any memory is allocated, and (c) the declared init
runs after materialisation / sharding. Checkpoints store the validated model config, the optimiser
config, the data config and the tokenizer, so a checkpoint alone rebuilds the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from normlab.callbacks.frozen_gc import FrozenGarbageCollector
from normlab.callbacks.init_profile import InitProfile
from normlab.callbacks.run_record import RunRecord
from normlab.callbacks.schedule import ScheduleCallback
from normlab.checkpoints import CHECKPOINT_KEY, checkpoint_entry
from normlab.compile import compile_blocks
from normlab.config import (
    ComputeConfig,
    ModelConfig,
    OptimConfig,
    validate_compute_config,
    validate_model_config,
    validate_optim_config,
)
from normlab.distributed import parallelize
from normlab.errors import ConfigError
from normlab.models.init import materialize
from normlab.norms.registry import get_strategy_class
from normlab.optimizer import build_optimizer, clip_grads_with_norm, grad_norm_of, lr_factor
from normlab.profiling import ProfiledAtStart
from normlab.progress import ProgressDriven, check_driven, scheduled_modules
from normlab.typed_config import as_plain, to_dataclass


@dataclass(frozen=True)
class NoTaskArgs:
    """Tasks without arguments of their own (``configs/task/<name>.yaml`` holds only ``_target_``)."""


class TransformerTask(L.LightningModule):
    """Base LightningModule. Subclasses set ``Config`` (their ``task.*`` arguments, a dataclass) and
    ``arch`` (the model architecture they need) and implement ``build_network`` and the steps.

    ``model`` / ``optim`` / ``compute`` are the validated dataclasses (``normlab.run`` passes them)
    or plain mappings (a checkpoint's hyper-parameters), validated here. The hyper-parameters saved
    in checkpoints are plain values; ``compute`` is a run-time choice and is not saved.
    """

    Config: ClassVar[type] = NoTaskArgs
    arch: ClassVar[str] = ""
    arch_hint: ClassVar[str] = ""

    def __init__(
        self,
        model: ModelConfig | dict,
        optim: OptimConfig | dict,
        vocab_size: int,
        data: dict | None = None,
        seed: int = 0,
        compute: ComputeConfig | dict | None = None,
        **task_args: Any,
    ) -> None:
        super().__init__()
        self.model_cfg = model if isinstance(model, ModelConfig) else validate_model_config(model)
        self.optim_cfg = optim if isinstance(optim, OptimConfig) else validate_optim_config(optim)
        self.compute_cfg = compute if isinstance(compute, ComputeConfig) else validate_compute_config(compute)
        self.task_cfg = to_dataclass(self.Config, task_args, "task")
        if self.arch and self.model_cfg.arch != self.arch:
            name = type(self).__name__
            raise ConfigError(
                f"model.arch: {name} needs arch={self.arch}, got {self.model_cfg.arch!r}; {self.arch_hint}"
            )
        self.save_hyperparameters(
            {
                "model": as_plain(self.model_cfg),
                "optim": as_plain(self.optim_cfg),
                "vocab_size": vocab_size,
                "data": data,
                "seed": seed,
                **as_plain(self.task_cfg),
            }
        )
        self.net: nn.Module | None = None
        self.tokenizer_json: str | None = None  # set by the run; embedded in checkpoints
        self._scheduled: list[ProgressDriven] = []
        self._grad_norm_cache: tuple[int, torch.Tensor | None] | None = None
        self._trainable: list[nn.Parameter] | None = None  # listed once per fit (1000 layers: ~16k tensors)
        self._own_callbacks: list[L.Callback] = []

    # --- model ------------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """Return the network on the meta device (see normlab.models.init.build_model)."""
        raise NotImplementedError

    def configure_model(self) -> None:
        if self.net is not None:
            return
        strategy = self._trainer_strategy()
        net = parallelize(
            self.build_network(),
            activation_checkpointing=self.compute_cfg.activation_checkpointing,
            strategy=strategy,
        )
        device = strategy.root_device if strategy is not None else self.device
        self.net = materialize(net, device, seed=self.hparams.seed)
        if self.compute_cfg.compile_blocks:
            compile_blocks(self.net)
        self._scheduled = scheduled_modules(self.net)

    def _trainer_strategy(self) -> Any:
        """The strategy of the Trainer this task is attached to, or None outside a Trainer (the
        device to allocate on: this rank's GPU before Lightning moves the module)."""
        try:
            return self.trainer.strategy
        except RuntimeError:  # "not attached to a Trainer"
            return None

    @property
    def has_schedule(self) -> bool:
        """Whether the model changes with the training step (known from the config alone, because
        Lightning asks for callbacks before ``configure_model`` builds the network)."""
        strategy_scheduled = issubclass(get_strategy_class(self.model_cfg.norm), ProgressDriven)
        return strategy_scheduled or self.model_cfg.residual_warmup is not None

    def configure_callbacks(self) -> list[L.Callback]:
        """What any Trainer fitting this task gets: the run record (metrics.json, train_curve.csv,
        spike scores), when the model has a schedule, the schedule driver, for a strategy with a
        profiling pass (Admin) the profiler (``callbacks/init_profile.py``), and unless
        ``compute.freeze_gc=false`` the frozen garbage collector (``callbacks/frozen_gc.py``). The
        same instances every time Lightning asks (fit, then test), so the record keeps what the fit
        recorded."""
        if not self._own_callbacks:
            self._own_callbacks = [RunRecord(), *([ScheduleCallback()] if self.has_schedule else [])]
            if issubclass(get_strategy_class(self.model_cfg.norm), ProfiledAtStart):
                self._own_callbacks.append(InitProfile())  # a no-op unless the strategy profiles
            if self.compute_cfg.freeze_gc:
                self._own_callbacks.append(FrozenGarbageCollector())
        return list(self._own_callbacks)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        check_driven(self._scheduled, self.trainer.global_step)

    def probe_outputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden state, logits) of the network on ``batch``: what the stability monitor
        compares across training steps (DeepNet's model update ||F(x, theta_t) - F(x, theta_0)||)."""
        raise NotImplementedError(f"{type(self).__name__} does not define probe_outputs")

    @property
    def norm_strategy(self):
        return self.net.norm_strategy if self.net is not None else None

    # --- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizer = build_optimizer(self, cfg)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that get gradients, listed once per fit: walking a 1,000-layer module tree
        costs about 3% of a step, and the list is needed every step (norm, clipping). In the
        optimizer's order when there is one, the order Lightning's clipping sums the norm in, so that
        the clip below is bit-identical to Lightning's."""
        if self._trainable is None:
            trainer = self._trainer
            groups = [g for opt in trainer.optimizers for g in opt.param_groups] if trainer else []
            listed = [p for g in groups for p in g["params"]] or list(self.parameters())
            self._trainable = [p for p in listed if p.requires_grad]
        return self._trainable

    def on_fit_start(self) -> None:
        self._trainable = None  # configure_model / FSDP2 may have replaced the parameters since

    def step_grad_norm(self) -> torch.Tensor | None:
        """The global gradient norm of the current optimizer step (before clipping), computed once
        per step however many ask (divergence guard, run record, the log below, clipping)."""
        step = self.trainer.global_step
        if self._grad_norm_cache is None or self._grad_norm_cache[0] != step:
            self._grad_norm_cache = (step, grad_norm_of(self.trainable_parameters()))
        return self._grad_norm_cache[1]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norm = self.step_grad_norm()
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        # the learning rate of this step (a Python float: no device sync), with or without a logger
        self.log("train/lr", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False)

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Any,
        optimizer_closure: Any = None,
    ) -> None:
        """Lightning's step, then the gradients are freed at once (Lightning's ``optimizer_zero_grad``
        hook: set to None unless a subclass overrides it), before the next forward, instead of where
        Lightning's closure frees them: after the next forward, just before its backward. The numbers
        are the same (each backward starts from no gradients either way; with gradient accumulation
        this runs only at the end of a window). What changes is speed: a
        forward and backward taken while the last step's gradients are still alive measured slower
        at depth 1000 (``benchmarks/gradient_lifetime.py``; README, "What Lightning and the callbacks
        cost"). So under automatic optimisation the gradients are gone by ``on_train_batch_end``; read
        them in ``on_before_optimizer_step``, as normlab's callbacks do."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.optimizer_zero_grad(epoch, batch_idx, optimizer)  # Lightning's hook: a subclass may override it

    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        self._grad_norm_cache = None  # the step is taken: the next gradients are new ones

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by global norm with the norm this step already computed (Lightning's default
        computes it a second time). Same result as ``torch.nn.utils.clip_grad_norm_`` (tested);
        value clipping and sharded gradients (FSDP) take Lightning's own path."""
        replicated = isinstance(self._trainer_strategy(), (SingleDeviceStrategy, DDPStrategy))
        if not gradient_clip_val or gradient_clip_algorithm not in (None, "norm") or not replicated:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        norm = self.step_grad_norm()
        if norm is not None:
            clip_grads_with_norm(self.trainable_parameters(), gradient_clip_val, norm)

    # --- checkpoints ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_entry(self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY) or {}
        if extra.get("tokenizer"):
            self.tokenizer_json = extra["tokenizer"]
