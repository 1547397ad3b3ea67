"""One run directory per job, identical on every rank and node, written only by rank 0.

Hydra resolves ``hydra.run.dir`` in every process; under torchrun or SLURM each rank would resolve
``${now:...}`` itself and land in its own folder. So the run folder is named by a run id that the
launcher provides (see :func:`run_id`), and configs/hydra/default.yaml uses the resolvers below so
that only global rank 0 writes the composed config and the job log.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def launch_rank() -> int:
    """This process's global rank as the launcher announces it, before any process group exists.

    torchrun sets RANK, srun SLURM_PROCID; Lightning's own launcher sets LOCAL_RANK / NODE_RANK for
    the processes it starts. Anything non-zero means "not rank 0".
    """
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return int(os.environ.get("NODE_RANK", 0) or 0) + int(os.environ.get("LOCAL_RANK", 0) or 0)


def run_id(explicit: Any = None) -> str:
    """The run directory's name, identical on every rank and node of one job.

    First match: ``run_id=...`` on the command line, ``NORMLAB_RUN_ID``, ``<SLURM_JOB_ID>_<SLURM_STEP_ID>``
    inside an srun step (the step id keeps several runs of one allocation apart), torchrun's
    rendezvous id (``--rdzv-id``; random per ``--standalone`` job), else this process's start time
    (single-process runs only: separately launched ranks would not agree on it).
    """
    env = os.environ
    if explicit not in (None, ""):
        return str(explicit)
    if env.get("NORMLAB_RUN_ID"):
        return env["NORMLAB_RUN_ID"]
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_ID"):
        return f"{env['SLURM_JOB_ID']}_{env['SLURM_STEP_ID']}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return env["TORCHELASTIC_RUN_ID"]
    return _start_time()


@functools.cache
def _start_time() -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S")


SWEEP_SYNTAX = ("range(", "choice(", "interval(", "glob(")


def swept_keys(sweep_dir: Any) -> set[str] | None:
    """The keys a multirun varies (its sweeper params and the command-line overrides with sweep
    syntax), read from the ``multirun.yaml`` Hydra writes before the first job; None if absent."""
    path = Path(str(sweep_dir)) / "multirun.yaml"
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).get("hydra", {})
    keys = set((hydra.get("sweeper", {}) or {}).get("params", {}) or {})
    for override in (hydra.get("overrides", {}) or {}).get("task", []) or []:
        key, _, value = str(override).partition("=")
        if "," in value or value.startswith(SWEEP_SYNTAX):
            keys.add(key.lstrip("+~"))
    return keys


def job_dir_name(override_dirname: Any, job_num: Any, sweep_dir: Any = None) -> str:
    """A sweep job's folder, named after what the sweep varies: ``model.depth=6,model.norm=postln``
    -> ``depth=6,norm=postln`` (only swept keys, ``model.`` dropped, ``/`` replaced); the job number
    when nothing is left."""
    swept = swept_keys(sweep_dir) if sweep_dir is not None else None
    items = [i for i in str(override_dirname or "").split(",") if i]
    if swept is not None:
        items = [i for i in items if i.split("=", 1)[0] in swept]
    if not items:
        return str(job_num)
    return ",".join(i.removeprefix("model.") for i in items).replace("/", "_")


def register_resolvers() -> None:
    """``${normlab.run_id:...}``, ``${normlab.rank_zero:value}`` (null on other ranks) and
    ``${normlab.rank_zero_log:path}`` (``os.devnull`` on other ranks) for configs/hydra/default.yaml."""
    OmegaConf.register_new_resolver("normlab.run_id", run_id, replace=True)
    OmegaConf.register_new_resolver(
        "normlab.rank_zero", lambda value: value if launch_rank() == 0 else None, replace=True
    )
    OmegaConf.register_new_resolver(
        "normlab.rank_zero_log", lambda path: path if launch_rank() == 0 else os.devnull, replace=True
    )
    OmegaConf.register_new_resolver("normlab.job_dir", job_dir_name, replace=True)
