"""normlab checkpoints: what they hold, how they are read (as data, never as code), and how older
ones are brought up to date. The one module that opens a checkpoint.

A normlab checkpoint is a Lightning checkpoint (a ``.ckpt`` file, or under FSDP2 a directory of DCP
shards plus ``meta.pt``) with one extra entry, ``checkpoint["normlab"]``: the format version, the
task class, the data config and the tokenizer JSON, so that the checkpoint alone rebuilds the run
(``eval.py`` needs nothing else). The model and optimiser configs are Lightning's
``hyper_parameters``.

Reading is always ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts, and
nothing that can run code when unpickled. normlab stores no other type (``SAFE_GLOBALS`` is the
explicit allow-list, and it is empty), so a checkpoint that carries any other object is refused in one
line naming the file and the type. Every failure to read (missing, empty, truncated, random bytes, a
directory that is not a sharded checkpoint, a shard missing) is one :class:`ConfigError` line.

Formats: 1 = before the ``format`` field existed (BranchNorm had only the form now called
``standardize``, with a default T of 4000; activation checkpointing was a model key); 2 = now.
:func:`migrate` turns a format-1 checkpoint into format 2 in memory.
"""

from __future__ import annotations

import ctypes
import io
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from normlab.config import architecture_keys
from normlab.errors import CheckpointWriteError, ConfigError

CHECKPOINT_KEY = "normlab"
FORMAT = 2
SHARDED_METADATA = "meta.pt"  # what Lightning writes beside the DCP shards (non-tensor state)
DCP_METADATA = ".metadata"
SAFE_GLOBALS: tuple[Any, ...] = ()  # types beyond tensors and builtins that normlab stores: none


def checkpoint_entry(task: Any) -> dict[str, Any]:
    """``checkpoint["normlab"]`` for a task being saved."""
    cls = type(task)
    return {
        "format": FORMAT,
        "task": f"{cls.__module__}.{cls.__qualname__}",
        "tokenizer": task.tokenizer_json,
        "data": task.hparams.get("data"),
    }


# --- reading --------------------------------------------------------------------------------------
def is_sharded_checkpoint(path: Any) -> bool:
    """A DCP directory written by FSDP2 (``save_distributed_checkpoint=true``)."""
    return Path(path).is_dir() and (Path(path) / SHARDED_METADATA).is_file()


