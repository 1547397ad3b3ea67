"""Activation-checkpointing memory and precision step times, each beside plain fp32.

    python benchmarks/memory.py                     # both suites (about 6 minutes on 2 CPU cores)
    python benchmarks/memory.py --suite ac          # AC at depth 1000: peak memory and time
    python benchmarks/memory.py --suite precision   # 32-true vs bf16-mixed vs bf16-true, narrow and wide
    python benchmarks/memory.py --suite ac --depth 100 --steps 2   # quicker

Every configuration runs in its own process: the model is built as training builds it (meta
device, ``normlab.distributed.apply_activation_checkpointing``, declared init), then after
``--warmup`` steps the resident memory is read ("rest": weights, gradients, AdamW state, torch),
freed heap is returned to the OS (``malloc_trim``), the process peak is reset
(``/proc/self/clear_refs``) and ``--steps`` timed steps run. "peak" is the
high-water mark (VmHWM) during those steps, "act" = peak - rest: what the forward/backward adds
on top, mostly saved activations, which checkpointing trades for recomputation. Precision variants
do what Lightning's plugins do: ``bf16-mixed`` = CPU autocast over fp32 weights, ``bf16-true`` = the
model cast to bf16. The machine is noisy: trust ratios within one invocation over absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from normlab.resources import status_mb

VARIANTS = ("fp32", "ac", "bf16-mixed", "bf16-true")
# suite -> [(label, depth, d_model, d_ffn, n_heads, variants)]; depth/steps flags adjust the ac suite
SUITES = {
    "ac": [("narrow", None, 64, 256, 4, ("fp32", "ac"))],
    "precision": [
        ("narrow", 100, 64, 256, 4, ("fp32", "bf16-mixed", "bf16-true")),
        ("wide", 8, 512, 2048, 8, ("fp32", "bf16-mixed", "bf16-true")),
    ],
}


def settle() -> float:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise), reset the peak (VmHWM) to
    the current RSS (Linux: 5 > clear_refs) and return that RSS: the memory really in use."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return status_mb("VmRSS")


def measure(
    depth: int, d_model: int, d_ffn: int, n_heads: int, variant: str, args: argparse.Namespace
) -> dict:
    import torch
    import torch.nn.functional as F

    from normlab.config import validate_model_config
    from normlab.distributed import apply_activation_checkpointing
    from normlab.models.init import build_model, materialize

    torch.set_flush_denormal(True)  # as training does by default (compute.flush_denormal)
    torch.manual_seed(0)
    cfg = validate_model_config(
        {
            "norm": args.norm,
            "depth": depth,
            "d_model": d_model,
            "n_heads": n_heads,
            "d_ffn": d_ffn,
        }
    )
    model = build_model(cfg, args.vocab)
    if variant == "ac":
        apply_activation_checkpointing(model, "full")
    materialize(model, "cpu", seed=0)
    if variant == "bf16-true":
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16-mixed" else contextlib.nullcontext()
    )
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        loss = step()
    rest = settle()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    peak = status_mb("VmHWM")
    return {
        "depth": depth,
        "d_model": d_model,
        "variant": variant,
        "step_s": statistics.median(times),
        "rest_mb": rest,
        "peak_mb": peak,
        "act_mb": peak - rest,
        "loss": loss,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def run_one(shape: tuple, variant: str, args: argparse.Namespace) -> dict:
    label, depth, d_model, d_ffn, n_heads = shape
    cmd = [
        sys.executable,
        __file__,
        "--one",
        str(depth),
        str(d_model),
        str(d_ffn),
        str(n_heads),
        variant,
        f"--norm={args.norm}",
        f"--vocab={args.vocab}",
        f"--seq={args.seq}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    row = {"shape": label, "depth": depth, "d_model": d_model, "variant": variant}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=True)
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except subprocess.TimeoutExpired:
        row["error"] = f"timeout after {args.timeout} s"
    except subprocess.CalledProcessError as err:
        row["error"] = (err.stderr.strip().splitlines() or ["failed"])[-1]
    return row


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nnorm={args.norm} seq={args.seq} batch={args.batch} vocab={args.vocab}; median of {args.steps} "
        f"steps after {args.warmup} warm-up; ratios against fp32 of the same shape"
    )
    print(
        "| shape | depth | d_model | variant | params (M) | step s | time ratio | rest MB | peak MB | "
        "act MB | act ratio |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    base: dict[tuple, dict] = {}
    for r in rows:
        if "error" in r:
            print(
                f"| {r['shape']} | {r['depth']} | {r['d_model']} | {r['variant']} | | {r['error']} |"
                " | | | | |"
            )
            continue
        ref = base.setdefault((r["depth"], r["d_model"]), r)
        print(
            f"| {r['shape']} | {r['depth']} | {r['d_model']} | {r['variant']} | {r['params_m']:.1f} | "
            f"{r['step_s']:.3f} | {r['step_s'] / ref['step_s']:.2f} | {r['rest_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['act_mb']:.0f} | {r['act_mb'] / max(ref['act_mb'], 1e-9):.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=["ac", "precision"])
    parser.add_argument("--depth", type=int, default=1000, help="depth of the ac suite")
    parser.add_argument("--norm", default="deepnorm")
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child: one configuration, one JSON line
        depth, d_model, d_ffn, n_heads, variant = args.one
        print(json.dumps(measure(int(depth), int(d_model), int(d_ffn), int(n_heads), variant, args)))
        return
    rows = []
    for suite in args.suite:
        for label, depth, d_model, d_ffn, n_heads, variants in SUITES[suite]:
            shape = (label, depth or args.depth, d_model, d_ffn, n_heads)
            for variant in variants:
                rows.append(run_one(shape, variant, args))
                r = rows[-1]
                result = r.get("error") or f"{r['step_s']:.3f} s/step, act {r['act_mb']:.0f} MB"
                print(f"# {suite} {label} depth {shape[1]} {variant}: {result}", flush=True)
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
