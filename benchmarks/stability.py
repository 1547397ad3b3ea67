"""Which norm strategies train a deep decoder without LR warm-up? One table per depth, same seed,
same data, every row in its own process.

    python benchmarks/stability.py                                   # the second-wave suite at depths 24, 48
    python benchmarks/stability.py --suite all --depths 48 --steps 150     # every registered strategy
    python benchmarks/stability.py --rows postln deepnorm --depths 24 --steps 50
    python benchmarks/stability.py --row 'T=30:model.norm=branchnorm,model.norm_args.max_norm_step=30'
    python benchmarks/stability.py --jobs 2 --out benchmarks/results/stability   # .md and .json

Each row trains a ``--depth``-layer decoder-only LM on Tiny Shakespeare for ``--steps`` optimizer
steps at a constant ``--lr`` with no LR warm-up, through :func:`normlab.run.train` (the
``python train.py`` code path: same AdamW, clipping, data order and seeded init for every row;
schedules are driven by the callback every normlab task adds). Per row:

- ``train``: mean training loss of the last 10 steps; ``val``: loss on the whole val split, and
  ``val - unigram`` (the unigram plateau: the val loss of the train split's token frequencies, what a
  model that learned only which tokens are common gets);
- ``update``: DeepNet's first-step model update ||F(x, theta_1) - F(x, theta_0)||, the mean over
  tokens of the L2 change of the stack output (the last hidden state, before the LM head) on a fixed
  val batch, with the model in the state it trains in at that step (its schedules included);
  ``rel`` divides by the mean ||F(x, theta_0)||;
- ``spike``: the spike scores of the training loss and of the gradient norm (normlab.metrics.spikes:
  % of steps >= 7 std from the rolling mean, over 10%-90% of the run), from the run's record;
- ``verdict``: ``trains`` if val < unigram - 0.15 nats, ``plateau`` if within 0.15 of it,
  ``diverged`` if not finite, else ``worse``.

Rows run in separate processes (``--jobs`` at a time, one intra-op thread each: two default-thread
torch processes on 2 cores slow each other down many times over). The Markdown table and the raw
rows (JSON) are rewritten after every row, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NORMLAB_ROOT", str(ROOT))
PLATEAU_MARGIN = 0.15

# The second-wave comparison (BranchNorm's two readings at a short and a long T, LNS, ProRes on
# three strategies). {half} = half the run; {linear_T} = the first-layer length that makes a linear
# warm-up end at half the run (T*L = steps/2).
SECOND_WAVE = [
    ("postln", "model.norm=postln"),
    ("preln", "model.norm=preln"),
    ("deepnorm", "model.norm=deepnorm"),
    ("branchnorm ramp T=100", "model.norm=branchnorm,model.norm_args.max_norm_step=100"),
    ("branchnorm ramp T=300", "model.norm=branchnorm,model.norm_args.max_norm_step=300"),
    (
        "branchnorm standardize T=100",
        "model.norm=branchnorm,model.norm_args.form=standardize,model.norm_args.max_norm_step=100",
    ),
    (
        "branchnorm standardize T=300",
        "model.norm=branchnorm,model.norm_args.form=standardize,model.norm_args.max_norm_step=300",
    ),
    ("lns", "model.norm=lns"),
    (
        "preln + ProRes linear",
        "model.norm=preln,model.residual_warmup.schedule=linear,model.residual_warmup.T={linear_T}",
    ),
    (
        "postln + ProRes linear",
        "model.norm=postln,model.residual_warmup.schedule=linear,model.residual_warmup.T={linear_T}",
    ),
    (
        "postln + ProRes equal",
        "model.norm=postln,model.residual_warmup.schedule=equal,model.residual_warmup.T={half}",
    ),
]


def suite_rows(suite: str) -> list[tuple[str, str]]:
    if suite == "second-wave":
        return list(SECOND_WAVE)
    from normlab.norms.registry import registered_names

    return [(name, f"model.norm={name}") for name in registered_names()]


# --- one row, in its own process -------------------------------------------------------------
class UpdateProbe:
    """||F(x, theta_1) - F(x, theta_0)|| on a fixed val batch (the hidden state before the head),
    each measured just before the forward of steps 0 and 1, i.e. with the schedules of that step."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # a Lightning callback, built lazily
        import lightning as L
        import torch

        class _Probe(L.Callback):
            def __init__(self) -> None:
                self.update = self.rel_update = math.nan
                self._x = self._h0 = None

            @torch.no_grad()
            def _hidden(self, pl_module: L.LightningModule) -> torch.Tensor:
                was_training = pl_module.training
                pl_module.eval()
                h = pl_module.net.hidden(self._x.to(pl_module.device)).float()
                pl_module.train(was_training)
                return h

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if trainer.global_step == 0 and self._h0 is None:
                    self._x = next(iter(trainer.datamodule.val_dataloader()))["input_ids"]
                    self._h0 = self._hidden(pl_module)
                elif trainer.global_step == 1 and math.isnan(self.update):
                    delta = (self._hidden(pl_module) - self._h0).norm(dim=-1).mean()
                    self.update = float(delta)
                    self.rel_update = float(delta / self._h0.norm(dim=-1).mean())

        return _Probe()


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from normlab.callbacks.run_record import RunRecord
    from normlab.cli import open_node_overrides
    from normlab.run import train

    torch.set_num_threads(1)
    a = spec["args"]
    overrides = [
        f"model.depth={spec['depth']}",
        f"model.d_model={a['d_model']}",
        f"model.n_heads={a['n_heads']}",
        f"model.d_ffn={4 * a['d_model']}",
        f"data.seq_len={a['seq_len']}",
        f"data.batch_size={a['batch_size']}",
        f"data.tokenizer.vocab_size={a['vocab']}",
        f"optim.lr={a['lr']}",
        "optim.warmup_steps=0",
        "optim.schedule=constant",
        f"trainer.max_steps={a['steps']}",
        f"trainer.val_check_interval={a['steps']}",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=10",
        "+trainer.enable_progress_bar=false",
        "test=false",
        "~logger",
        "callbacks=none",
        "+callbacks.update_probe._target_=stability.UpdateProbe",
        f"seed={a['seed']}",
        *open_node_overrides(spec["overrides"]),
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = spec["out_dir"]
        if a.get("data_dir"):
            cfg.paths.data_dir = a["data_dir"]
    GlobalHydra.instance().clear()
    start = time.perf_counter()
    metrics, objects = train(cfg)
    seconds = time.perf_counter() - start
    callbacks = objects["trainer"].callbacks
    probe = next(c for c in callbacks if type(c).__name__ == "_Probe")
    record = next(c for c in callbacks if isinstance(c, RunRecord))
    last = [v for v in record.losses[-10:] if math.isfinite(v)]
    scores = record.spike_scores()
    row = {
        "label": spec["label"],
        "depth": spec["depth"],
        "overrides": spec["overrides"],
        "train": sum(last) / len(last) if last else math.nan,
        "val": metrics.get("val/loss", math.nan),
        "baseline": metrics.get("unigram_baseline", math.nan),
        "update": probe.update,
        "rel": probe.rel_update,
        "spike_loss": scores["train_loss"],
        "spike_grad": scores["grad_norm"],
        "seconds": seconds,
        "s_per_step": (sum(record.seconds) / len(record.seconds)) if record.seconds else math.nan,
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


# --- the table --------------------------------------------------------------------------------
def _num(value: Any, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    baseline = next((r["baseline"] for r in rows if math.isfinite(r["baseline"])), math.nan)
    lines = [
        f"Decoder-only LM on Tiny Shakespeare, d_model {args.d_model}, {args.n_heads} heads, d_ffn "
        f"{4 * args.d_model}, seq {args.seq_len}, batch {args.batch_size}, BPE vocab {args.vocab}; AdamW lr "
        f"{args.lr:g} constant, no LR warm-up, grad clip 1.0, {args.steps} steps, seed {args.seed}. "
        f"Unigram baseline (val): {baseline:.3f} nats. One process and one thread per row.",
        "",
        "| strategy | depth | train loss (last 10) | val loss | val − unigram | first-step ‖ΔF‖ | relative "
        "| spike % (loss) | spike % (grad norm) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["depth"], r["order"])):
        lines.append(
            f"| {r['label']} | {r['depth']} | {_num(r['train'], '.3f')} | {_num(r['val'], '.3f')} | "
            f"{_num(r['val'] - r['baseline'], '+.3f')} | {_num(r['update'], '.3g')} | "
            f"{_num(r['rel'], '.3g')} | "
            f"{_num(r['spike_loss'], '.2f')} | {_num(r['spike_grad'], '.2f')} | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("second-wave", "all"), default="second-wave")
    parser.add_argument("--rows", nargs="*", help="keep only suite rows with these labels")
    parser.add_argument(
        "--row", action="append", default=[], metavar="LABEL:OVERRIDE[,...]", help="extra row"
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[24, 48])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--n-heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once (one thread each)")
    parser.add_argument("--data-dir", type=str, default=None, help="a data/ folder to reuse")
    parser.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one row (JSON spec), print JSON
    args = parser.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0

    rows_spec = suite_rows(args.suite)
    if args.rows:
        rows_spec = [r for r in rows_spec if r[0] in args.rows]
    rows_spec += [tuple(spec.split(":", 1)) for spec in args.row]
    common = {
        k: getattr(args, k) for k in ("d_model", "n_heads", "seq_len", "batch_size", "vocab", "lr", "seed")
    }
    common.update(steps=args.steps, data_dir=args.data_dir)
    tmp = Path(tempfile.mkdtemp(prefix="stability-"))
    specs = []
    for depth in args.depths:
        fill = {"half": max(1, args.steps // 2), "linear_T": max(1, round(args.steps / 2 / depth))}
        for order, (label, overrides) in enumerate(rows_spec):
            text = overrides.format(**fill)
            name = f"{label} (T={fill['linear_T']})" if "{linear_T}" in overrides else label
            name = f"{name} (T={fill['half']})" if "{half}" in overrides else name
            specs.append(
                {
                    "label": name,
                    "order": order,
                    "depth": depth,
                    "overrides": text.split(","),
                    "args": common,
                    "out_dir": str(tmp / f"d{depth}-{order}"),
                }
            )
    rows: list[dict[str, Any]] = []

    def launch(spec: dict[str, Any]) -> dict[str, Any]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=4 * 3600)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            nan = math.nan
            row = {
                "label": spec["label"],
                "depth": spec["depth"],
                "overrides": spec["overrides"],
                "train": nan,
            }
            row.update(val=nan, baseline=nan, update=nan, rel=nan, spike_loss=None, spike_grad=None)
            row.update(seconds=nan, s_per_step=nan, verdict=f"failed: {tail[0][:120]}")
        else:
            row = json.loads(lines[-1][4:])
        row["order"] = spec["order"]
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(launch, specs):
            rows.append(row)
            print(
                f"[stability] depth {row['depth']} {row['label']}: train {row['train']:.3f} val "
                f"{row['val']:.3f} update {row['update']:.3g} ({row['verdict']}, {row['seconds']:.0f} s)",
                flush=True,
            )
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.with_suffix(".md").write_text(table(rows, args) + "\n")
                args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
