"""What a run prints and logs at its start: the model's resolved constants (console, ``train.log``,
TensorBoard text) and the resolved config plus those constants as TensorBoard hyper-parameters."""

from __future__ import annotations

import json
import logging
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from normlab.description import format_description

log = logging.getLogger("normlab")


@rank_zero_only
def rank_zero_print(text: str) -> None:
    """To the console and, under Hydra, the job log (``<run dir>/train.log``)."""
    log.info(text)


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts -> ``{"a/b/c": scalar}``; lists and other values become strings."""
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


@rank_zero_only
def log_description(loggers: list[Any], description: dict[str, Any], cfg: DictConfig) -> None:
    """Log the resolved constants and the composed config as hyper-parameters and text."""
    params = flatten("norm", description, {})
    params.update(flatten("", OmegaConf.to_container(cfg, resolve=False), {}))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # with a metric, TensorBoard's HParams tab lists the run (the run record logs hp/val_loss)
            logger.log_hyperparams(params, metrics={"hp/val_loss": float("nan")})
        else:
            logger.log_hyperparams(params)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("norm_strategy", "```\n" + format_description(description) + "\n```")
            experiment.add_text("norm_strategy_json", "```\n" + json.dumps(description, indent=2) + "\n```")
