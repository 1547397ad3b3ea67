"""Small run helpers: instantiate callbacks/loggers from config, print and log the strategy's
resolved constants, rank-zero printing, and the CLI's one-line error handling."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from normlab.description import format_description
from normlab.errors import ConfigError, TrainingDiverged


def instantiate_checked(key: str, node: Any, **kwargs: Any) -> Any:
    """hydra ``instantiate`` whose bad arguments end as a one-line ConfigError naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # hydra wraps the constructor's exception
        cause = err.__cause__ or err
        if isinstance(cause, ConfigError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise ConfigError(f"{key}: {str(cause).splitlines()[0]}") from err
        raise


def _instantiate_group(group: str, node: DictConfig | None) -> list[Any]:
    """Every entry with a ``_target_`` becomes an object (adding one = adding a YAML file)."""
    if not node:
        return []
    return [
        instantiate_checked(f"{group}.{name}", c)
        for name, c in node.items()
        if isinstance(c, DictConfig) and "_target_" in c
    ]


def instantiate_callbacks(node: DictConfig | None) -> list[L.Callback]:
    return _instantiate_group("callbacks", node)


def instantiate_loggers(node: DictConfig | None) -> list[Any]:
    return _instantiate_group("logger", node)


@rank_zero_only
def rank_zero_print(text: str) -> None:
    print(text, flush=True)


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
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
        logger.log_hyperparams(params)
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text("norm_strategy", "```\n" + format_description(description) + "\n```")
            experiment.add_text("norm_strategy_json", "```\n" + json.dumps(description, indent=2) + "\n```")


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: one line on stderr instead of a traceback, and a non-zero exit.

    ConfigError (bad input) exits with code 2, TrainingDiverged (nan/inf gradients) with code 3.

    Hydra reports ordinary exceptions with a traceback; SystemExit passes through it untouched.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as err:
            sys.stderr.write(f"normlab: error: {err}\n")
            sys.exit(2)
        except TrainingDiverged as err:
            sys.stderr.write(f"normlab: error: {err}\n")
            sys.exit(3)

    return wrapper


def check_model_overrides(argv: list[str]) -> None:
    """Refuse ``model.<unknown>=...`` before Hydra does, with our one-line message.

    Hydra would also refuse it (the key is not in the composed config), but with a multi-line
    report; ``+model.x=...`` reaches :func:`normlab.config.validate_model_config` instead.
    """
    import dataclasses

    from normlab.config import ModelConfig

    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    for arg in argv:
        if arg.startswith("model.") and "=" in arg:
            key = arg.split("=", 1)[0][len("model.") :].split(".", 1)[0]
            if key not in valid:
                sys.stderr.write(
                    f"normlab: error: model.{key}: unknown key; valid keys are: {', '.join(sorted(valid))}\n"
                )
                sys.exit(2)


# Config nodes whose keys are open in YAML ({} or null) and typed only later, in Python.
OPEN_NODES = ("model.norm_args.", "model.residual_warmup.")


def norm_args_overrides(argv: list[str]) -> list[str]:
    """Let ``model.norm_args.<key>=value`` and ``model.residual_warmup.<key>=value`` work without
    Hydra's ``+`` prefix.

    ``model.norm_args`` is ``{}`` in YAML (its keys depend on the chosen strategy) and
    ``model.residual_warmup`` is ``null`` (off), so Hydra's struct mode would refuse a new key;
    rewriting it to ``++<key>=value`` (add or override) keeps the documented command line
    (``model.norm_args.max_norm_step=4000``, ``model.residual_warmup.schedule=linear``). The keys
    are still validated against their dataclasses (the strategy's ``Args``, ``ResidualWarmupConfig``).
    """
    return [f"++{arg}" if arg.startswith(OPEN_NODES) and "=" in arg else arg for arg in argv]
