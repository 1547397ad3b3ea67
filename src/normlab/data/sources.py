"""Get verified data-set files into ``data/``: local copy, then a mirror, then the canonical origin.

Every file is pinned by SHA-256 (the staged mirror's SHA256SUMS), so a run never trains on a
silently different file. Machines without internet point ``NORMLAB_DATA_MIRROR`` at a folder or URL
prefix laid out like the staged mirror (``<mirror>/<dataset>/<file>``, plain, not gzipped).

Fetching is safe under races (DDP ranks, parallel test processes): one ``flock`` per data-set
folder serialises fetchers, and each file is written to a temp file in the same folder, verified,
then moved into place with ``os.replace`` so readers never see a partial file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from normlab.errors import DataError

log = logging.getLogger("normlab.data")

MIRROR_ENV = "NORMLAB_DATA_MIRROR"
TIMEOUT_S = 60.0
_STAMP = ".verified"  # json {file: [size, mtime_ns, sha256]}: skip re-hashing unchanged files
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set, as stored in ``data/<dataset>/``."""

    name: str  # file name inside the data-set folder, e.g. "input.txt"
    url: str  # canonical public origin at a pinned commit
    sha256: str  # of the file as stored in data/ (for gzipped origins: of the gunzipped file)
    gzipped: bool = False  # the canonical origin serves ``url`` gzipped (Multi30k)


@dataclass(frozen=True)
class DatasetSource:
    """A data set: its folder name under ``data/`` (and under a mirror) and its pinned files."""

    name: str
    files: tuple[RemoteFile, ...]
    licence: str

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        known = ", ".join(f.name for f in self.files)
        raise DataError(f"{self.name}/{name}: not a file of this data set; known files: {known}")


_GH = "https://raw.githubusercontent.com"
_SHAKESPEARE = f"{_GH}/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare"
_WIKITEXT = (
    f"{_GH}/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
)
_MULTI30K = f"{_GH}/multi30k/dataset/a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw"
_MRPC = f"{_GH}/brmson/dataset-sts/e1d3375f5b3bc24f21aa4e46f96eb379e9fc1081/data/para/msr"

_MULTI30K_SUMS = {
    "test_2016_flickr.cs": "45adb85f688de8407fddcbe1b36dca15d12aab868149b337e2576f2d6d2ff8d8",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
    "test_2016_flickr.fr": "cb3160d69b002bb638e66cc7612fcd56cb0af82eadc9c142dedc438afb885ef6",
    "test_2017_flickr.de": "c3078bc3b36808bf9d20eb2347ed6137016179ef59ec0d2b9b8ecc3fb2880081",
    "test_2017_flickr.en": "ce1450ddc5ab0834502579d77a170849952e15a2938b34cc503bdc25ebb4fb98",
    "test_2017_flickr.fr": "6f3764e31dac41e9455e612958bcfd4e877c5e15cd66df2c2b2be6d9bd83e5b6",
    "test_2017_mscoco.de": "58277df3c75f92f7145a11b910b553d1cf82c439249d4dc237c899609eafac22",
    "test_2017_mscoco.en": "43051fdfa86fd5395182e718a94ca67b1b227b9f7c79596ff0f6b813216981d2",
    "test_2017_mscoco.fr": "39cde3f43f32b0a6bf29ce4917a46329ff32e53070c2fac87506695a740ae0a0",
    "test_2018_flickr.cs": "1db59fe6980c9b3f9bade65122a985e71150214837d76f4768a5a8384c0b2dc7",
    "test_2018_flickr.de": "39fcc8b3331d76fb42d648d019c6898b0d5e58baac87bc2a0bb93f44ec8db207",
    "test_2018_flickr.en": "4e585c2dd525911a6ea7730e9d0b516239af3f1b1ffae6a2130223cfb639f25e",
    "test_2018_flickr.fr": "234b4a887da0da4801a3e2c6f21336231ff7dd46daeb80cfa1b551c8bbb78239",
    "train.cs": "2be68b38c8d586ff4f54eb13cc6e1baaaa053695b3f070d3038303a47f2268da",
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "train.fr": "5925a3c18f1587b6b54b87743106e6e8ab93618edb6f65d19eac0621f853a10d",
    "val.cs": "d53827e469b0a1ca8d57e9e26b2b64c4bc4b33f5479c7b03ae87ae5c882c3e33",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "val.fr": "5304e444d842e962b2dda4d816b70b22a1765b15401642b7ca37a67477e708dc",
}

