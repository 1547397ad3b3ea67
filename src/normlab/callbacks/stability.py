"""Per-layer gradient norms, residual-stream scales and DeepNet's model update: the quantities the
deep-norm papers plot, recorded while training.

Why: whether a deep stack trains is decided layer by layer and in the first steps. Post-LN's lower
layers get vanishing gradients (Xiong et al. 2020, Fig. 3), Pre-LN's residual stream grows with depth
(Kedia et al. 2024), DeepNorm bounds the model update (Wang et al. 2022, Fig. 4-5). A loss curve hides
all of this. This callback measures:

- **model update** ``||F(x, theta_t) - F(x, theta_0)||`` at ``update_steps`` (default 0, 1, 2, 3, 5, 10,
  20, 50, 100) and then every ``every_n_steps``: the RMS over a fixed probe batch (the first
  ``probe_size`` sequences of the first validation batch, broadcast from rank 0 so every rank uses the
  same) of the change of the final hidden state and of the logits, each also relative to the RMS at
  step 0. ``F`` is the network as it computes at step ``t`` (its schedules included), in eval mode,
  measured before step ``t``'s forward. A run resumed from a checkpoint has no ``theta_0`` and records
  no model update;
- **per layer**, at step 1 and every ``every_n_steps``: ``grad_norm``, the 2-norm of each block's
  gradients after backward and before clipping (FSDP2 shards: one all-reduce of the per-block sums of
  squares), and ``act_rms``, the RMS of each block's output on that step's batch (averaged over ranks).

Cost: nothing on steps that measure nothing (no hook, no host sync). A per-layer step adds one forward
hook per block, one stacked reduction per stack and one host copy; a model-update step one extra
forward of the probe batch. Output: ``<run dir>/stability.jsonl`` (one JSON object per measurement:
``{"step", "update": {...}}`` or ``{"step", "<stack>": {"grad_norm": [...], "act_rms": [...]}}``, layer 0
first), scalars logged only at the steps they were measured (``update/*``, ``stability/<stack>/*``),
and in TensorBoard a layer x step heatmap of each per-layer quantity (images) and histograms of the
weights of a few layers. Only rank 0 writes.

Config: ``callbacks/stability_monitor.yaml`` (on by default).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

from normlab import plots
from normlab.callbacks.shared_batch import distributed, first_batch_on_every_rank
from normlab.errors import ConfigError
from normlab.models.transformer import TransformerStack, transformer_stacks

UPDATE_STEPS = (0, 1, 2, 3, 5, 10, 20, 50, 100)


def _local(t: Tensor) -> tuple[Tensor, bool]:
    """A tensor's local values and whether it is a shard of a larger tensor (a DTensor)."""
    if hasattr(t, "to_local"):
        return t.to_local(), True
    return t, False


def _rms(t: Tensor) -> Tensor:
    return t.float().pow(2).mean().sqrt()


