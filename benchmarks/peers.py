"""normlab against torchscale and a plain PyTorch stack: one training step of the same decoder, side by
side, every configuration in its own process, rounds interleaved in one invocation.

    make bench-peers                                         # installs the peers, runs the default table
    python benchmarks/peers.py --depths 1 100 1000 --rounds 2 --out benchmarks/results/peers
    python benchmarks/peers.py --depths 100 --impls normlab plain --norms preln --steps 3

Model, the same for every implementation: decoder-only, d_model 64, 4 heads, FFN 256 (GELU), vocabulary
8000, tied input/output embedding, biases on, **no positional encoding** (torchscale's Decoder without
``embed_positions``, normlab ``pos_encoding=none``, none in the plain stack), no dropout; batch 8 x 64
tokens; ``deepnorm`` (Post-LN with alpha on the residual and beta init, torchscale ``deepnorm=True``) or
``preln`` (Pre-LN with a final norm, torchscale ``decoder_normalize_before=True, subln=False``).

A step is: forward, next-token cross-entropy in fp32, backward, optimizer step, zero_grad. Each
implementation uses its own default optimizer construction: torchscale and the plain stack
``torch.optim.AdamW(params, lr)``; normlab the AdamW its tasks build (``normlab.optimizer.build_optimizer``).
Every process runs with one intra-op thread and subnormal floats flushed (a process setting normlab
applies by default; applied to all so that no row pays for underflow). After ``--warmup`` steps the
median of ``--steps`` timed steps is reported; peak memory is the process's resident high-water mark
(VmHWM), torch itself included; with depth 1 among ``--depths``, the table also gives each row's
peak above its own implementation's depth-1 peak (``peers_table.above_depth_1``). ``normlab@<commit>``
rows run an older checkout (``--before``) for the before/after comparison. Rounds alternate their order
(odd rounds in reverse); the table (``peers_table.py``) gives each ratio to torchscale both between the
medians of rounds and paired within a round, under a line naming the date, machine, torch, normlab
commit and command. ``benchmarks/peers_paired.py`` times the same steps in one process, for ratios
without the drift between processes.

torchscale 0.3.0 is installed with ``pip install --no-deps torchscale==0.3.0 fairscale==0.4.0``; its one
import of timm (``drop_path``, unused at rate 0) is served by ``benchmarks/stubs/timm`` (see there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from peers_table import label, report

ROOT = Path(__file__).resolve().parents[1]
VOCAB, D, HEADS, FFN, BATCH, SEQ = 8000, 64, 4, 256, 8, 64
# normlab variants: what changes from the default path (the "variant" column)
VARIANTS = {
    "default": {},
    "ac-full": {"activation_checkpointing": "full"},
    "ac-selective": {"activation_checkpointing": "selective"},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "compile": {"compile_blocks": True},
    "fused-adamw": {"fused": True},
}


# --- the three implementations (each runs in its own process) ---------------------------------
def build_normlab(norm: str, depth: int, variant: str, device: str = "cpu") -> tuple[Any, Any, Any]:
    import torch

    from normlab.config import validate_model_config, validate_optim_config
    from normlab.models.init import build_model, materialize

    options = VARIANTS[variant]
    model_cfg = {"norm": norm, "depth": depth, "d_model": D, "n_heads": HEADS, "d_ffn": FFN}
    model_cfg["pos_encoding"] = "none"
    net = build_model(validate_model_config(model_cfg), VOCAB)
    mode = options.get("activation_checkpointing", "none")
    if mode != "none":
        from normlab.distributed import apply_activation_checkpointing

        apply_activation_checkpointing(net, mode)
    net = materialize(net, device, seed=0)
    if options.get("compile_blocks"):
        from normlab.compile import compile_blocks

        compile_blocks(net)
    optim_cfg = validate_optim_config({"lr": 1e-4, "fused": bool(options.get("fused", False))})
    try:
        from normlab.optimizer import build_optimizer
    except ImportError:  # an older normlab (--before): where it kept build_optimizer, if it had one
        try:
            from normlab.tasks.base import build_optimizer
        except ImportError:
            build_optimizer = None
    if build_optimizer is None:
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    else:
        optimizer = build_optimizer(net, optim_cfg)
    return net, (lambda ids: net(ids)), optimizer


def build_torchscale(norm: str, depth: int) -> tuple[Any, Any, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks" / "stubs"))  # the timm stand-in
    import torch
    from torchscale.architecture.config import DecoderConfig
    from torchscale.architecture.decoder import Decoder

    common = dict(
        vocab_size=VOCAB,
        decoder_embed_dim=D,
        decoder_attention_heads=HEADS,
        decoder_ffn_embed_dim=FFN,
        decoder_layers=depth,
        dropout=0.0,
        share_decoder_input_output_embed=True,
        no_scale_embedding=True,
    )
    if norm == "deepnorm":
        args = DecoderConfig(deepnorm=True, subln=False, decoder_normalize_before=False, **common)
    else:
        args = DecoderConfig(deepnorm=False, subln=False, decoder_normalize_before=True, **common)
    embed = torch.nn.Embedding(VOCAB, D)
    net = Decoder(args, embed_tokens=embed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    return net, (lambda ids: net(ids)[0]), optimizer


def build_plain(norm: str, depth: int) -> tuple[Any, Any, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    alpha, beta = ((2 * depth) ** 0.25, (8 * depth) ** -0.25) if norm == "deepnorm" else (1.0, 1.0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc1, self.fc2 = nn.Linear(D, FFN), nn.Linear(FFN, D)
            self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
            for lin, gain in ((self.out, beta), (self.fc1, beta), (self.fc2, beta)):
                nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.xavier_normal_(self.qkv.weight)
            with torch.no_grad():
                self.qkv.weight[2 * D :].mul_(beta)  # W^V

        def attn(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, HEADS, D // HEADS).transpose(1, 2) for z in self.qkv(x).chunk(3, -1))
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(o.transpose(1, 2).reshape(b, t, D))

        def ffn(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.gelu(self.fc1(x)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if norm == "deepnorm":
                x = self.ln1(alpha * x + self.attn(x))
                return self.ln2(alpha * x + self.ffn(x))
            x = x + self.attn(self.ln1(x))
            return x + self.ffn(self.ln2(x))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            self.blocks = nn.ModuleList(Block() for _ in range(depth))
            self.final = nn.LayerNorm(D) if norm == "preln" else nn.Identity()

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return F.linear(self.final(x), self.embed.weight)

    net = Model()
    return net, net, torch.optim.AdamW(net.parameters(), lr=1e-4)


def process_settings(threads: int = 1) -> None:
    """What every measuring process sets first: one intra-op thread (0: torch's default, all cores, as
    benchmarks/threads.py compares), subnormals flushed, seed 0."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)


