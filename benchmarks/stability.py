"""Which norm strategies train a deep decoder without warm-up? One table, same seed, same data.

    python benchmarks/stability.py                          # every registered strategy, depth 48
    python benchmarks/stability.py --norms postln deepnorm --steps 50
    python benchmarks/stability.py --out benchmarks/results/stability.md

Each strategy trains a ``--depth``-layer decoder-only LM on Tiny Shakespeare for ``--steps``
optimizer steps at a constant ``--lr`` with no warm-up, through :func:`normlab.run.train` (the
``python train.py`` code path: same AdamW, clipping, data order and seeded init for every row;
BranchNorm's schedule callback is added automatically). Per row it reports:

- ``train``: mean training loss of the last 10 steps; ``val``: loss on the whole val split;
- ``update``: the first-step model update ||F(x, theta_1) - F(x, theta_0)||, DeepNet's Fig. 4
  quantity, as the mean over tokens of the L2 norm of the change of the stack output (the last
  hidden state, before the LM head) on a fixed val batch; ``rel`` divides by the mean ||F(x, theta_0)||;
- ``verdict``: ``trains`` if val < unigram baseline - 0.15 nats, ``plateau`` if it stays within
  0.15 of the unigram baseline (the model learned token frequencies only), ``diverged`` if the
  loss is not finite, else ``worse``.

The unigram baseline is the val cross-entropy of the train split's token frequencies. The table
goes to stdout and, with ``--out``, to a Markdown file. Threads default to 1 so that the run
shares a busy machine; expect about 1-2 minutes per strategy at the defaults on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NORMLAB_ROOT", str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

PLATEAU_MARGIN = 0.15


class UpdateProbe(L.Callback):
    """Records ||F(x, theta_1) - F(x, theta_0)|| on a fixed batch and the per-step train loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.update = self.rel_update = float("nan")
        self._x: torch.Tensor | None = None
        self._h0: torch.Tensor | None = None

    @torch.no_grad()
    def _hidden(self, pl_module: L.LightningModule) -> torch.Tensor:
        was_training = pl_module.training
        pl_module.eval()
        h = pl_module.net.hidden(self._x.to(pl_module.device)).float()
        pl_module.train(was_training)
        return h

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._x = next(iter(trainer.datamodule.val_dataloader()))["input_ids"]
        self._h0 = self._hidden(pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        if trainer.global_step == 1 and self._h0 is not None:
            delta = (self._hidden(pl_module) - self._h0).norm(dim=-1).mean()
            self.update = float(delta)
            self.rel_update = float(delta / self._h0.norm(dim=-1).mean())
            self._h0 = None


def run_one(norm: str, args: argparse.Namespace, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from normlab.run import train

    overrides = [
        f"model.norm={norm}",
        f"model.depth={args.depth}",
        f"model.d_model={args.d_model}",
        f"model.n_heads={args.n_heads}",
        f"model.d_ffn={4 * args.d_model}",
        f"data.seq_len={args.seq_len}",
        f"data.batch_size={args.batch_size}",
        f"data.tokenizer.vocab_size={args.vocab}",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.steps}",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "test=false",
        "~logger",
        "callbacks=none",
        f"seed={args.seed}",
        "+callbacks.update_probe._target_=stability.UpdateProbe",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    GlobalHydra.instance().clear()
    start = time.perf_counter()
    metrics, objects = train(cfg)
    seconds = time.perf_counter() - start
    probe = next(c for c in objects["trainer"].callbacks if type(c).__name__ == "UpdateProbe")
    last = probe.losses[-10:]
    row = {
        "norm": norm,
        "train": sum(last) / max(len(last), 1),
        "val": metrics.get("val/loss", math.nan),
        "baseline": metrics.get("unigram_baseline", math.nan),
        "update": probe.update,
        "rel": probe.rel_update,
        "seconds": seconds,
    }
    row["verdict"] = verdict(row["val"], row["baseline"])
    return row


def verdict(val: float, baseline: float) -> str:
    if not math.isfinite(val):
        return "diverged"
    if val < baseline - PLATEAU_MARGIN:
        return "trains"
    if abs(val - baseline) <= PLATEAU_MARGIN:
        return "plateau"
    return "worse"


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    baseline = rows[0]["baseline"] if rows else math.nan
    lines = [
        f"Depth-{args.depth} decoder, d_model {args.d_model}, {args.n_heads} heads, d_ffn "
        f"{4 * args.d_model}, seq {args.seq_len}, batch {args.batch_size}, BPE vocab {args.vocab}, "
        f"Tiny Shakespeare; AdamW lr {args.lr:g} constant, no warm-up, grad clip 1.0, "
        f"{args.steps} steps, seed {args.seed}. Unigram baseline (val): {baseline:.3f} nats.",
        "",
        "| strategy | train loss (last 10) | val loss | first-step update ‖ΔF‖ | relative | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['norm']}` | {r['train']:.3f} | {r['val']:.3f} | {r['update']:.3g} | "
            f"{r['rel']:.3g} | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="*", help="default: every registered strategy")
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:OVERRIDE[,...]",
        help="extra row, e.g. 'branchnorm(T=100):model.norm_args.max_norm_step=100'",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from normlab.norms.registry import registered_names
    from normlab.utils import norm_args_overrides

    runs: list[tuple[str, str, list[str]]] = [(n, n, []) for n in (args.norms or registered_names())]
    for spec in args.variant:
        label, _, overrides = spec.partition(":")
        extra = norm_args_overrides(overrides.split(","))
        norm = next(o.split("=", 1)[1] for o in extra if o.startswith("model.norm="))
        runs.append((label, norm, [o for o in extra if not o.startswith("model.norm=")]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, norm, extra in runs:
            row = run_one(norm, args, Path(tmp) / label, extra)
            row["norm"] = label
            rows.append(row)
            print(
                f"[stability] {label}: train {row['train']:.3f} val {row['val']:.3f} update "
                f"{row['update']:.3g} ({row['verdict']}, {row['seconds']:.0f} s)",
                flush=True,
            )
            if args.out:  # rewritten after every row, so an interrupted run keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(table(rows, args) + "\n")
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