class StabilityMonitor(L.Callback):
    def __init__(
        self,
        every_n_steps: int = 100,
        filename: str | None = "stability.jsonl",
        update_steps: Sequence[int] = UPDATE_STEPS,
        probe_size: int = 4,
        histogram_layers: int = 3,
        images: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ConfigError(
                f"callbacks.stability_monitor.every_n_steps: must be >= 1, got {every_n_steps}; "
                "remove the monitor with ~callbacks.stability_monitor instead"
            )
        if probe_size < 1 or histogram_layers < 0 or any(s < 0 for s in update_steps):
            raise ConfigError(
                "callbacks.stability_monitor: probe_size >= 1, histogram_layers >= 0 and update_steps "
                f">= 0 needed, got {probe_size}, {histogram_layers}, {list(update_steps)}"
            )
        self.every_n_steps, self.filename = every_n_steps, filename
        self.update_steps = frozenset(int(s) for s in update_steps)
        self.probe_size, self.histogram_layers, self.images = probe_size, histogram_layers, images
        self.history: list[dict[str, Any]] = []  # what was recorded, also for tests and notebooks
        self._hooks: list[Any] = []
        self._act: dict[tuple[str, int], Tensor] = {}
        self._probe: Any = None
        self._reference: tuple[Tensor, Tensor] | None = None
        self._last_update: int | None = None

    # --- when ---------------------------------------------------------------------------------
    def measures_at(self, step: int) -> bool:
        """Whether the batch at ``step`` is a measuring one (per-layer statistics or the model
        update); every other step costs this callback nothing."""
        return self._layers_due(step) or self._update_due(step)

    def _layers_due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

    def _update_due(self, step: int) -> bool:
        return step in self.update_steps or (step > 0 and step % self.every_n_steps == 0)

    # --- model update ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != 0 or not hasattr(pl_module, "probe_outputs"):
            return  # resumed: theta_0 is gone
        loader = trainer.datamodule.val_dataloader if trainer.datamodule is not None else None
        rank_zero, device = trainer.is_global_zero, pl_module.device
        self._probe = first_batch_on_every_rank(rank_zero, loader, device, self.probe_size)

    @torch.no_grad()
    def _outputs(self, pl_module: L.LightningModule) -> tuple[Tensor, Tensor]:
        was_training = pl_module.training
        pl_module.eval()
        try:
            hidden, logits = pl_module.probe_outputs(self._probe)
        finally:
            pl_module.train(was_training)
        return _local(hidden.detach().float())[0].clone(), _local(logits.detach().float())[0].clone()

    def _measure_update(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        hidden, logits = self._outputs(pl_module)
        if self._reference is None:
            self._reference = (hidden, logits)
        h0, z0 = self._reference
        values = torch.stack([_rms(hidden - h0), _rms(logits - z0), _rms(h0), _rms(z0)]).double()
        if distributed():  # a sharded (tensor-parallel) output would differ per rank; average
            dist.all_reduce(values)
            values /= dist.get_world_size()
        dh, dz, rh, rz = values.tolist()
        update = {
            "hidden_rms": dh,
            "logits_rms": dz,
            "hidden_rel": dh / rh if rh > 0 else math.nan,
            "logits_rel": dz / rz if rz > 0 else math.nan,
        }
        self._record(trainer, {"step": step, "update": update})
        self._log(trainer, {f"update/{k}": v for k, v in update.items()}, step)

    # --- per layer ----------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._probe is not None and self._update_due(step) and self._last_update != step:
            self._last_update = step  # once per step, also under gradient accumulation
            self._measure_update(trainer, pl_module)
        if not self._layers_due(step) or self._hooks:
            return
        self._act.clear()
        for stack in transformer_stacks(pl_module):
            for i, block in enumerate(stack.layers):
                self._hooks.append(block.register_forward_hook(self._recorder(stack.stack, i)))

    def _recorder(self, stack: str, layer: int):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            out, _ = _local(output.detach())
            self._act[(stack, layer)] = _rms(out)  # a device tensor: no host sync here

        return hook

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._hooks:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        step = trainer.global_step + 1  # the step this batch completes
        record: dict[str, Any] = {"step": step}
        scalars: dict[str, float] = {}
        for stack in transformer_stacks(pl_module):
            grads, acts = self._profile(stack)
            record[stack.stack] = {"grad_norm": grads, "act_rms": acts}
            scalars.update(_summaries(stack.stack, grads, acts))
        self._record(trainer, record)
        self._log(trainer, scalars, step)
        self._images(trainer, pl_module, step)

    def _profile(self, stack: TransformerStack) -> tuple[list[float], list[float]]:
        """Per-block gradient norms and output RMS: one stacked tensor each, one host copy."""
        device = next(stack.parameters()).device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums, sharded = [], False
        for block in stack.layers:
            local = [_local(p.grad.detach()) for p in block.parameters() if p.grad is not None]
            sharded |= any(is_shard for _, is_shard in local)
            parts = [g.double().pow(2).sum() for g, _ in local]
            sums.append(torch.stack(parts).sum() if parts else zero)
        grad_sq = torch.stack(sums)
        nan = torch.tensor(math.nan, device=device)
        act = torch.stack([self._act.get((stack.stack, i), nan) for i in range(len(stack.layers))])
        act = act.double()
        if distributed():
            if sharded:  # shards: add up the pieces; replicated (DDP) grads are already equal
                dist.all_reduce(grad_sq)
            dist.all_reduce(act)
            act = act / dist.get_world_size()
        grads, acts = torch.stack([grad_sq.sqrt(), act]).cpu().tolist()
        return grads, acts

    # --- output -------------------------------------------------------------------------------
    def _record(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.filename and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    @staticmethod
    def _log(trainer: L.Trainer, scalars: dict[str, float], step: int) -> None:
        """Straight to the loggers at the measured step (Lightning would drop values logged off its
        ``log_every_n_steps`` grid, and keep re-reporting stale ones in the progress bar)."""
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)

    def _images(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        writers = [getattr(lg, "experiment", None) for lg in trainer.loggers]
        writers = [w for w in writers if hasattr(w, "add_image") and hasattr(w, "add_histogram")]
        stacks = transformer_stacks(pl_module)
        chosen = self._histogram_blocks(stacks)
        # every rank joins the gathers of sharded weights; only rank 0 has writers
        weights = {tag: _full(p) for tag, p in chosen}
        if not writers or not self.images:
            return
        layered = [r for r in self.history if any(s.stack in r for s in stacks)]
        for stack in stacks:
            rows = [r for r in layered if stack.stack in r]
            steps = [r["step"] for r in rows]
            for key, label in (("grad_norm", "gradient norm"), ("act_rms", "residual RMS")):
                matrix = [r[stack.stack][key] for r in rows]
                image = plots.figure_to_array(plots.heatmap(matrix, steps, f"{stack.stack}: {label}", label))
                for w in writers:
                    w.add_image(f"stability/{stack.stack}/{key}_heatmap", image, step, dataformats="HWC")
        for tag, values in weights.items():
            for w in writers:
                w.add_histogram(tag, values, step)

    def _histogram_blocks(self, stacks: list[TransformerStack]) -> list[tuple[str, Tensor]]:
        out = []
        for stack in stacks:
            depth = len(stack.layers)
            if not self.histogram_layers or not depth:
                continue
            n = self.histogram_layers
            picks = sorted({round(i * (depth - 1) / max(1, n - 1)) for i in range(n)})
            for i in picks:
                for name, p in stack.layers[i].named_parameters():
                    if p.ndim == 2:
                        clean = name.replace("_checkpoint_wrapped_module.", "")
                        out.append((f"weights/{stack.stack}/layer_{i}/{clean}", p))
        return out


def _full(p: Tensor) -> Tensor:
    t = p.detach()
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.float().cpu()


def _summaries(stack: str, grads: list[float], acts: list[float]) -> dict[str, float]:
    values = {
        "grad_norm_first": grads[0],
        "grad_norm_last": grads[-1],
        "grad_norm_min": min(grads),
        "grad_norm_max": max(grads),
        "grad_norm_first_over_last": grads[0] / grads[-1] if grads[-1] > 0 else math.inf,
        "act_rms_first": acts[0],
        "act_rms_last": acts[-1],
        "act_rms_max": max(acts),
    }
    return {f"stability/{stack}/{k}": float(v) for k, v in values.items()}
