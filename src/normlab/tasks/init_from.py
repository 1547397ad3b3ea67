"""``model.init_from``: start an encoder from the encoder of a masked-LM checkpoint.

What is loaded: every parameter and buffer under ``net.encoder.`` of the checkpoint's state dict
(token and segment embeddings, all blocks, the strategy's buffers, the final norm if any), into
the encoder of a freshly built and initialised task, after materialisation (and sharding: values
are distributed into DTensor parameters). The MLM head is not loaded; the task's own head keeps
its declared init. The tokenizer travels separately: ``configs/data/mrpc.yaml`` points
``data.tokenizer_from`` at the same checkpoint, and this module checks both agree.

Every mismatch is one ``ConfigError`` line naming the key and the fix, checked in this order:
missing file / sharded folder / not a normlab checkpoint / no encoder inside, then the
architecture keys of the saved model config (a strategy or depth change would load without a
shape error but compute something else), then the tokenizer, then names and shapes of tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import distribute_tensor

from normlab.checkpoints import CHECKPOINT_KEY, check_same_architecture, read_checkpoint_meta
from normlab.errors import ConfigError
from normlab.typed_config import as_plain

log = logging.getLogger("normlab")

PREFIX = "net.encoder."


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_encoder_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any], str]:
    """(encoder state dict without prefix, saved model config, tokenizer json) of a checkpoint."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"model.init_from: {path} does not exist; pass a checkpoint written by "
            "experiment=mlm_pretrain (<run dir>/checkpoints/last.ckpt)"
        )
    if path.is_dir():
        raise ConfigError(
            f"model.init_from: {path} is a sharded checkpoint folder; consolidate it into one file "
            "first: python -m lightning.pytorch.utilities.consolidate_checkpoint <folder>"
        )
    ckpt = read_checkpoint_meta(path, "model.init_from")
    extra = ckpt.get(CHECKPOINT_KEY)
    if not extra or "state_dict" not in ckpt:
        raise ConfigError(
            f"model.init_from: {path} is not a normlab checkpoint (no '{CHECKPOINT_KEY}' entry)"
        )
    state = {k[len(PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    if not state:
        raise ConfigError(
            f"model.init_from: {path} holds no encoder weights (task {extra.get('task')}); "
            "pass a checkpoint written by experiment=mlm_pretrain"
        )
    saved_model = (ckpt.get("hyper_parameters") or {}).get("model") or {}
    return state, dict(saved_model), extra.get("tokenizer") or ""


def check_compatible(model_cfg: Any, saved_model: dict[str, Any], path: str | Path) -> None:
    """The architecture keys of this run must equal those the checkpoint was trained with."""
    current = as_plain(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    check_same_architecture(current, saved_model, "model.init_from", f"the pretraining checkpoint {path}")


def check_tokenizer(saved: str, current: str | None, path: str | Path) -> None:
    if current is None:
        raise ConfigError(
            "model.init_from: the task has no tokenizer to compare with the checkpoint's; "
            "set task.tokenizer_json (normlab.run.train does) before fitting"
        )
    if saved != current:
        raise ConfigError(
            f"model.init_from: the checkpoint's tokenizer ({_digest(saved)}) differs from the one "
            f"the data uses ({_digest(current)}); leave data.tokenizer_from at ${{model.init_from}} "
            f"so the data is encoded with {path}'s tokenizer"
        )


@torch.no_grad()
def copy_state(module: nn.Module, state: dict[str, Tensor], path: str | Path) -> int:
    """Copy ``state`` into ``module``'s parameters and persistent buffers in place (no new
    tensors, so optimizers and sharding stay valid); names and shapes must match exactly."""
    target = module.state_dict(keep_vars=True)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        what = f"'{missing[0]}' is missing" if missing else f"'{unexpected[0]}' is unexpected"
        raise ConfigError(
            f"model.init_from: encoder tensor {what} in {path} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected); pretrain with the same model settings"
        )
    for name, dest in target.items():
        value = state[name]
        if tuple(value.shape) != tuple(dest.shape):
            raise ConfigError(
                f"model.init_from: encoder tensor '{name}' has shape {tuple(value.shape)} in {path} "
                f"but {tuple(dest.shape)} here (vocabulary size or model size differs); pretrain "
                "with the same model settings and tokenizer"
            )
        value = value.to(dtype=dest.dtype)
        if hasattr(dest, "device_mesh") and hasattr(dest, "placements"):  # FSDP2 DTensor
            value = distribute_tensor(value.to(dest.device), dest.device_mesh, dest.placements)
        dest.copy_(value)
    return len(target)


def load_pretrained_encoder(encoder: nn.Module, model_cfg: Any, tokenizer_json: str | None) -> None:
    """Load ``model_cfg.init_from``'s encoder into ``encoder`` after checking it fits."""
    path = model_cfg.init_from
    state, saved_model, saved_tokenizer = read_encoder_checkpoint(path)
    check_compatible(model_cfg, saved_model, path)
    check_tokenizer(saved_tokenizer, tokenizer_json, path)
    n = copy_state(encoder, state, path)
    log.info("model.init_from: loaded %d encoder tensors from %s", n, path)
