"""A bare Lightning Trainer (no logger, checkpoints, progress bar or summary) for the tests that
drive a task directly, and one way to train the LM task for a few steps on random tokens with it,
shared by the tests that compare two ways of taking a step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

VOCAB = 50


def tiny_lm_model(norm: str) -> dict[str, Any]:
    return {"norm": norm, "depth": 3, "d_model": 32, "n_heads": 4, "d_ffn": 64, "pos_encoding": "none"}


def random_lm_batches(n: int, seed: int = 5) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 4 sequences of 8 next-token pairs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, 4, 9), generator=g)
    return [{"input_ids": x[:, :-1], "labels": x[:, 1:]} for x in ids]


def bare_trainer(root: Path | str, **kwargs: Any) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar or model summary; its run record goes
    to ``root`` (a temporary folder, never the repository)."""
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def fit_tiny_lm(
    task_class: type, root: Path, norm: str, batches: list, callbacks: list, **trainer_kwargs: Any
) -> L.LightningModule:
    """The task trained on ``batches`` (lr 1e-2, no warm-up, seed 0); ``trainer_kwargs`` set
    max_steps, clipping, accumulation."""
    torch.manual_seed(0)
    optim = {"lr": 1e-2, "warmup_steps": 0}
    task = task_class(model=tiny_lm_model(norm), optim=optim, vocab_size=VOCAB, seed=0)
    trainer = bare_trainer(root, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(task, DataLoader(batches, batch_size=None))
    return task


def flat_weights(task: L.LightningModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in task.parameters()])
