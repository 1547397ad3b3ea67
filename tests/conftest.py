"""Shared fixtures: the staged data mirror, a session-wide data folder, Hydra composition, and a
guard that the suite leaves the working tree as it found it.

Tests never touch the network: ``NORMLAB_DATA_MIRROR`` points at the read-only staged mirror
(``../shared/data`` beside the project) unless the environment already sets it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
STAGED_MIRROR = ROOT.parent / "shared" / "data"

# Keep the 2-core machine usable when several test processes run at once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def mirror_path() -> Path:
    return Path(os.environ.get("NORMLAB_DATA_MIRROR") or STAGED_MIRROR)


@pytest.fixture(scope="session", autouse=True)
def _data_mirror() -> None:
    os.environ.setdefault("NORMLAB_DATA_MIRROR", str(STAGED_MIRROR))


def _tree_status() -> set[str] | None:
    """``git status`` entries of the checkout (untracked files included), or None outside a clone."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return None
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return set(out.stdout.splitlines()) if out.returncode == 0 else None


@pytest.fixture(scope="session", autouse=True)
def _tree_left_as_found():
    """Fails the session when a test wrote into the repository (run records, data, caches): tests
    write under tmp_path; twice a test did not, and the files were committed by accident."""
    before = _tree_status()
    yield
    after = _tree_status()
    if before is not None and after is not None and after - before:
        pytest.fail(f"the tests left files in the repository: {sorted(after - before)[:10]}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder per test session, so tokenizers and encoded splits are built once."""
    return tmp_path_factory.mktemp("data")


def compose_config(config_name: str, overrides: list[str], out_dir: Path, data_dir: Path) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` like the CLI would, with paths under ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.log_dir = str(out_dir / "logs")
        cfg.paths.output_dir = str(out_dir)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path):
    """``make_cfg("train", ["experiment=debug", ...])`` -> a composed config under tmp_path."""

    def _make(
        config_name: str = "train", overrides: list[str] | None = None, out_dir: Path | None = None
    ) -> DictConfig:
        return compose_config(config_name, overrides or [], out_dir or tmp_path, data_dir)

    return _make
