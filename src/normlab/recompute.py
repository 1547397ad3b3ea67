"""Keep a recipe instead of a tensor for backward: the output of a norm that feeds a Linear.

In a Pre-LN sublayer ``x + f(norm(x))`` autograd keeps two d-wide tensors for the norm: its input
``x`` (the norm's own backward needs it, and it is the residual stream anyway) and its output,
which the first Linear of ``f`` saves to form its weight gradient. The output is a cheap function
of what is kept anyway, so :func:`recompute_in_backward` stores, in its place, a recipe (the
function and its input) and runs it again when backward asks for the tensor. That removes 2 of
the 12 block-wide tensors a Pre-LN block keeps (about a sixth of its activation memory) for two
norm forwards in backward.

The gradients are bit-identical: the recipe calls the very same module on the very same input,
and the norm kernels are deterministic (tests/unit/test_recompute.py compares every gradient, bit
for bit, with the path that keeps the tensor).

The recipe stands aside, and autograd keeps the tensor as usual, where it would not help or could
not be exact:

- other saved-tensor hooks are active (activation checkpointing, CPU offload, a user's): they
  already decide what is kept, and a hook inside theirs would hide the tensors from them;
- under ``torch.compile`` (the compiler plans its own recomputation), under autocast (the Linear
  saves its low-precision copy, not the norm's output), or when nothing records gradients.

If the norm's input is changed in place between forward and backward, the recipe raises instead of
computing a different tensor (autograd's own version check, which a recipe bypasses).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor


def _hooks_free() -> bool:
    """No saved-tensor hooks are active and new ones may be installed."""
    autograd = torch._C._autograd
    enabled = autograd._saved_tensors_hooks_is_enabled()
    return enabled and autograd._top_saved_tensors_default_hooks(False) is None


def applies_to(value: Tensor) -> bool:
    """Whether :func:`recompute_in_backward` would replace ``value`` by a recipe here and now."""
    return (
        not torch.compiler.is_compiling()  # first: the compiler never traces the checks below
        and torch.is_grad_enabled()
        and value.requires_grad
        and value.is_contiguous()
        and value.storage_offset() == 0
        and value.device.type != "meta"
        and not torch.is_autocast_enabled(value.device.type)
        and _hooks_free()
    )


class _Recipe:
    """How to compute the tensor again; the result is shared by every saved view of it."""

    __slots__ = ("fn", "source", "source_version", "shape", "dtype", "value")

    def __init__(self, fn: Callable[[], Tensor], source: Tensor, like: Tensor) -> None:
        self.fn, self.source, self.source_version = fn, source, source._version
        self.shape, self.dtype = like.shape, like.dtype
        self.value: Tensor | None = None

    def compute(self) -> Tensor:
        if self.value is None:
            if self.source._version != self.source_version:
                raise RuntimeError(
                    "a tensor that a norm's output is recomputed from in backward was modified in place "
                    "after the forward pass; do not modify the residual stream in place before backward"
                )
            with torch.no_grad():
                value = self.fn()
            if value.shape != self.shape or value.dtype != self.dtype or not value.is_contiguous():
                raise RuntimeError(
                    f"recomputing a norm's output gave {tuple(value.shape)} {value.dtype}, but the forward "
                    f"pass gave {tuple(self.shape)} {self.dtype}"
                )
            self.value = value
        return self.value


class _SavedView:
    """A saved tensor that is a view of the recipe's tensor (e.g. the 2-D view a Linear keeps)."""

    __slots__ = ("recipe", "size", "stride", "offset")

    def __init__(self, recipe: _Recipe, saved: Tensor) -> None:
        self.recipe, self.size = recipe, saved.shape
        self.stride, self.offset = saved.stride(), saved.storage_offset()

    def unpack(self) -> Tensor:
        return self.recipe.compute().as_strided(self.size, self.stride, self.offset)


def _unpack(packed: Any) -> Tensor:
    return packed.unpack() if isinstance(packed, _SavedView) else packed


@contextlib.contextmanager
def recompute_in_backward(value: Tensor, fn: Callable[[], Tensor], source: Tensor) -> Iterator[None]:
    """Inside this block, every tensor autograd saves that lives in ``value``'s memory is kept as the
    recipe ``fn`` (which must return ``value`` again, computed from ``source``) instead.

    ``fn`` runs at most once per forward, in backward, under ``no_grad``. Every other saved tensor is
    kept as usual. Where :func:`applies_to` is false the block changes nothing.
    """
    if not applies_to(value):
        yield
        return
    storage = value.untyped_storage()
    pointer, nbytes, dtype, device = storage.data_ptr(), storage.nbytes(), value.dtype, value.device
    recipe = _Recipe(fn, source, value)
    del value, storage  # the hook must not keep the tensor it replaces alive

    def pack(saved: Tensor) -> Any:
        if type(saved) is not Tensor or saved.dtype != dtype or saved.device != device:
            return saved  # parameters, tensor subclasses and other dtypes are never views of ``value``
        own = saved.untyped_storage()
        if own.data_ptr() != pointer or own.nbytes() != nbytes:
            return saved
        return _SavedView(recipe, saved)

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        yield
