"""Config nodes with a ``_target_`` -> objects (callbacks, loggers, data modules, tasks, the
Trainer), with the constructor's complaints turned into one-line :class:`ConfigError`s.

Hydra wraps whatever a constructor raises in an ``InstantiationException`` with a multi-line
report; here a ``ConfigError`` raised by the constructor comes out as it is, and a ``TypeError``
(an unknown or missing keyword) comes out as one line naming the config key.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from normlab.errors import ConfigError


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
        if isinstance(cause, (TypeError, ValueError)):
            raise ConfigError(f"{key}: {str(cause).splitlines()[0]}") from err
        raise


def instantiate_group(group: str, node: DictConfig | None) -> list[Any]:
    """Every entry with a ``_target_`` becomes an object (adding one = adding a YAML file)."""
    if not node:
        return []
    return [
        instantiate_checked(f"{group}.{name}", c)
        for name, c in node.items()
        if isinstance(c, DictConfig) and "_target_" in c
    ]


def instantiate_callbacks(node: DictConfig | None) -> list[L.Callback]:
    return instantiate_group("callbacks", node)


def instantiate_loggers(node: DictConfig | None) -> list[Any]:
    return instantiate_group("logger", node)
