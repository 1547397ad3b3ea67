"""Norm strategies: one file each, found by name through :mod:`normlab.norms.registry`."""

from normlab.norms.base import ArchSpec, NormStrategy, Role, Site
from normlab.norms.registry import build_strategy, get_strategy_class, register, registered_names

__all__ = [
    "ArchSpec",
    "NormStrategy",
    "Role",
    "Site",
    "build_strategy",
    "get_strategy_class",
    "register",
    "registered_names",
]