def load_as_data(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with normlab's allow-list: how every file
    normlab wrote with ``torch.save`` is read (checkpoints here, token-id caches in
    :mod:`normlab.data.id_cache`). Raises whatever torch raises; callers turn it into one line."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
        # bytes that are not a torch zip go to the legacy unpickler, which warns about the "pickle
        # protocol" of whatever the first bytes say; the caller's error is the one line
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(str(path), map_location="cpu", weights_only=True)


def first_line(err: BaseException) -> str:
    """An exception as one line: the first line of its message, or its type name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def safe_load(path: Path, key: str) -> Any:
    """:func:`load_as_data` with one-line errors naming ``key``."""
    try:
        return load_as_data(path)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} does not exist; pass a checkpoint written by train.py") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path} is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        if found:
            raise ConfigError(
                f"{key}: {path} holds a {found.group(1)} object, which is code, not data; normlab reads "
                "checkpoints with weights_only=True and refuses it (re-save the weights as plain tensors)"
            ) from None
        raise ConfigError(f"{key}: {path} is not a readable checkpoint ({_reason(err)})") from None
    except Exception as err:  # noqa: BLE001 - corrupt bytes make the unpickler fail in any way
        # (EOFError, RuntimeError, ValueError, OSError, and IndexError / KeyError from its stack
        # and memo on random bytes): to the user they all mean the same thing
        raise ConfigError(f"{key}: {path} is not a readable checkpoint ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = first_line(err)
    if isinstance(err, EOFError) or "empty" in text.lower():
        return "empty or truncated file"
    if isinstance(err, (IndexError, KeyError)):  # the unpickler's stack or memo, on garbage
        return "corrupt: neither a torch zip archive nor a pickle"
    if "central directory" in text or "PytorchStreamReader" in text or "zip archive" in text:
        return "truncated or corrupt: not a complete torch zip archive"
    return f"corrupt: {text[:120]}"


def check_sharded_complete(path: Path, key: str) -> None:
    """Every shard file that the DCP metadata of ``path`` refers to must exist."""
    metadata = path / DCP_METADATA
    if not metadata.is_file():
        raise ConfigError(f"{key}: {path} has no {DCP_METADATA}; the sharded checkpoint is incomplete")
    try:
        meta = dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:  # noqa: BLE001 - any failure to parse means the same thing to the user
        raise ConfigError(f"{key}: {path}/{DCP_METADATA} is unreadable ({_reason(err)})") from None
    files = {info.relative_path for info in (meta.storage_data or {}).values()}
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing:
        raise ConfigError(
            f"{key}: {path} is missing shard {missing[0]} ({len(missing)} of {len(files)} files); "
            "the sharded checkpoint is incomplete, use another one"
        )


def read_checkpoint_meta(path: Any, key: str = "ckpt_path") -> dict[str, Any]:
    """Everything a checkpoint holds but the sharded tensors (a file's whole dict, or a sharded
    directory's ``meta.pt``), migrated to the current format."""
    path = Path(path)
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            raise ConfigError(
                f"{key}: {path} is a directory without {SHARDED_METADATA}; pass a .ckpt file "
                "or a sharded checkpoint directory written by trainer=fsdp"
            )
        check_sharded_complete(path, key)
        path = path / SHARDED_METADATA
    elif path.is_file() and path.stat().st_size == 0:
        raise ConfigError(f"{key}: {path} is empty (0 bytes); the write that made it did not finish")
    ckpt = safe_load(path, key)
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{key}: {path} holds a {type(ckpt).__name__}, not a Lightning checkpoint")
    return migrate(ckpt)


def read_extras(path: Any, key: str = "ckpt_path") -> dict[str, Any]:
    """The ``normlab`` entry (task class, data config, tokenizer), or a one-line error."""
    extras = read_checkpoint_meta(path, key).get(CHECKPOINT_KEY)
    if not extras:
        raise ConfigError(f"{key}: {path} is not a normlab checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return extras


def migrate(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Bring a checkpoint dict to the current format, in place (format 1 -> 2)."""
    extras = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(extras, dict) or extras.get("format", 1) >= FORMAT:
        return ckpt
    model = (ckpt.get("hyper_parameters") or {}).get("model")
    if isinstance(model, dict):
        if model.get("norm") == "branchnorm":
            # format 1 had one BranchNorm, the variance-exponent reading (now form=standardize),
            # and its default T was 4000
            model["norm_args"] = {
                "form": "standardize",
                "max_norm_step": 4000,
                **(model.get("norm_args") or {}),
            }
        model.pop("activation_checkpointing", None)  # now compute.activation_checkpointing
    extras["format"] = FORMAT
    return ckpt


# --- writing --------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _free_mb(path: Path) -> float:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return float("nan")


def write_failed(path: Path, err: OSError) -> CheckpointWriteError:
    """One line naming the file, the reason and the free space; the previous checkpoint is intact."""
    return CheckpointWriteError(
        f"checkpoint {path} could not be written ({err.strerror or err}; {_free_mb(path.parent):.0f} MB free "
        f"in {path.parent}); the previous checkpoint there is intact: free space or set paths.log_dir"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written as temp file + fsync + ``os.replace`` in the same folder: a reader (or
    a resume after ``kill -9``) sees the old complete file or the new complete file, never a torn one.
    (Lightning's own writer stages the bytes in the system temp folder and moves them, which is a
    copy, not a rename, when that folder is on another file system.) A failed write removes the temp
    file and raises :class:`CheckpointWriteError`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with tmp.open("wb") as f:
                self._write(buffer.getbuffer(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise write_failed(path, err) from None

    def _write(self, data: memoryview, f: Any) -> None:
        """The one write of the bytes (a seam the crash tests use to die half-way through)."""
        f.write(data)


_RENAME_EXCHANGE = 2


def swap_directories(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` atomically; the old ``target`` (if any) is removed.

    Linux ``renameat2(RENAME_EXCHANGE)`` swaps the two names in one step; where it is unavailable,
    the old directory is moved aside first, so at every moment one complete checkpoint exists under
    ``target`` or under ``<target>.old``."""
    if not target.exists():
        os.replace(new, target)
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd = -100
        ok = libc.renameat2(at_fdcwd, bytes(new), at_fdcwd, bytes(target), _RENAME_EXCHANGE) == 0
    except (AttributeError, OSError):
        ok = False
    if ok:
        shutil.rmtree(new)  # now the old checkpoint
    else:
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old)
    _fsync_dir(target.parent)


# --- comparing and loading ------------------------------------------------------------------------
def check_same_architecture(current: dict[str, Any], saved: dict[str, Any], key: str, where: str) -> None:
    """The architecture keys (``normlab.config.architecture_keys``) must agree between the model
    config of this run and the one a checkpoint was trained with."""

    for name in architecture_keys():
        if name in saved and saved[name] != current.get(name):
            raise ConfigError(
                f"model.{name}: {current.get(name)!r} here but {saved[name]!r} in {where}; set "
                f"model.{name}={saved[name]!r} to use it ({key})"
            )


def check_task(extras: dict[str, Any], task: Any, path: Any, key: str = "ckpt_path") -> None:
    """A checkpoint of one task family cannot resume another (an MT checkpoint for the LM task)."""
    cls = type(task)
    expected = f"{cls.__module__}.{cls.__qualname__}"
    if extras.get("task") != expected:
        saved = str(extras.get("task")).rsplit(".", 1)[-1]
        raise ConfigError(
            f"{key}: {path} was written by {saved}, not {cls.__name__}; resume it with the experiment "
            "that trained it, or evaluate it with eval.py"
        )


def load_task(task_cls: type, path: Any, overrides: dict[str, Any]) -> Any:
    """Rebuild a task from a checkpoint file or sharded directory, unsharded in this process."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    task = task_cls(**{**meta["hyper_parameters"], **overrides})
    task.on_load_checkpoint(meta)
    task.configure_model()
    if path.is_dir():
        load_sharded_weights(task, path)
    else:
        state = meta["state_dict"]
        missing, unexpected = task.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = f"'{missing[0]}' is missing" if missing else f"'{unexpected[0]}' is unexpected"
            raise ConfigError(
                f"ckpt_path: tensor {what} in {path} ({len(missing)} missing, {len(unexpected)} unexpected); "
                "the checkpoint does not match the model its config describes"
            )
    return task


def load_sharded_weights(module: nn.Module, path: Any) -> None:
    """Read a DCP directory's model weights into an ordinary (unsharded) module, in one process.

    DCP stores every tensor with its global shape, so the shards of any world size reassemble
    here; keys go through ``get_model_state_dict`` so wrapper prefixes (activation checkpointing)
    match the names FSDP saved.
    """
    state = {"state_dict": get_model_state_dict(module)}
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(module, state["state_dict"])
