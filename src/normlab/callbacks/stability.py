"""Per-layer gradient norms and activation scales, the quantities the deep-norm papers plot.

Why: whether a deep stack trains is decided layer by layer. Post-LN's lower layers get vanishing
gradients (Xiong et al. 2020, Fig. 3), Pre-LN's residual stream grows with depth (Kedia et al.
2024), DeepNorm bounds the first updates (Wang et al. 2022, Fig. 4). A single loss curve hides all
of this. Every ``every_n_steps`` optimizer steps this callback measures, for each block of each
stack:

- ``grad_norm``: the 2-norm of the block's parameter gradients, after backward and before clipping
  (under FSDP2 the per-shard sums of squares are all-reduced once, so the value is the full
  block's);
- ``act_rms``: the RMS of the block's output (the residual stream after the block) on that step's
  batch, averaged over ranks.

It logs summaries as scalars (``stability/<stack>/grad_norm_{first,last,min,max}``, the ratio
``grad_norm_first_over_last``, ``act_rms_{first,last,max}``) and appends the full per-layer
profiles to ``<run dir>/stability.jsonl`` (one JSON object per measured step: ``step``, then per
stack the two lists, layer 0 first), ready to plot. Only rank 0 writes the file.

Config: ``callbacks/stability_monitor.yaml`` (on by default, every 100 steps); the cost is one
pass over the gradients and one forward hook per block on the measured step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor, nn

from normlab.errors import ConfigError
from normlab.models.transformer import TransformerStack, transformer_stacks


def _local(t: Tensor) -> tuple[Tensor, bool]:
    """A gradient's local values and whether it is a shard of a larger tensor (a DTensor)."""
    if hasattr(t, "to_local"):
        return t.to_local(), True
    return t, False


def block_grad_sq(block: nn.Module) -> tuple[float, bool]:
    """Sum of squared gradient entries held by this process, and whether they are shards."""
    total, sharded = torch.zeros((), dtype=torch.float64), False
    for p in block.parameters():
        if p.grad is not None:
            g, is_shard = _local(p.grad.detach())
            total += g.double().pow(2).sum()
            sharded |= is_shard
    return float(total), sharded


class StabilityMonitor(L.Callback):
    def __init__(self, every_n_steps: int = 100, filename: str | None = "stability.jsonl") -> None:
        if every_n_steps < 1:
            raise ConfigError(
                f"callbacks.stability_monitor.every_n_steps: must be >= 1, got {every_n_steps}; "
                "remove the monitor with ~callbacks.stability_monitor instead"
            )
        self.every_n_steps = every_n_steps
        self.filename = filename
        self.history: list[dict[str, Any]] = []  # what was logged, also for tests and notebooks
        self._hooks: list[Any] = []
        self._act: dict[tuple[str, int], float] = {}

    def _due(self, trainer: L.Trainer) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._due(trainer) or self._hooks:
            return
        self._act.clear()
        for stack in transformer_stacks(pl_module):
            for i, block in enumerate(stack.layers):
                self._hooks.append(block.register_forward_hook(self._recorder(stack.stack, i)))

    def _recorder(self, stack: str, layer: int):
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            out, _ = _local(output.detach())
            self._act[(stack, layer)] = float(out.float().pow(2).mean().sqrt())

        return hook

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._hooks:
            return
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        record: dict[str, Any] = {"step": trainer.global_step + 1}
        for stack in transformer_stacks(pl_module):
            grads, acts = self._profile(stack)
            record[stack.stack] = {"grad_norm": grads, "act_rms": acts}
            self._log(pl_module, stack.stack, grads, acts)
        self.history.append(record)
        if self.filename and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _profile(self, stack: TransformerStack) -> tuple[list[float], list[float]]:
        depth = len(stack.layers)
        sq, sharded = zip(*(block_grad_sq(b) for b in stack.layers), strict=True)
        grad_sq = torch.tensor(sq, dtype=torch.float64)
        act = torch.tensor([self._act.get((stack.stack, i), math.nan) for i in range(depth)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            if any(sharded):  # shards: add up the pieces; replicated (DDP) grads are already equal
                dist.all_reduce(grad_sq)
            act = act.double()
            dist.all_reduce(act)
            act = act / world
        return grad_sq.sqrt().tolist(), act.float().tolist()

    def _log(self, pl_module: L.LightningModule, stack: str, grads: list[float], acts: list[float]) -> None:
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
        for key, value in values.items():
            pl_module.log(f"stability/{stack}/{key}", float(value), on_step=True, on_epoch=False)
