"""Median train-step time, tokens/s and peak memory for models built from config.

    python benchmarks/step_time.py                                   # depth 100 and 1000, d_model 64
    python benchmarks/step_time.py --depths 6 48 --norms preln deepnorm --steps 5
    python benchmarks/step_time.py --depths 1000 --variants fp32 ac bf16-mixed fused

A step is zero_grad + forward + cross-entropy + backward + AdamW step on random tokens, timed after
``--warmup`` untimed steps; the model is built exactly as training builds it (meta device, declared
init, the same distributed policies). Each configuration runs in its own subprocess so that peak
memory (VmHWM, the process high-water mark, which includes ~220 MB of torch itself) is per config.
The machine is noisy: trust ratios taken in one invocation over absolute times. Prints a table and
the ratio of every row to the first row of the same depth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from normlab.resources import status_mb

VARIANTS = ("fp32", "ac", "bf16-mixed", "bf16-true", "fused")


def measure(norm: str, depth: int, variant: str, args: argparse.Namespace) -> dict:
    """Build, then time ``args.steps`` train steps in this process."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from normlab.config import validate_model_config
    from normlab.distributed import apply_activation_checkpointing
    from normlab.models.init import build_model, materialize

    torch.manual_seed(0)
    torch.set_flush_denormal(not args.keep_denormals)  # as training does by default
    cfg = validate_model_config(
        {
            "norm": norm,
            "depth": depth,
            "d_model": args.d_model,
            "n_heads": args.heads,
            "d_ffn": 4 * args.d_model,
        }
    )
    t0 = time.perf_counter()
    model = build_model(cfg, args.vocab)
    if variant == "ac":
        apply_activation_checkpointing(model, "full")
    materialize(model, "cpu", seed=0)
    build_s = time.perf_counter() - t0
    if variant == "bf16-true":
        model = model.to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=variant == "fused")
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16-mixed" else contextlib.nullcontext()
    )
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast:
            logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "norm": norm,
        "depth": depth,
        "variant": variant,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": build_s,
        "step_s": median,
        "tokens_per_s": args.batch * args.seq / median,
        "peak_mb": status_mb("VmHWM"),
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--norms", nargs="+", default=["deepnorm"])
    parser.add_argument("--variants", nargs="+", default=["fp32"], choices=VARIANTS)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="compute on subnormal floats (training flushes them: flush_denormal=true)",
    )
    parser.add_argument("--one", nargs=3, metavar=("NORM", "DEPTH", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one configuration, one JSON line
        norm, depth, variant = args.one
        print(json.dumps(measure(norm, int(depth), variant, args)))
        return

    rows = []
    passthrough = [
        f"--d-model={args.d_model}",
        f"--heads={args.heads}",
        f"--vocab={args.vocab}",
        f"--seq={args.seq}",
        f"--batch={args.batch}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        *(["--keep-denormals"] if args.keep_denormals else []),
    ]
    for depth in args.depths:
        for norm in args.norms:
            for variant in args.variants:
                cmd = [sys.executable, __file__, "--one", norm, str(depth), variant, *passthrough]
                try:
                    out = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=args.timeout, check=True
                    )
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                except subprocess.TimeoutExpired:
                    rows.append({"norm": norm, "depth": depth, "variant": variant, "error": "timeout"})
                except subprocess.CalledProcessError as err:
                    rows.append(
                        {
                            "norm": norm,
                            "depth": depth,
                            "variant": variant,
                            "error": err.stderr.strip().splitlines()[-1] if err.stderr else "failed",
                        }
                    )
                print_row(rows[-1], rows)
    print()
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_row(row: dict, rows: list[dict]) -> None:
    if "error" in row:
        print(f"# {row['norm']} depth {row['depth']} {row['variant']}: {row['error']}", flush=True)
    else:
        print(
            f"# {row['norm']} depth {row['depth']} {row['variant']}: {row['step_s']:.3f} s/step", flush=True
        )


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"d_model={args.d_model} heads={args.heads} seq={args.seq} batch={args.batch} vocab={args.vocab} "
        f"steps={args.steps} (median after {args.warmup} warm-up steps), "
        f"{'subnormals kept' if args.keep_denormals else 'subnormals flushed'}"
    )
    header = "| norm | depth | variant | params (M) | build s | step s | ratio | tokens/s | peak RSS MB |"
    print(header)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    base: dict[int, float] = {}
    for row in rows:
        if "error" in row:
            print(f"| {row['norm']} | {row['depth']} | {row['variant']} | | | {row['error']} | | | |")
            continue
        ref = base.setdefault(row["depth"], row["step_s"])
        cells = [row["norm"], row["depth"], row["variant"], f"{row['params_m']:.1f}", f"{row['build_s']:.1f}"]
        cells += [f"{row['step_s']:.3f}", f"{row['step_s'] / ref:.2f}", f"{row['tokens_per_s']:.0f}"]
        cells += [f"{row['peak_mb']:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
