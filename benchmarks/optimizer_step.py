"""The optimizer step alone, for the 1,000-layer model: AdamW as a per-parameter loop (torch's CPU
default), foreach (what normlab uses on a GPU), normlab's FlatAdamW (its CPU default, bit-identical to
the loop) and fused (``optim.fused=true``).

    python benchmarks/optimizer_step.py                 # depth 1000, d_model 64, 7 steps each
    python benchmarks/optimizer_step.py --depth 100

Why a separate measurement: the optimizer step is a tenth of a training step at this shape, so its
gain is inside the noise of whole-step timings on a shared machine. Here the same parameters and
gradients go through each implementation, interleaved step by step in one process (one thread), so
the ratios are clean. It also times the step's gradient norm and the clip over the same tensors, in
each form normlab has had: torch's ``get_total_norm`` over the module walked every step, then over the
parameters listed once, then (now) torch's single-group foreach kernel called directly (all three
bit-identical); and the clip on a step that clips and on one that does not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from normlab.config import validate_model_config, validate_optim_config
from normlab.flat_adamw import FlatAdamW
from normlab.models.init import build_model, materialize
from normlab.optimizer import build_optimizer, clip_grads_with_norm, global_grad_norm, grad_norm_of


def optimizers(net: torch.nn.Module) -> dict[str, torch.optim.Optimizer]:
    """Every implementation over the same parameters. FlatAdamW comes first: it makes the parameters
    views of its buffer, which the torch optimizers do not mind."""
    flat = build_optimizer(net, validate_optim_config({}))
    assert isinstance(flat, FlatAdamW), "on the CPU normlab's default is FlatAdamW"
    kwargs = {"lr": flat.defaults["lr"], "betas": flat.defaults["betas"], "eps": flat.defaults["eps"]}

    def adamw(**impl: bool) -> torch.optim.AdamW:
        # fresh group dicts each time: torch writes its defaults (foreach, fused) into the dicts it is
        # given, so shared dicts would silently give every later optimizer the first one's kernel
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in flat.param_groups]
        return torch.optim.AdamW(groups, **impl, **kwargs)

    return {
        "loop": adamw(foreach=False),
        "foreach": adamw(foreach=True),
        "FlatAdamW (default)": flat,
        "fused (optim.fused=true)": adamw(fused=True),
    }


def clip(params: list[torch.nn.Parameter], norm: float) -> None:
    """The task's clip to 1.0 with a given pre-clip norm: above 1.0 every gradient is multiplied
    (torch's clip_grads_with_norm_); within it nothing is, since the coefficient clamps to 1.0 (torch
    would still multiply by 1.0, to avoid a host sync that costs nothing on the CPU)."""
    clip_grads_with_norm(params, 1.0, torch.tensor(norm))


def torch_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The gradient norm as normlab computed it before: torch's own utility."""
    return torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as every normlab run does (compute.flush_denormal)
    torch.manual_seed(0)
    cfg = validate_model_config({"norm": "deepnorm", "depth": args.depth, "d_model": 64, "n_heads": 4})
    net = materialize(build_model(cfg, vocab_size=8000), "cpu", seed=0)
    for p in net.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    params = [p for p in net.parameters() if p.requires_grad]
    timers = {
        **{name: (lambda o=opt: o.step()) for name, opt in optimizers(net).items()},
        "grad norm, torch's get_total_norm, module walked each step (first)": lambda: torch_norm(
            list(net.parameters())
        ),
        "grad norm, torch's get_total_norm, parameters listed once (second)": lambda: torch_norm(params),
        "grad norm, one foreach group called directly (now)": lambda: grad_norm_of(params),
        "grad norm, module walked, one foreach group (global_grad_norm, the guard outside a task)": (
            lambda: global_grad_norm(net)
        ),
        "clip to norm 1.0, a step whose norm is above it (trainer.gradient_clip_val)": lambda: clip(
            params, 2.0
        ),
        "clip to norm 1.0, a step whose norm is within it (skipped)": lambda: clip(params, 0.5),
    }
    times: dict[str, list[float]] = {name: [] for name in timers}
    with torch.no_grad():
        for _ in range(args.steps + 1):  # the first round builds the AdamW state: not timed
            for name, fn in timers.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    n = sum(p.numel() for p in params)
    print(f"depth {args.depth}: {len(params)} parameter tensors, {n / 1e6:.1f} M values; one thread")
    print("\n| operation | median ms | vs loop AdamW |\n|---|---:|---:|")
    loop = statistics.median(times["loop"][1:])
    for name, values in times.items():
        median = statistics.median(values[1:])
        print(f"| {name} | {median * 1e3:.1f} | {median / loop:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