DATASETS: dict[str, DatasetSource] = {
    "tinyshakespeare": DatasetSource(
        "tinyshakespeare",
        (
            RemoteFile(
                "input.txt",
                f"{_SHAKESPEARE}/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            ),
        ),
        "Shakespeare text, public domain (char-rnn repository: MIT)",
    ),
    "wikitext-2-valid-test": DatasetSource(
        "wikitext-2-valid-test",
        (
            RemoteFile(
                "wiki.valid.tokens",
                f"{_WIKITEXT}/valid.txt",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
            ),
            RemoteFile(
                "wiki.test.tokens",
                f"{_WIKITEXT}/test.txt",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            ),
        ),
        "WikiText-2 (Merity et al. 2016), CC BY-SA 3.0",
    ),
    "multi30k": DatasetSource(
        "multi30k",
        tuple(
            RemoteFile(name, f"{_MULTI30K}/{name}.gz", digest, gzipped=True)
            for name, digest in _MULTI30K_SUMS.items()
        ),
        "Multi30k: non-commercial research and education use only",
    ),
    "mrpc": DatasetSource(
        "mrpc",
        (
            RemoteFile(
                "msr-para-train.tsv",
                f"{_MRPC}/msr-para-train.tsv",
                "446b9a5fa4e8d526b99f1d635f036f89063749783f5d3464ee8c1879724d406d",
            ),
            RemoteFile(
                "msr-para-val.tsv",
                f"{_MRPC}/msr-para-val.tsv",
                "7e5d0ee4ec392b062af73c7cffe82f0725e5b08f6bfdf0915f31bbc470b8bacf",
            ),
            RemoteFile(
                "msr-para-test.tsv",
                f"{_MRPC}/msr-para-test.tsv",
                "51a1f197d8786712d2f0d97700f5be653b7488a96cde00e158159350d23e3d90",
            ),
        ),
        "MRPC: Microsoft Research Shared Source License, non-commercial use only",
    ),
}


def ensure_dataset(name: str, data_dir: str | Path, files: Iterable[str] | None = None) -> Path:
    """Return ``data_dir/name`` with the requested files (all by default) present and verified.

    Per file: a local copy is used if its SHA-256 matches (a wrong hash is an error, never silently
    overwritten: it may be the user's edit); otherwise it is fetched from ``$NORMLAB_DATA_MIRROR``
    if set, else from the canonical URL. Raises one single-line ``DataError`` if nothing works.
    """
    if name not in DATASETS:
        raise DataError(f"data set {name!r} is unknown; known data sets: {', '.join(DATASETS)}")
    source = DATASETS[name]
    names = [f.name for f in source.files] if files is None else list(files)
    wanted = [source.file(f) for f in names]
    folder = Path(data_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    stamps = _read_stamps(folder)
    if all(_stamp_ok(folder / f.name, f, stamps) for f in wanted):
        return folder  # fast path: nothing to hash, no lock taken
    with _locked(folder / ".lock"):
        stamps = _read_stamps(folder)  # another process may have done the work meanwhile
        for rf in wanted:
            path = folder / rf.name
            if _stamp_ok(path, rf, stamps):
                continue
            if path.exists():
                _check_local(path, rf)
                log.info("%s/%s: using local copy %s (verified)", name, rf.name, path)
            else:
                origin = _fetch(source, rf, folder, Path(data_dir))
                log.info("%s/%s: fetched from %s (verified)", name, rf.name, origin)
            st = path.stat()
            stamps[rf.name] = [st.st_size, st.st_mtime_ns, rf.sha256]
        with atomic_output(folder / _STAMP) as tmp:
            tmp.write_text(json.dumps(stamps, indent=1, sort_keys=True))
    return folder


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _read_stamps(folder: Path) -> dict[str, list]:
    try:
        return json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return {}


def _stamp_ok(path: Path, rf: RemoteFile, stamps: dict[str, list]) -> bool:
    """True if ``path`` was verified before and has not changed since (same size and mtime)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stamps.get(rf.name) == [st.st_size, st.st_mtime_ns, rf.sha256]


def _check_local(path: Path, rf: RemoteFile) -> None:
    actual = sha256_file(path)
    if actual != rf.sha256:
        raise DataError(
            f"{path} has the wrong SHA-256 (expected {rf.sha256}, got {actual}); "
            "it is corrupted or a different version: delete it and rerun to fetch it again"
        )


def _fetch(source: DatasetSource, rf: RemoteFile, folder: Path, data_dir: Path) -> str:
    """Fetch ``rf`` into ``folder`` from the mirror, else the canonical URL; return the origin."""
    rel = f"{source.name}/{rf.name}"
    reasons = []
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        is_url = mirror.startswith(("http://", "https://", "file://"))
        origin = f"{mirror.rstrip('/')}/{rel}" if is_url else str(Path(mirror) / rel)
        try:
            with _open_url(origin) if is_url else open(origin, "rb") as src:
                _store(src, folder / rf.name, rf)
            return origin
        except (OSError, DataError) as exc:
            reasons.append(f"mirror {origin}: {_one_line(exc)}")
    else:
        reasons.append(f"mirror: {MIRROR_ENV} is not set")
    try:
        with _open_url(rf.url) as raw:
            src = gzip.GzipFile(fileobj=raw) if rf.gzipped else raw
            _store(src, folder / rf.name, rf)
        return rf.url
    except (OSError, EOFError, DataError) as exc:
        reasons.append(f"canonical {rf.url}: {_one_line(exc)}")
    raise DataError(
        f"{rel} is not in {data_dir}/ and could not be fetched ({'; '.join(reasons)}); "
        f"set {MIRROR_ENV} to a folder or URL prefix holding {rel}, "
        f"or copy the file to {folder / rf.name} ({source.licence})"
    )


def _open_url(url: str) -> BinaryIO:
    return urllib.request.urlopen(url, timeout=TIMEOUT_S)  # noqa: S310 (http/https/file only)


def _store(src: BinaryIO, dest: Path, rf: RemoteFile) -> None:
    """Stream ``src`` to a temp file beside ``dest``, verify its SHA-256, then move it in place."""
    h = hashlib.sha256()
    with atomic_output(dest) as tmp, open(tmp, "wb") as out:
        while block := src.read(_CHUNK):
            h.update(block)
            out.write(block)
        if h.hexdigest() != rf.sha256:
            raise DataError(f"checksum mismatch (expected {rf.sha256}, got {h.hexdigest()})")


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; if the block succeeds, move it onto ``dest`` atomically.

    Readers (other ranks, other processes) see either no file or the complete one, never a prefix.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data and caches are meant to be shared
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock (POSIX ``flock``); a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic os.replace still keeps files whole
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
