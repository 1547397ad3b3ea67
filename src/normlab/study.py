"""Runs as data: find the run folders of a sweep and read what each one recorded.

A study reads only files (``metrics.json``, ``train_curve.csv``, ``stability.jsonl``,
``.hydra/config.yaml``), never a live model, so it works on old runs and on runs copied from a
cluster. A folder that has a composed config but no record (the run died before training) is still
a run, with status ``crashed``; nothing is silently dropped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from normlab.callbacks.run_record import CURVE_FILE, METRICS_FILE
from normlab.errors import ConfigError
from normlab.norms.registry import get_strategy_class

PLATEAU_MARGIN = 0.15  # nats: within this of the unigram baseline = learned token frequencies only


@dataclass
class Run:
    path: Path
    strategy: str  # e.g. "postln", "branchnorm T=100", "preln + ProRes linear T=3"
    depth: int
    arch: str
    task: str  # lm | mlm | classify | translate | ?
    status: str  # finished | diverged | failed | interrupted | crashed | running
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: dict[str, list[float]] = field(default_factory=dict)  # step, loss, grad_norm, seconds
    stability: list[dict[str, Any]] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        value = self.metrics.get("unigram_baseline")
        return math.nan if value is None else float(value)

    def val(self, which: str = "final", key: str = "val/loss") -> float:
        row = (self.metrics.get("val") or {}).get(which) or {}
        value = row.get(key)
        return math.nan if value is None else float(value)

    @property
    def test(self) -> dict[str, float]:
        return self.metrics.get("test") or {}

    @property
    def verdict(self) -> str:
        """trained / stalled / worse / diverged / failed / crashed."""
        if self.status in ("diverged", "failed", "crashed"):
            return self.status
        val = self.val()
        if not math.isfinite(val):
            return "diverged" if self.metrics else "crashed"
        if not math.isfinite(self.baseline):
            return self.status if self.status != "finished" else "trained"
        if val < self.baseline - PLATEAU_MARGIN:
            return "trained"
        return "stalled" if abs(val - self.baseline) <= PLATEAU_MARGIN else "worse"

    def updates(self) -> dict[int, dict[str, float]]:
        """Model update per step (DeepNet): step -> {hidden_rms, logits_rms, ...}."""
        return {r["step"]: r["update"] for r in self.stability if "update" in r}

    def layer_records(self, stack: str) -> list[dict[str, Any]]:
        return [r for r in self.stability if stack in r]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders under ``paths``: folders holding a run record or a composed Hydra config."""
    found: list[Path] = []
    for root in paths:
        root = Path(root)
        if _is_run(root):
            found.append(root)
            continue
        for candidate in sorted(root.rglob("*")):
            if (
                candidate.is_dir()
                and _is_run(candidate)
                and not any(candidate.is_relative_to(f) for f in found)
            ):
                found.append(candidate)
    return found


def _is_run(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file() or (folder / ".hydra" / "config.yaml").is_file()


def strategy_label(model: dict[str, Any]) -> str:
    """The strategy as a short label: the norm, its non-default arguments, the warm-up."""
    label = str(model.get("norm", "?"))
    args = model.get("norm_args") or {}
    if args:
        shown = []
        for key, value in args.items():
            name = "T" if key == "max_norm_step" else key
            shown.append(str(value) if key == "form" else f"{name}={value}")
        label += " " + " ".join(shown)
    layer = model.get("norm_layer")
    if layer and layer != "auto" and layer != _published_norm_layer(str(model.get("norm"))):
        label += f" ({layer})"  # a norm class other than the paper's, e.g. an older run's LayerNorm
    warmup = model.get("residual_warmup")
    if warmup:
        label += f" + ProRes {warmup.get('schedule')} T={warmup.get('T')}"
    return label


def _published_norm_layer(norm: str) -> str | None:
    try:
        return get_strategy_class(norm).norm_layer
    except ConfigError:  # a run of a strategy this checkout does not have
        return None


TASKS = {
    "LanguageModelTask": "lm",
    "MaskedLMTask": "mlm",
    "PairClassificationTask": "classify",
    "TranslationTask": "translate",
}


def load_run(path: Path) -> Run:
    path = Path(path)
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        metrics = json.loads((path / METRICS_FILE).read_text())
    config: dict[str, Any] = {}
    if (path / ".hydra" / "config.yaml").is_file():
        config = OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "config.yaml"), resolve=False)
    model = metrics.get("model") or config.get("model") or {}
    task_class = str(metrics.get("task") or (config.get("task") or {}).get("_target_", "?"))
    return Run(
        path=path,
        strategy=strategy_label(model),
        depth=int(model.get("depth", 0) or 0),
        arch=str(model.get("arch", "?")),
        task=TASKS.get(task_class.rsplit(".", 1)[-1], "?"),
        status=str(metrics.get("status", "crashed")),
        metrics=metrics,
        curve=_read_curve(path / CURVE_FILE),
        stability=_read_jsonl(path / "stability.jsonl"),
    )


def _read_curve(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0].keys() if rows else [])}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: keep the rest
                continue
    return out
