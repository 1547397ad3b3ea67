"""On-disk caches of encoded token ids: derived data, so an unreadable one is rebuilt, never fatal.

Each data module encodes its splits once and keeps the ids beside the data (``data/cache``), keyed by
the file hashes and the tokenizer digest; loading them takes milliseconds where encoding takes
seconds. The files are written atomically (:func:`normlab.data.sources.atomic_output`), so a killed
run leaves no half file; a cache damaged some other way (a disk fault, a hand edit, a copy cut
short) is reported in one warning and encoded again from the data, which is the source of truth.
Reads go through :func:`normlab.checkpoints.load_as_data` like every other normlab read
(``weights_only=True``): a cache is tensors and dicts only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from normlab.checkpoints import first_line, load_as_data
from normlab.data.sources import atomic_output

log = logging.getLogger(__name__)


def read_id_cache(path: Path, valid: Callable[[Any], bool]) -> Any | None:
    """The cached object at ``path`` if it is readable and ``valid(obj)``; else None (re-encode),
    with one warning when a file was there."""
    if not path.exists():
        return None
    try:
        obj = load_as_data(path)
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways; all mean "re-encode"
        reason = first_line(err)[:100]
        log.warning("data: token cache %s is unreadable (%s); encoding the data again", path, reason)
        return None
    if not valid(obj):
        log.warning(
            "data: token cache %s is unreadable (holds a %s, not token ids); encoding the data again",
            path,
            type(obj).__name__,
        )
        return None
    return obj


def is_id_tensor(obj: Any) -> bool:
    """One split's ids: a 1-d integer tensor."""
    return isinstance(obj, torch.Tensor) and obj.dim() == 1 and not obj.is_floating_point()


def write_id_cache(path: Path, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically: racing ranks see no file or the whole file."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
