"""Every training run leaves one ``metrics.json`` and one ``train_curve.csv`` in its run folder.

Why: a study compares runs after the fact, often copied from a cluster; the report
(``python -m normlab.report``) must read files, never a live model, and must also see the runs that
crashed or diverged. So this callback, which every normlab task adds itself
(``configure_callbacks``), records per optimizer step the training loss, the global gradient norm
(before clipping) and the step's wall time, and writes:

- ``train_curve.csv``: ``step,loss,grad_norm,seconds`` (one row per optimizer step);
- ``metrics.json``: status (``finished``, ``diverged``, ``failed``, ``interrupted``), steps done, the
  final and best validation metrics with their steps, test metrics (added by ``trainer.test``),
  median seconds per step, peak memory, the spike scores of the loss and of the gradient norm
  (:mod:`normlab.metrics.spikes`), the unigram baseline when the data has one, and the model config.

The spike scores are also printed and logged (``spike/train_loss``, ``spike/grad_norm``). Values are
kept on the device and copied to the host every ``flush_every`` steps, so recording adds no
per-step host synchronisation. Only global rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from normlab.errors import TrainingDiverged
from normlab.metrics.spikes import spike_score
from normlab.resources import peak_memory_mb, reset_peak

log = logging.getLogger("normlab")

METRICS_FILE = "metrics.json"
CURVE_FILE = "train_curve.csv"


def _scalar_dict(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix) and isinstance(value, (Tensor, int, float)):
            if isinstance(value, Tensor) and value.numel() != 1:
                continue
            out[key] = float(value)
    return out


class RunRecord(L.Callback):
    def __init__(self, flush_every: int = 50) -> None:
        self.flush_every = flush_every  # also the interval of the progress line in the log
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.seconds: list[float] = []
        self.val_history: list[dict[str, float]] = []
        self.test: dict[str, float] = {}
        self.status = "running"
        self.error: str | None = None
        self._pending: list[tuple[int, Tensor, Tensor | None, float]] = []
        self._grad_norm: Tensor | None = None
        self._t0 = 0.0
        self._last_step = 0

    # --- recording ----------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        reset_peak(pl_module.device)  # this run's peak, also when a sweep runs many in one process

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        norm = getattr(pl_module, "step_grad_norm", None)
        self._grad_norm = None if norm is None else norm()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if step == self._last_step or loss is None:
            return  # an accumulation micro-batch: no optimizer step yet
        self._last_step = step
        self._pending.append((step, loss.detach(), self._grad_norm, time.perf_counter() - self._t0))
        self._grad_norm = None
        if len(self._pending) >= self.flush_every or step % self.flush_every == 0:
            self._flush()
            if step % self.flush_every == 0 and trainer.is_global_zero:
                self._progress(trainer)

    def _progress(self, trainer: L.Trainer) -> None:
        """One line per ``flush_every`` steps in the console and train.log."""
        window = self.seconds[-self.flush_every :]
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        log.info(
            "step %d/%d  loss %.4f  grad norm %.3g  lr %.3g  %.3f s/step",
            self.steps[-1],
            trainer.max_steps,
            self.losses[-1],
            self.grad_norms[-1],
            lr,
            statistics.median(window) if window else math.nan,
        )

    def state_dict(self) -> dict[str, Any]:
        """The curves so far, so a resumed run continues them (plain lists: checkpoint data)."""
        self._flush()
        keys = ("steps", "losses", "grad_norms", "seconds", "val_history")
        return {k: list(getattr(self, k)) for k in keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, value in state_dict.items():
            setattr(self, key, list(value))

    def _flush(self) -> None:
        if not self._pending:
            return
        losses = torch.stack([p[1].float() for p in self._pending]).tolist()
        norms = [p[2] for p in self._pending]
        known = [n for n in norms if n is not None]
        values = torch.stack([n.float() for n in known]).tolist() if known else []
        it = iter(values)
        for (step, _, norm, seconds), loss in zip(self._pending, losses, strict=True):
            self.steps.append(step)
            self.losses.append(loss)
            self.grad_norms.append(next(it) if norm is not None else math.nan)
            self.seconds.append(seconds)
        self._pending.clear()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = _scalar_dict(trainer.callback_metrics, "val/")
        if values:
            self.val_history.append({"step": trainer.global_step, **values})
            if "val/loss" in values:  # the metric of TensorBoard's HParams tab (normlab.run_log)
                for logger in trainer.loggers:
                    logger.log_metrics({"hp/val_loss": values["val/loss"]}, step=trainer.global_step)
        self._flush()
        self.write(trainer, pl_module)  # a live run's record (status running) after every validation

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.test = _scalar_dict(trainer.callback_metrics, "test/")
        self.write(trainer, pl_module)

    # --- the end of a run ---------------------------------------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush()
        self.status = "interrupted" if trainer.interrupted else "finished"
        scores = self.spike_scores()
        if trainer.is_global_zero:
            log.info(
                "spike score (%% of steps >= 7 std from the 1,000-step rolling mean, 10-90%% of training): "
                "train loss %s, grad norm %s",
                _fmt(scores["train_loss"]),
                _fmt(scores["grad_norm"]),
            )
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"spike/{k}": v for k, v in scores.items() if v is not None}, step=trainer.global_step
            )
        self.write(trainer, pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._flush()
        self.status = "diverged" if isinstance(exception, TrainingDiverged) else "failed"
        if isinstance(exception, KeyboardInterrupt):
            self.status = "interrupted"
        self.error = str(exception).splitlines()[0] if str(exception) else type(exception).__name__
        self.write(trainer, pl_module)

    def spike_scores(self) -> dict[str, float | None]:
        return {"train_loss": spike_score(self.losses), "grad_norm": spike_score(self.grad_norms)}

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """What ``metrics.json`` holds (also returned by :func:`normlab.run.train`)."""
        # the first step allocates (and compiles, when on): leave it out of the median
        timed = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        best = _best(self.val_history)
        datamodule = getattr(trainer, "datamodule", None)
        baseline = getattr(datamodule, "unigram_baseline", None) if datamodule is not None else None
        hparams = getattr(pl_module, "hparams", {})
        return {
            "status": self.status,
            "error": self.error,
            "steps": trainer.global_step,
            "max_steps": trainer.max_steps,
            "task": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "model": dict(hparams.get("model") or {}),
            "val": {"final": self.val_history[-1] if self.val_history else None, "best": best},
            "val_history": self.val_history,
            "test": self.test or None,
            "final_train_loss": _last_finite(self.losses),
            "spike_score": self.spike_scores(),
            "seconds_per_step": statistics.median(timed) if timed else None,
            "memory": peak_memory_mb(pl_module.device),
            "unigram_baseline": None if baseline is None else float(baseline),
        }

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        rows = ["step,loss,grad_norm,seconds"]
        rows += [
            f"{s},{loss!r},{g!r},{t:.6f}"
            for s, loss, g, t in zip(self.steps, self.losses, self.grad_norms, self.seconds, strict=True)
        ]
        _atomic_write(root / CURVE_FILE, "\n".join(rows) + "\n")
        summary = self.summary(trainer, pl_module)
        _atomic_write(root / METRICS_FILE, json.dumps(summary, indent=2, default=str, allow_nan=True) + "\n")


def _best(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The validation with the lowest ``val/loss`` (or the highest ``val/acc`` / ``val/bleu``)."""
    for key, better in (("val/loss", min), ("val/bleu", max), ("val/acc", max)):
        rows = [r for r in history if key in r and math.isfinite(r[key])]
        if rows:
            return better(rows, key=lambda r: r[key])
    return None


def _last_finite(values: list[float]) -> float | None:
    for v in reversed(values):
        if math.isfinite(v):
            return v
    return None


def _fmt(value: float | None) -> str:
    return "n/a (too few steps)" if value is None else f"{value:.3f}%"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