def build(spec: dict[str, Any]) -> dict[str, Any]:
    """One implementation's network, forward, optimizer and batch on ``spec['device']``, and the
    seconds it took to build."""
    import torch

    start = time.perf_counter()
    impl, norm, depth = spec["impl"], spec["norm"], spec["depth"]
    device = torch.device(spec.get("device", "cpu"))
    if impl.startswith("normlab"):
        net, forward, optimizer = build_normlab(norm, depth, spec.get("variant", "default"), str(device))
    elif impl == "torchscale":
        net, forward, optimizer = build_torchscale(norm, depth)
    else:
        net, forward, optimizer = build_plain(norm, depth)
    if device.type != "cpu" and not impl.startswith("normlab"):  # normlab was built on the device
        net.to(device)
        optimizer = type(optimizer)(net.parameters(), lr=1e-4)
    build_s = time.perf_counter() - start
    net.train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return {
        "net": net,
        "forward": forward,
        "optimizer": optimizer,
        "x": ids[:, :-1].to(device),
        "y": ids[:, 1:].to(device),
        "autocast": spec.get("variant") == "bf16-mixed",
        "build_s": build_s,
    }


def train_step(built: dict[str, Any]) -> tuple[float, float]:
    """One step (forward, fp32 cross-entropy, backward, optimizer step, zero_grad): (seconds, loss)."""
    import torch
    import torch.nn.functional as F

    x, y = built["x"], built["y"]
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=built["autocast"]):
        logits = built["forward"](x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss.backward()
    built["optimizer"].step()
    built["optimizer"].zero_grad(set_to_none=True)
    value = float(loss.detach())  # a host sync, also on CUDA
    return time.perf_counter() - t0, value


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this process: build, ``warmup`` + ``steps`` steps, the row."""
    import torch

    from_path = spec.get("pythonpath")
    if from_path:
        sys.path.insert(0, from_path)
    process_settings(spec.get("threads", 1))
    built = build(spec)
    times, losses = [], []
    for _ in range(spec["warmup"] + spec["steps"]):
        seconds, loss = train_step(built)
        times.append(seconds)
        losses.append(loss)
    timed = times[spec["warmup"] :]
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next((int(s.split()[1]) / 1024 for s in status if s.startswith("VmHWM:")), math.nan)
    device = built["x"].device
    cuda = device.type == "cuda"
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20  # the GPU's peak, not the host's
    return {
        **spec,
        "step_s": statistics.median(timed),
        "first_step_s": times[0],
        "build_s": built["build_s"],
        "peak_mb": peak,
        "params_m": sum(p.numel() for p in built["net"].parameters()) / 1e6,
        "tokens_per_s": BATCH * SEQ / statistics.median(timed),
        "losses": losses,
        "machine": machine_name(device),
        "torch": torch.__version__,
    }


def machine_name(device: Any) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    """The CPU's model name as the kernel reports it (``/proc/cpuinfo``), else the platform's."""
    import platform

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor() or "unknown CPU"


def one_row_command(spec: dict[str, Any]) -> list[str]:
    """The command that measures one configuration in its own process; it prints one ``ROW`` line
    (used here and by benchmarks/overhead.py and benchmarks/threads.py)."""
    return [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]


def read_row(stdout: str, marker: str = "ROW") -> Any:
    """What a measuring process printed after its last ``marker`` line (the row of a
    :func:`one_row_command` process; ``ROWS`` for benchmarks/peers_paired.py), or None when it printed
    none."""
    found = [ln for ln in stdout.splitlines() if ln.startswith(marker + " ")]
    return json.loads(found[-1][len(marker) + 1 :]) if found else None


def run_measuring(cmd: list[str], env: dict[str, str], marker: str = "ROW") -> tuple[Any, str]:
    """One measuring process, bounded by an hour: (what it printed after ``marker``, or None when it
    failed or printed nothing; the last line of its stderr, which names why)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    return (None if proc.returncode else read_row(proc.stdout, marker)), tail


def checkout_commit(path: str) -> str:
    """The short commit of the checkout at ``path`` (``--before``), as its rows name it."""
    git = ["git", "-C", path, "rev-parse", "--short", "HEAD"]
    return subprocess.run(git, capture_output=True, text=True).stdout.strip()


def round_order(specs: list[dict[str, Any]], round_: int) -> list[dict[str, Any]]:
    """Odd rounds run the configurations in reverse (A B C, C B A, ...), so that a machine that speeds up
    or slows down during the invocation does not always favour the configurations that run first."""
    return specs if round_ % 2 == 0 else specs[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--norms", nargs="+", default=["deepnorm", "preln"])
    parser.add_argument("--impls", nargs="+", default=["normlab", "torchscale", "plain"])
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS), help="normlab rows")
    parser.add_argument("--before", metavar="DIR", help="an older normlab checkout (src/ inside) as a row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (benchmarks/gpu_check.sh)")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(measure(json.loads(args.one))), flush=True)
        return 0
    specs = []
    for depth in args.depths:
        for norm in args.norms:
            for impl in args.impls:
                specs.append({"impl": impl, "norm": norm, "depth": depth, "variant": "default"})
            for variant in args.variants:
                specs.append({"impl": "normlab", "norm": norm, "depth": depth, "variant": variant})
            if args.before:
                before = {"impl": f"normlab@{checkout_commit(args.before)}", "norm": norm, "depth": depth}
                before["variant"] = "default"
                specs.append({**before, "pythonpath": str(Path(args.before) / "src")})
    rows: list[dict[str, Any]] = []
    failed = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for round_ in range(args.rounds):
        for spec in round_order(specs, round_):
            full = {
                **spec,
                "warmup": args.warmup,
                "steps": args.steps,
                "round": round_,
                "device": args.device,
            }
            run_env = dict(env)
            if spec.get("pythonpath"):
                run_env["PYTHONPATH"] = spec["pythonpath"]
            row, tail = run_measuring(one_row_command(full), run_env)
            if row is None:
                print(f"[peers] {label(spec)} {spec['norm']} {spec['depth']}: failed: {tail}", flush=True)
                failed += 1
                continue
            rows.append(row)
            print(
                f"[peers] round {round_} {label(row)} {row['norm']} depth {row['depth']}: "
                f"{row['step_s']:.3f} s/step, {row['peak_mb']:.0f} MB",
                flush=True,
            )
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
                args.out.with_suffix(".md").write_text(report(rows, argv) + "\n")
    print(report(rows, argv))
    if failed:  # the table keeps every row that was measured; the exit status says it is incomplete
        total = len(specs) * args.rounds
        print(f"[peers] {failed} of {total} measurements failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
