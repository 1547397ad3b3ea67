"""Plain mappings (YAML, command line, checkpoints) -> typed dataclasses, with one-line errors.

Why not Hydra's structured configs: their errors are multi-line reports about OmegaConf nodes, and
they say nothing about values a strategy or a data module would refuse. Here every config group a
user edits is a dataclass, and :func:`to_dataclass` checks a mapping against it: unknown keys,
wrong types, choices outside a ``Literal`` or ``StrEnum``, nested dataclasses, optional values, and
then the dataclass's own ``validate()`` (cross-field and range checks). Every failure is one
:class:`~normlab.errors.ConfigError` that names the full key (``model.residual_warmup.T``) and the
valid values. This module knows nothing about normlab's domain, so any module may use it.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from normlab.errors import ConfigError


def plain(values: Any) -> Any:
    """OmegaConf nodes -> plain Python containers (resolved); dataclasses -> dicts."""
    if isinstance(values, (DictConfig, ListConfig)):
        return OmegaConf.to_container(values, resolve=True)
    if dataclasses.is_dataclass(values) and not isinstance(values, type):
        return dataclasses.asdict(values)
    return values


def as_plain(instance: Any) -> dict[str, Any]:
    """A dataclass instance as plain dicts, lists, strings and numbers (enums by value): what run
    configs and checkpoints store, since a checkpoint must hold data, never class instances."""

    def convert(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(dataclasses.asdict(instance))


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``dataclasses.MISSING``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def defaults_of(schema: type) -> dict[str, Any]:
    """``{field: default}`` of a dataclass, nested dataclasses as dicts (what its YAML should say)."""
    out = {}
    for f in dataclasses.fields(schema):
        value = field_default(f)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[f.name] = value
    return out


def describe_fields(schema: type) -> str:
    """``a=1, b='x'``: the valid keys of ``schema`` with their defaults, for error messages."""
    parts = []
    for f in dataclasses.fields(schema):
        value = field_default(f)
        parts.append(f"{f.name}={'<required>' if value is dataclasses.MISSING else _short(value)}")
    return ", ".join(parts) or "none"


def _short(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if dataclasses.is_dataclass(value):
        return "{...}"
    return repr(value)


def to_dataclass(schema: type, values: Any, prefix: str) -> Any:
    """Validate ``values`` (mapping, DictConfig, dataclass or None) against dataclass ``schema``.

    Returns a ``schema`` instance after its optional ``validate()`` ran; raises a one-line
    ConfigError naming ``<prefix>.<key>`` otherwise.
    """
    values = plain(values)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: expected a mapping of {describe_fields(schema)}, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys are: {describe_fields(schema)}")
    missing = [n for n, f in fields.items() if n not in values and field_default(f) is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}: required; valid keys are: {describe_fields(schema)}")
    hints = get_type_hints(schema)
    out = {name: coerce(value, hints[name], f"{prefix}.{name}") for name, value in values.items()}
    instance = schema(**out)
    check = getattr(instance, "validate", None)
    if check is not None:
        check()
    return instance


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def type_name(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Accept ``value`` only if it already has the declared type ``tp`` (ints may widen to float;
    a string may name a ``StrEnum`` member; a mapping may fill a nested dataclass)."""
    if tp is Any or tp is typing.Any:
        return value
    if _is_union(tp):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:
            if type(None) not in options:
                raise errors[0]
            inner = next(o for o in options if o is not type(None))
            if str(errors[0]).startswith(f"{key}: expected "):
                raise ConfigError(f"{key}: expected {type_name(inner)} or null, got {value!r}") from None
            raise ConfigError(f"{errors[0]} or null") from None
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    origin = get_origin(tp)
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ConfigError(f"{key}: {value!r} is not {type_name(tp)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not {type_name(tp)}") from None
    if dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        items = [coerce(v, args[0], key) for v in value] if args and args[0] is not Ellipsis else list(value)
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
