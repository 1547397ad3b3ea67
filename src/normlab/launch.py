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
