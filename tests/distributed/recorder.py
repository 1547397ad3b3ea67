"""A callback the distributed tests add from the command line (``+callbacks.recorder...``).

Each rank writes ``rank<r>.json`` into ``out_dir``: its share of the parameters (local shard sizes of
FSDP2's DTensors), per-parameter statistics of the full weights right after init, the global loss of
every step (the mean over ranks of each rank's mean loss: every rank has the same number of tokens),
Admin's profiled omegas at train start, and the final metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch

WRAPPER = "_checkpoint_wrapped_module."  # activation checkpointing's prefix, not part of the name


def full(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a DTensor: every rank must call it in the same order)."""
    return param.full_tensor() if hasattr(param, "full_tensor") else param


def local(param: torch.Tensor) -> torch.Tensor:
    return param.to_local() if hasattr(param, "to_local") else param


def _omegas(pl_module: L.LightningModule) -> list[float]:
    profiled = [m for m in pl_module.modules() if hasattr(m, "profiled") and hasattr(m, "omega")]
    return [float(local(m.omega.detach()).reshape(-1)[0]) for m in profiled]


class Recorder(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"losses": {}, "metrics": {}}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = list(pl_module.net.named_parameters())
        stats = {}
        for name, p in params:
            value = full(p.detach()).double()
            stats[name.replace(WRAPPER, "")] = [
                float(value.mean()),
                float(value.std()) if value.numel() > 1 else 0.0,
                float(value.abs().sum()),
            ]
        first = params[0][1]
        self.record.update(
            world_size=trainer.world_size,
            global_rank=trainer.global_rank,
            node_rank=trainer.node_rank,
            num_nodes=trainer.num_nodes,
            local_numel=sum(local(p).numel() for _, p in params),
            total_numel=sum(p.numel() for _, p in params),
            dtensor=all(hasattr(p, "placements") for _, p in params),
            placements=[str(pl) for pl in getattr(first, "placements", [])],
            init_stats=stats,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["global_step_at_start"] = trainer.global_step  # after a resume: the restored step
        self.record["omegas"] = _omegas(pl_module)  # Admin's profiled values, if any

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["omegas_end"] = _omegas(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach().float(), reduce_op="mean")
        self.record["losses"][str(trainer.global_step)] = float(loss)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.record["metrics"].update(
            {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if isinstance(v, torch.Tensor) and v.numel() == 1
            }
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.record, indent=1))


def read(out_dir: Path) -> dict[int, dict[str, Any]]:
    """``rank -> record`` for every rank that finished."""
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("rank*.json"))}
