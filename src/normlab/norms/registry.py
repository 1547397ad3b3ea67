"""Name -> strategy class, filled by importing every module in ``normlab.norms``.

Adding a strategy is one new file in this package that decorates its class with ``@register``:
discovery imports every sibling module, so nothing else has to change. ``model.norm`` is a plain
string resolved here; ``model.norm_args`` is validated against the strategy's own ``Args``
dataclass.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any

from normlab.errors import ConfigError
from normlab.norms.base import ArchSpec, NormStrategy, make_norm_factory
from normlab.typed_config import describe_fields, to_dataclass

_REGISTRY: dict[str, type[NormStrategy]] = {}
_NOT_STRATEGIES = {"base", "registry"}
_discovered = False


def register(cls: type[NormStrategy]) -> type[NormStrategy]:
    """Class decorator: make ``cls`` selectable as ``model.norm=<cls.name>``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty class attribute 'name'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"norm strategy {cls.name!r} registered twice ({_REGISTRY[cls.name]}, {cls})")
    if not dataclasses.is_dataclass(cls.Args):
        raise TypeError(f"{cls.__name__}.Args must be a dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # the modules of this package
        if info.name not in _NOT_STRATEGIES and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    _discovered = True


def registered_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_strategy_class(name: str) -> type[NormStrategy]:
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.norm: unknown strategy {name!r}; registered: {', '.join(registered_names())}"
        )
    return _REGISTRY[name]


def validate_args(name: str, values: Any) -> Any:
    """``model.norm_args`` -> the strategy's ``Args`` instance (its ``validate()`` included), or a
    one-line ConfigError that lists the valid arguments with their defaults."""
    cls = get_strategy_class(name)
    try:
        return to_dataclass(cls.Args, values, "model.norm_args")
    except ConfigError as err:
        if "unknown key" in str(err) or "valid model.norm_args" in str(err):
            raise
        raise ConfigError(f"{err} [valid model.norm_args for {name}: {describe_fields(cls.Args)}]") from None


def build_strategy(model_cfg: Any) -> NormStrategy:
    """Build the strategy for a validated :class:`normlab.config.ModelConfig`."""
    cls = get_strategy_class(model_cfg.norm)
    args = validate_args(model_cfg.norm, model_cfg.norm_args)
    enc, dec = model_cfg.stack_depths()
    arch = ArchSpec(model_cfg.arch, enc, dec, model_cfg.dropout)
    make_norm = make_norm_factory(model_cfg.norm_layer, model_cfg.norm_eps)
    return cls(arch, model_cfg.d_model, model_cfg.n_heads, make_norm, args)
