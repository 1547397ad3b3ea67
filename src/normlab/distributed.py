"""Distributed and memory policies applied to a freshly built (meta-device) network.

Model code never wraps itself: the task's ``configure_model`` hands the network to
:func:`parallelize`, which applies, in torchtitan's order, activation checkpointing per block and
then (under an FSDP strategy) sharding, before any memory is allocated or any weight initialised.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def transformer_blocks(net: nn.Module) -> list[tuple[nn.ModuleList, int]]:
    """(container, index) of every Transformer block, the unit of checkpointing and sharding."""
    from normlab.models.transformer import TransformerStack

    found = []
    for module in net.modules():
        if isinstance(module, TransformerStack):
            found.extend((module.layers, i) for i in range(len(module.layers)))
    return found


def apply_activation_checkpointing(net: nn.Module) -> nn.Module:
    """Recompute each block's activations in backward (non-reentrant torch checkpoint)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        checkpoint_wrapper,
    )

    for layers, i in transformer_blocks(net):
        layers[i] = checkpoint_wrapper(layers[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return net


def parallelize(net: nn.Module, task: Any) -> nn.Module:
    """Apply the run's memory / distribution policies to ``net`` (still on the meta device)."""
    if task.model_cfg.activation_checkpointing:
        apply_activation_checkpointing(net)
    return net


def validate_trainer_config(node: Any) -> Any:
    """Check the trainer node before anything starts (precision/strategy/hardware combinations)."""
    return node


def read_checkpoint_extras(path: Any) -> dict[str, Any]:
    """The ``normlab`` entry of a checkpoint file (model/data/tokenizer for eval.py)."""
    import torch

    from normlab.tasks.base import CHECKPOINT_KEY

    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    return ckpt.get(CHECKPOINT_KEY) or {}


def load_task(task_cls: type, path: Any, overrides: dict[str, Any]) -> Any:
    """Rebuild a task from a checkpoint (``configure_model`` then the saved weights)."""
    return task_cls.load_from_checkpoint(str(path), map_location="cpu", **overrides)
