"""Start ``scripts/torchrun.sh`` as one or several "nodes" on 127.0.0.1 and wait, with a timeout.

Every process gets its own free port and the staged data mirror; ``PYTHONPATH`` makes
``tests.distributed.recorder`` importable as a callback target. A crashed rank would leave the
others waiting on gloo forever, so every launch is bounded by ``timeout`` and killed on expiry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = ROOT / "scripts" / "torchrun.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Finished:
    returncodes: list[int]
    outputs: list[str]

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(
            f"--- node {i} (rc={rc})\n" + "\n".join(out.splitlines()[-lines:])
            for i, (rc, out) in enumerate(zip(self.returncodes, self.outputs, strict=True))
        )


def torchrun(
    overrides: list[str],
    *,
    run_id: str,
    cwd: Path,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    timeout: float = 240,
) -> Finished:
    """``nnodes`` launches of torchrun.sh (one per "node", c10d rendezvous on 127.0.0.1), all within
    ``timeout`` seconds; each node's output goes to ``<cwd>/<run_id>-node<i>.log``."""
    env = {
        **os.environ,
        "NNODES": str(nnodes),
        "NPROC_PER_NODE": str(nproc_per_node),
        "RUN_ID": run_id,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
    }
    if nnodes > 1:
        env.update(RDZV_ENDPOINT=f"127.0.0.1:{free_port()}", LOCAL_ADDR="127.0.0.1")
    logs = [cwd / f"{run_id}-node{i}.log" for i in range(nnodes)]  # files: a full pipe would block a rank
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    ["bash", str(TORCHRUN), *overrides],
                    cwd=cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass  # killed below; the return codes (-9) and the logs tell the test what happened
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    return Finished([p.returncode for p in procs], [log.read_text() for log in logs])
