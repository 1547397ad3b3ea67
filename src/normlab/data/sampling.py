"""A training-order sampler that makes resumed runs see exactly the batches a straight run sees.

Lightning restores the model, optimiser and loop counters from a mid-epoch checkpoint, but a plain
shuffled ``DataLoader`` starts the epoch again from its first batch with a fresh permutation, so a
resumed run silently trains on different data (Lightning only warns). Here the order is a pure
function of ``(seed, epoch, rank, world_size)`` (``torch.randperm`` seeded with ``seed + epoch``,
then every ``world_size``-th index from ``rank``, as in ``DistributedSampler``) and the datamodule
tells the sampler how many batches of the current epoch were already consumed, read from the
restored loop state (:func:`resume_position`). Subclassing ``DistributedSampler`` also keeps
Lightning from wrapping it again under DDP / FSDP: the sampler is already rank-aware.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (works with ``num_replicas=1``) that can start mid-epoch."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self.resume_epoch: int | None = None
        self.resume_skip = 0

    def resume(self, epoch: int, samples_done: int) -> None:
        """In epoch ``epoch`` only, skip the first ``samples_done`` indices of this rank."""
        self.resume_epoch, self.resume_skip = epoch, max(0, samples_done)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self.resume_epoch is not None and self.epoch == self.resume_epoch:
            indices = indices[self.resume_skip :]
        return iter(indices)


def resume_position(trainer: Any, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches already consumed in it)`` from the trainer's restored fit loop.

    ``processed`` (not ``completed``) counts a batch whose step finished even when the checkpoint
    was written from ``on_train_batch_end`` (before Lightning marks it completed). A checkpoint
    written at the very end of an epoch resumes at the start of the next one: ``(epoch, 0)``.
    Outside a fit (no trainer, sanity checks, eval) this is ``(0, 0)``.
    """
    if trainer is None:
        return 0, 0
    try:
        epoch = int(trainer.current_epoch)
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    except AttributeError:
        return 0, 0
    if done >= batches_per_epoch:
        return epoch, 0
    return epoch, done


def train_sampler(dataset: Dataset, trainer: Any, batch_size: int, seed: int) -> ResumableSampler:
    """The shuffled training sampler of every datamodule: order fixed by ``(seed, epoch, rank)``,
    positioned where a restored trainer left off (at the start when there is no trainer)."""
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    epoch, done = resume_position(trainer, len(sampler) // batch_size)
    sampler.set_epoch(epoch)
    sampler.resume(epoch, done * batch_size)
    return sampler
