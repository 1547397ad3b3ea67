"""Where a training step's resident memory goes: glibc's heap in use, heap free and mmapped memory at
the end of each forward (the step's peak: every activation alive), beside the process's resident size.

    python benchmarks/heap.py --depth 1000 --norms deepnorm preln --before <older checkout>
    python benchmarks/heap.py --depth 100 --steps 3 --out benchmarks/results/heap_depth100

Why: the peers table's peak is the resident high-water mark, which counts heap memory that was freed
but could not be reused as much as live tensors. At depth 1000 a forward frees a few block-wide
temporaries per block (a sublayer's output once it is added to the stream, the GELU output once fc2
has read it); glibc's 64-byte-aligned allocations cannot reuse a freed chunk of their own size (torch
aligns CPU tensors to 64 bytes; checked here with three ``posix_memalign(64, 128 KiB)``, the middle one
freed: the next one of the same size came from new memory, while 16-byte alignment reused the hole),
so each freed temporary can leave a hole that only smaller allocations partly refill. "Heap free" at
the end of the forward is that waste, measured; "heap in use" is what the step really keeps
(parameters and optimizer state live in mmapped buffers here). Same model and step as
``benchmarks/peers.py`` (normlab's row), one process per checkout and norm; ``--before`` adds an
older checkout's ``src/`` as a row. glibc only (``mallinfo2``, glibc 2.33 or newer).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

from peers import build, checkout_commit, machine_name, process_settings, run_measuring
from peers_table import provenance
from results_io import publish

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]


def heap_now() -> dict[str, float]:
    """glibc's heap in use, heap free and mmapped bytes, and the process's resident size and peak (MB)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mb = 2.0**20
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "peak_mb": int(status["VmHWM"].split()[0]) / 1024,
        "heap_in_use_mb": info.uordblks / mb,
        "heap_free_mb": info.fordblks / mb,
        "mmapped_mb": info.hblkhd / mb,
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec['steps']`` steps of normlab's peers row in this process, the heap read after each forward."""
    import torch
    import torch.nn.functional as F

    if spec.get("pythonpath"):
        sys.path.insert(0, spec["pythonpath"])
    process_settings(1)
    built = build({"impl": "normlab", "norm": spec["norm"], "depth": spec["depth"]})
    x, y, optimizer = built["x"], built["y"], built["optimizer"]
    after_forward = []
    for _ in range(spec["steps"]):
        loss = F.cross_entropy(built["forward"](x).flatten(0, 1), y.flatten())
        after_forward.append(heap_now())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    end = heap_now()
    return {
        **spec,
        "after_forward": after_forward,
        "end": end,
        "machine": machine_name(x.device),
        "torch": torch.__version__,
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per checkout and norm: the last step's heap after its forward, and the process's peak."""
    lines = [
        "| normlab | norm | depth | peak MB (resident high-water) | resident MB after forward "
        "| heap in use MB | heap free MB | mmapped MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        last = row["after_forward"][-1]
        cells = [last["rss_mb"], last["heap_in_use_mb"], last["heap_free_mb"], last["mmapped_mb"]]
        lines.append(
            f"| {row['checkout']} | {row['norm']} | {row['depth']} | {row['end']['peak_mb']:.0f} | "
            + " | ".join(f"{v:.0f}" for v in cells)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--norms", nargs="+", default=["deepnorm", "preln"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--before", metavar="DIR", help="an older normlab checkout (src/ inside) as a row")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(measure(json.loads(args.one))), flush=True)
        return 0
    checkouts = [("current", None)]
    if args.before:
        checkouts.append((f"@{checkout_commit(args.before)}", str(Path(args.before) / "src")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rows, failed = [], 0
    for norm in args.norms:
        for name, pythonpath in checkouts:
            spec = {"checkout": name, "pythonpath": pythonpath, "norm": norm, "depth": args.depth}
            spec["steps"] = args.steps
            run_env = {**env, "PYTHONPATH": pythonpath} if pythonpath else env
            row, tail = run_measuring(one_row_command_for(spec), run_env)
            if row is None:
                print(f"[heap] {name} {norm}: failed: {tail}", flush=True)
                failed += 1
                continue
            rows.append(row)
    lines = [provenance(rows, argv, "benchmarks/heap.py"), "", *table(rows)]
    publish(lines, rows, args.out)
    return 1 if failed else 0


def one_row_command_for(spec: dict[str, Any]) -> list[str]:
    """This script's own ``--one`` command (peers.py's ``one_row_command`` runs peers.py)."""
    return [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]


if __name__ == "__main__":
    sys.exit(main())
