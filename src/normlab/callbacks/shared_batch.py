"""One batch that every rank sees the same: the first batch of a loader, taken on rank 0 and
broadcast, for measurements made outside the training loop.

Why: the stability monitor's probe (``F(x, theta_t)`` on a fixed batch) and Admin's profiling pass
(omega from the variances of one batch) must run the same forward on every rank: under FSDP2 the
forward is collective, and ranks that measured different batches would disagree on the result.
Taking the batch must not disturb training either, so the global RNG state (which a DataLoader
iterator draws from for its base seed) is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def slice_batch(batch: Any, n: int | None) -> Any:
    """The first ``n`` examples of a batch (dict of tensors / lists); all of it for ``None``."""
    if n is None:
        return batch
    if isinstance(batch, dict):
        return {k: slice_batch(v, n) for k, v in batch.items()}
    if isinstance(batch, (Tensor, list, tuple)):
        return batch[:n]
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, Tensor) else batch


def first_batch_on_every_rank(
    is_rank_zero: bool, make_loader: Callable[[], Any] | None, device: torch.device, size: int | None = None
) -> Any:
    """The first ``size`` examples of ``make_loader()``'s first batch on ``device``, the same on every
    rank (taken on rank 0), or None on every rank when there is no loader or it yields nothing. The
    global RNG state is unchanged."""
    batch = None
    if is_rank_zero and make_loader is not None:
        with torch.random.fork_rng(devices=[]):
            loader = make_loader()
            first = next(iter(loader), None) if loader is not None else None
            batch = slice_batch(first, size) if first is not None else None
    if distributed():
        holder = [batch]
        dist.broadcast_object_list(holder, src=0)
        batch = holder[0]
    return to_device(batch, device) if batch is not None else None
