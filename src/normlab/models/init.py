"""Build models on the meta device and initialise them from declared roles.

``init_weights`` is the only place weights get values. Modules declare ``param_roles()`` (which
rows of which weight play which :class:`Role` at which :class:`Site`); the strategy answers with an
:class:`InitSpec` per (site, role). Norm layers and strategy-owned parameters (gates, scales) reset
themselves through ``reset_parameters``; strategies reset their buffers through ``reset_state``.
Every parameter must be covered, or init fails loudly (the "some modules not reached by the init"
bug class); a module whose parameters are covered only in part is an error too, because resetting it
would overwrite the declared part (e.g. DeepNorm's beta gain).

The full tensor of each weight is sampled on CPU from one generator and then copied in, also into
a sharded (DTensor) parameter, so a sharded model gets exactly the weights of the unsharded one
with the same seed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normlab.models.transformer import Decoder, Encoder, EncoderDecoder
from normlab.norms.base import NormStrategy
from normlab.norms.registry import build_strategy


def build_model(
    cfg: Any, vocab_size: int, n_segments: int = 0, device: str | torch.device = "meta"
) -> nn.Module:
    """The architecture named by ``cfg.arch``, on ``device`` (meta: no memory, no init)."""
    with torch.device(device):
        strategy = build_strategy(cfg)
        if cfg.arch == "decoder":
            return Decoder(cfg, strategy, vocab_size)
        if cfg.arch == "encoder":
            return Encoder(cfg, strategy, vocab_size, n_segments=n_segments)
        return EncoderDecoder(cfg, strategy, vocab_size)


def find_strategy(model: nn.Module) -> NormStrategy:
    for module in model.modules():
        if isinstance(module, NormStrategy):
            return module
    raise ValueError("model has no NormStrategy module")


def _assign(param: Tensor, value: Tensor) -> None:
    """Copy a full tensor into ``param``; for a DTensor, only this rank's shard is written."""
    value = value.to(dtype=param.dtype)
    if hasattr(param, "device_mesh") and hasattr(param, "placements"):
        # imported here: a DTensor exists only where torch.distributed.tensor is loaded, and a model
        # that is not sharded should not pay its import (torch.distributed.tensor loads sympy)
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
        param.copy_(value)
    else:
        param.copy_(value.to(param.device))


@torch.no_grad()
def init_weights(model: nn.Module, seed: int | None = None, strategy: NormStrategy | None = None) -> None:
    """Initialise every parameter of ``model`` (materialised, possibly sharded) from its role."""
    strategy = strategy or find_strategy(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    covered: set[int] = set()
    for module in model.modules():
        roles = getattr(module, "param_roles", None)
        if roles is None:
            continue
        pending: dict[int, tuple[nn.Parameter, Tensor]] = {}
        for param, role, site, rows in roles():
            key = id(param)
            if key not in pending:
                pending[key] = (param, torch.empty(tuple(param.shape)))
            full = pending[key][1]
            target = full if rows is None else full[rows]
            target.copy_(strategy.init_spec(site, role).sample(tuple(target.shape), generator))
        for param, full in pending.values():
            _assign(param, full)
            covered.add(id(param))
    for module in model.modules():
        _reset_undeclared(module, covered)
        if isinstance(module, NormStrategy) or hasattr(module, "reset_state"):
            module.reset_state()
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise RuntimeError(f"parameters not initialised: {missing[:5]}")


def _reset_undeclared(module: nn.Module, covered: set[int]) -> None:
    """A module none of whose parameters has a declared role resets itself (norm layers, gates);
    one with only some declared is an error, since resetting it would overwrite the declared part."""
    own = list(module.named_parameters(recurse=False))
    uncovered = [n for n, p in own if id(p) not in covered]
    if not uncovered:
        return
    if len(uncovered) < len(own):
        raise RuntimeError(
            f"{type(module).__name__}: roles are declared for some of its parameters but not for "
            f"{uncovered}; declare a role for every parameter of a module, or for none"
        )
    reset = getattr(module, "reset_parameters", None)
    if reset is None:
        raise RuntimeError(f"{type(module).__name__} has parameters {uncovered} that no init covers")
    reset()
    covered.update(id(p) for _, p in own)


def materialize(model: nn.Module, device: str | torch.device, seed: int | None = None) -> nn.Module:
    """meta -> real storage on ``device`` -> declared init."""
    model.to_empty(device=device)
    init_weights(model, seed=seed)
    return model
