"""ensure_dataset: local copy, folder / file:// mirrors, canonical fallback, checksums, races."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import multiprocessing as mp
import os
import re
import time
from pathlib import Path

import pytest

from normlab.data import sources
from normlab.data.sources import DATASETS, ensure_dataset, sha256_file
from normlab.errors import DataError

MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DEAD_URL = "http://127.0.0.1:9"  # discard port: connection refused at once


def staged_sums(name: str) -> dict[str, str]:
    lines = (MIRROR / name / "SHA256SUMS").read_text().split("\n")
    return {ln.split()[1]: ln.split()[0] for ln in lines if ln.strip()}


def with_url(monkeypatch: pytest.MonkeyPatch, name: str, file: str, url: str) -> None:
    """Point one file's canonical URL elsewhere (DATASETS entries are frozen, so swap them)."""
    src = DATASETS[name]
    files = tuple(dataclasses.replace(f, url=url) if f.name == file else f for f in src.files)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(src, files=files))


def test_registry_pins_every_staged_file() -> None:
    assert set(DATASETS) == {p.name for p in MIRROR.iterdir() if (p / "SHA256SUMS").exists()}
    for name, src in DATASETS.items():
        assert {f.name: f.sha256 for f in src.files} == staged_sums(name)
        for f in src.files:
            assert f.url.startswith("https://raw.githubusercontent.com/")
            assert re.search(r"/[0-9a-f]{40}/", f.url), f"{f.url} is not pinned to a commit"
            assert f.gzipped == (name == "multi30k") == f.url.endswith(".gz")


def test_folder_mirror_copies_and_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
    with caplog.at_level(logging.INFO, logger="normlab.data"):
        folder = ensure_dataset("wikitext-2-valid-test", tmp_path)
    assert folder == tmp_path / "wikitext-2-valid-test"
    for file, digest in staged_sums("wikitext-2-valid-test").items():
        assert sha256_file(folder / file) == digest
        assert f"fetched from {MIRROR / 'wikitext-2-valid-test' / file}" in caplog.text
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*.part"))


def test_file_url_mirror_fetches_only_requested_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", MIRROR.as_uri())
    folder = ensure_dataset("multi30k", tmp_path, files=["val.de", "val.en"])
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "val.de",
        "val.en",
    ]
    assert (folder / "val.de").read_bytes() == (MIRROR / "multi30k" / "val.de").read_bytes()


def test_verified_stamp_skips_rehash_until_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
    folder = ensure_dataset("tinyshakespeare", tmp_path)

    def no_hash(path: Path) -> str:
        raise AssertionError(f"re-hashed {path}")

    monkeypatch.setattr(sources, "sha256_file", no_hash)
    assert ensure_dataset("tinyshakespeare", tmp_path) == folder  # stamp hit: no hashing
    st = (folder / "input.txt").stat()
    os.utime(folder / "input.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="re-hashed"):
        ensure_dataset("tinyshakespeare", tmp_path)  # touched: must verify again


def test_corrupted_local_file_is_an_error_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
    bad = tmp_path / "tinyshakespeare" / "input.txt"
    bad.parent.mkdir()
    bad.write_text("First Citizen:\nnot quite\n")
    with pytest.raises(DataError) as err:
        ensure_dataset("tinyshakespeare", tmp_path)
    msg = str(err.value)
    assert str(bad) in msg and DATASETS["tinyshakespeare"].files[0].sha256 in msg
    assert sha256_file(bad) in msg and "delete" in msg
    assert bad.read_text() == "First Citizen:\nnot quite\n"


def test_no_mirror_and_dead_canonical_gives_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NORMLAB_DATA_MIRROR", raising=False)
    with_url(monkeypatch, "tinyshakespeare", "input.txt", f"{DEAD_URL}/input.txt")
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        ensure_dataset("tinyshakespeare", tmp_path)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg
    expected_start = f"tinyshakespeare/input.txt is not in {tmp_path}/ and could not be fetched"
    assert msg.startswith(expected_start)
    assert "NORMLAB_DATA_MIRROR is not set" in msg and f"canonical {DEAD_URL}/input.txt" in msg
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in msg
    assert not (tmp_path / "tinyshakespeare" / "input.txt").exists()


def test_bad_mirror_content_is_rejected_and_both_sources_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mirror"
    (fake / "tinyshakespeare").mkdir(parents=True)
    (fake / "tinyshakespeare" / "input.txt").write_text("To be, or not to be\n")
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(fake))
    with_url(monkeypatch, "tinyshakespeare", "input.txt", f"{DEAD_URL}/input.txt")
    with pytest.raises(DataError) as err:
        ensure_dataset("tinyshakespeare", tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and "checksum mismatch" in msg
    assert f"mirror {fake / 'tinyshakespeare' / 'input.txt'}" in msg and DEAD_URL in msg
    folder = tmp_path / "data" / "tinyshakespeare"
    assert not (folder / "input.txt").exists() and not list(folder.glob(".*.part"))


def test_canonical_gzipped_origin_is_gunzipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = tmp_path / "origin" / "val.fr.gz"
    origin.parent.mkdir()
    origin.write_bytes(gzip.compress((MIRROR / "multi30k" / "val.fr").read_bytes()))
    monkeypatch.delenv("NORMLAB_DATA_MIRROR", raising=False)
    with_url(monkeypatch, "multi30k", "val.fr", origin.as_uri())
    folder = ensure_dataset("multi30k", tmp_path / "data", files=["val.fr"])
    assert sha256_file(folder / "val.fr") == staged_sums("multi30k")["val.fr"]


def test_unknown_names_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known data sets: tinyshakespeare"):
        ensure_dataset("shakespeare", tmp_path)
    with pytest.raises(DataError, match="multi30k/train.xx: not a file"):
        ensure_dataset("multi30k", tmp_path, files=["train.xx"])


def test_two_processes_racing_both_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_DATA_MIRROR", str(MIRROR))
    args = [("wikitext-2-valid-test", str(tmp_path))] * 2
    with mp.get_context("spawn").Pool(2) as pool:
        folders = pool.starmap_async(ensure_dataset, args).get(timeout=120)
    assert folders == [tmp_path / "wikitext-2-valid-test"] * 2
    for file, digest in staged_sums("wikitext-2-valid-test").items():
        assert sha256_file(folders[0] / file) == digest
    assert not list(folders[0].glob(".*.part"))
