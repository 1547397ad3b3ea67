"""The command-line contract of ``train.py`` and ``eval.py``: one line and a non-zero exit for every
mistake a user can make, and nothing left behind by a command that failed.

- :func:`prepare_argv` runs before Hydra: it lets the open config nodes take keys without Hydra's
  ``+`` (``model.norm_args.*``, ``model.residual_warmup.*``) and composes the config once, so that
  an unknown group option (``experiment=no_such_exp``), an unknown or moved key or a malformed
  override fails in one line that lists what is available, instead of Hydra's multi-line report;
- :func:`one_line_errors` wraps the Hydra task function: :class:`ConfigError` -> exit 2,
  :class:`TrainingDiverged` -> exit 3, each as one ``normlab: error:`` line; a run folder that holds
  nothing but Hydra's own files (the command failed before training) is removed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.exceptions import MisconfigurationException

from normlab.config import MOVED_KEYS, ModelConfig
from normlab.errors import CheckpointWriteError, ConfigError, TrainingDiverged
from normlab.launch import register_resolvers

# Config nodes whose keys are open in YAML ({} or null) and typed only later, in Python.
OPEN_NODES = ("model.norm_args.", "model.residual_warmup.")
# What a run folder of a failed-before-training command holds (Hydra writes these at job start).
HYDRA_ONLY = {".hydra"}
EXIT_CONFIG, EXIT_DIVERGED, EXIT_WRITE = 2, 3, 4


def open_node_overrides(argv: list[str]) -> list[str]:
    """Let ``model.norm_args.<key>=value`` and ``model.residual_warmup.<key>=value`` work without
    Hydra's ``+`` prefix.

    ``model.norm_args`` is ``{}`` in YAML (its keys depend on the chosen strategy) and
    ``model.residual_warmup`` is ``null`` (off), so Hydra's struct mode would refuse a new key;
    rewriting it to ``++<key>=value`` (add or override) keeps the documented command line
    (``model.norm_args.max_norm_step=4000``, ``model.residual_warmup.schedule=linear``). The keys
    are still validated against their dataclasses (the strategy's ``Args``, ``ResidualWarmupConfig``).
    """
    return [f"++{arg}" if arg.startswith(OPEN_NODES) and "=" in arg else arg for arg in argv]


def _fail(message: str) -> None:
    sys.stderr.write(f"normlab: error: {message}\n")
    sys.exit(EXIT_CONFIG)


def _overrides(argv: list[str]) -> list[str]:
    """The config overrides of a command line (not Hydra's flags such as ``-m`` or ``--cfg``)."""
    return [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def check_model_keys(overrides: list[str]) -> None:
    """``model.<unknown>=...`` and moved keys, in our words (Hydra would also refuse them)."""
    valid = {f.name for f in dataclasses.fields(ModelConfig)}
    for arg in overrides:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key in MOVED_KEYS:
            _fail(f"{key}: moved to {MOVED_KEYS[key]}; set it there")
        if key.startswith("model."):
            name = key[len("model.") :].split(".", 1)[0]
            if name not in valid:
                _fail(f"model.{name}: unknown key; valid keys are: {', '.join(sorted(valid))}")


def check_group_options(overrides: list[str], config_dir: Path) -> None:
    """``group=option`` must name a YAML file of that config group; list them if it does not."""
    for arg in overrides:
        key, _, value = arg.lstrip("+~").partition("=")
        group = config_dir / key.replace(".", "/")
        if not group.is_dir() or "," in value or arg.startswith("~"):
            continue
        if value in ("null", ""):
            _fail(f"{key}={value}: a config group cannot be set to null; remove it with ~{key}")
        if not (group / f"{value}.yaml").is_file():
            options = sorted(p.stem for p in group.glob("*.yaml"))
            _fail(f"{key}: no option {value!r}; available: {', '.join(options)}")


def preflight(config_dir: Path, config_name: str, overrides: list[str]) -> None:
    """Compose the config once with the command line's overrides; any failure is one line."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
            run_dir = Path(str(cfg.hydra.run.dir))
    except Exception as err:  # noqa: BLE001 - Hydra raises several types; the user needs one line
        text = " ".join(str(err).split())
        _fail(f"{text[:400]}; see python {Path(sys.argv[0]).name} --help for the config groups")
    finally:
        GlobalHydra.instance().clear()
    check_creatable(run_dir)


def check_creatable(folder: Path) -> None:
    """Hydra creates the run folder before any normlab code runs: a folder must be creatable in its
    nearest existing parent (tried, then removed), or the command ends here in one line, not in
    Hydra's traceback."""
    parent = folder.absolute()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".normlab-probe-", dir=parent))
    except OSError as err:
        _fail(
            f"paths.log_dir: cannot create the run folder {folder} ({parent}: {err.strerror or err}); "
            "point paths.log_dir at a writable folder"
        )


def prepare_argv(argv: list[str], config_dir: Path, config_name: str) -> list[str]:
    """Rewrite open-node overrides and refuse bad ones before Hydra sees them."""
    if any(a in ("--help", "-h", "--hydra-help", "--info") for a in argv):
        return argv
    argv = open_node_overrides(argv)
    if any(a.startswith("--cfg") for a in argv):
        return argv  # only prints the composed config: the documented overrides work, nothing runs
    overrides = _overrides(argv)
    check_model_keys(overrides)
    check_group_options(overrides, config_dir)
    if "-m" not in argv and "--multirun" not in argv:
        register_resolvers()
        preflight(config_dir, config_name, overrides)
    return argv


def _remove_if_empty_run(output_dir: str | None) -> None:
    """Remove a run folder that holds only what Hydra wrote at start (the run did nothing)."""
    if not output_dir:
        return
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    names = {p.name for p in folder.iterdir()}
    logs = {n for n in names if n.endswith(".log")}
    if names - logs <= HYDRA_ONLY:
        shutil.rmtree(folder, ignore_errors=True)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: one line on stderr instead of a traceback, and a non-zero exit.

    ConfigError (bad input) exits with code 2 and removes the run folder when it holds nothing
    but Hydra's files; TrainingDiverged (nan/inf gradients) exits with code 3 and keeps the folder
    (its checkpoints and run record); a checkpoint that cannot be written (disk full) exits with code 4,
    the previous checkpoint intact. Inside a sweep (``-m``) a job that fails this way prints its
    one line and returns, so the other jobs still run and the report shows it. Hydra reports
    ordinary exceptions with a traceback; SystemExit passes through it untouched.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, TrainingDiverged, MisconfigurationException, CheckpointWriteError) as err:
            if not _in_multirun():
                raise
            # one job of a sweep: say it in one line and let the sweep go on; the job's run record
            # (status diverged / failed) is what the report shows
            sys.stderr.write(f"normlab: error: job {_output_dir()}: {' '.join(str(err).split())}\n")
            return None

    @functools.wraps(fn)
    def single(*args: Any, **kwargs: Any) -> Any:
        try:
            return wrapper(*args, **kwargs)
        except ConfigError as err:
            _remove_if_empty_run(_output_dir())
            sys.stderr.write(f"normlab: error: {err}\n")
            sys.exit(EXIT_CONFIG)
        except TrainingDiverged as err:
            sys.stderr.write(f"normlab: error: {err}\n")
            sys.exit(EXIT_DIVERGED)
        except CheckpointWriteError as err:  # disk full / unwritable: the previous checkpoint is intact
            sys.stderr.write(f"normlab: error: {err}\n")
            sys.exit(EXIT_WRITE)
        except MisconfigurationException as err:  # Lightning refusing a combination of settings
            _remove_if_empty_run(_output_dir())
            sys.stderr.write(f"normlab: error: lightning: {' '.join(str(err).split())}\n")
            sys.exit(EXIT_CONFIG)

    return single


def _in_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not inside a Hydra job
        return False


def _output_dir() -> str | None:
    try:
        return HydraConfig.get().runtime.output_dir
    except ValueError:  # not inside a Hydra job
        return os.environ.get("NORMLAB_OUTPUT_DIR")
