"""Token-id caches: absent or damaged ones read as None (re-encode), never as an error or a traceback."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

from normlab.data.id_cache import is_id_tensor, read_id_cache, write_id_cache


def test_round_trip_and_absent(tmp_path: Path) -> None:
    path = tmp_path / "ids.pt"
    assert read_id_cache(path, is_id_tensor) is None
    ids = {"ids": torch.arange(7, dtype=torch.int32), "offsets": torch.tensor([0, 3, 7])}
    write_id_cache(path, ids)
    back = read_id_cache(path, lambda obj: isinstance(obj, dict))
    assert back.keys() == ids.keys() and all(torch.equal(back[k], ids[k]) for k in ids)
    assert [p.name for p in tmp_path.iterdir()] == ["ids.pt"]  # no temp file left behind


class _Code:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", bytes(range(100)), "code", "floats"])
def test_damaged_caches_read_as_none_with_one_warning(tmp_path: Path, caplog, content) -> None:
    path = tmp_path / "ids.pt"
    if content == "code":  # a pickle that would run code: refused by weights_only, then re-encoded
        torch.save(_Code(), path)
    elif content == "floats":  # readable, but not token ids
        torch.save(torch.zeros(3), path)
    else:
        path.write_bytes(content)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="normlab.data"):
        warnings.simplefilter("error")
        assert read_id_cache(path, is_id_tensor) is None
    (record,) = caplog.records
    assert "is unreadable" in record.getMessage() and "\n" not in record.getMessage()
