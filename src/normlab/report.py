"""``python -m normlab.report <multirun dir | run dirs...>``: a sweep's table and the papers' figures.

Reads the run records (normlab.study) of every run found under the given folders and writes, into
``--out`` (default: the folder given, or ``./report`` for several):

- ``report.md``: the results table (strategy x depth: status and verdict, final and best validation
  metric, its distance to the unigram plateau, test metrics, BLEU or accuracy/F1 where the task has
  them, spike scores, s/step, peak memory) and the figures below, with the list of runs read;
- ``val_vs_depth.png``: final validation loss (or BLEU / accuracy) against depth, one line per strategy,
  runs that diverged or crashed marked with a cross (DeepNet Fig. 6 / ProRes Fig. 1);
- ``train_loss_by_depth.png``: training-loss curves, one panel per depth;
- ``model_update_vs_step.png``: the early model update ||F(x, theta_t) - F(x, theta_0)|| (RMS of the
  change of the final hidden state) against the step, one panel per depth (DeepNet Fig. 5);
- ``model_update_vs_depth.png``: the same quantity at one step against depth;
- ``grad_heatmap_<strategy>.png``: per-layer gradient norms (layer x step) at the deepest depth of each
  strategy (Xiong et al. Fig. 3 as a picture of the whole run).

Works on any subset of runs and any task family; runs that diverged, failed or crashed are listed
with their status, never dropped.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normlab import plots
from normlab.study import Run, find_runs, load_run

FIXED_STEP = 100  # the step of model_update_vs_depth.png (or the largest step all runs measured)


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def main_metric(run: Run) -> tuple[str, str]:
    """(validation key, label) that says how well a run of this task family did."""
    if run.task == "translate" and not math.isnan(run.val("final", "val/bleu")):
        return "val/bleu", "val BLEU"
    if run.task == "classify":
        return "val/acc", "val accuracy"
    return "val/loss", "val loss"


def results_table(runs: list[Run]) -> list[str]:
    lines = [
        "| strategy | depth | status | verdict | final val loss | val − unigram | best val loss (step) "
        "| test | task metric | spike % loss | spike % grad | s/step | peak MB |",
        "|---|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: (r.strategy, r.depth)):
        best = (run.metrics.get("val") or {}).get("best") or {}
        test = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in run.test.items() if "majority" not in k)
        extra = []
        for key in ("val/bleu", "val/acc", "val/f1"):
            if not math.isnan(run.val("final", key)):
                extra.append(f"{key.split('/')[-1]} {run.val('final', key):.3f}")
        spikes = run.metrics.get("spike_score") or {}
        memory = run.metrics.get("memory") or {}
        peak = memory.get("cuda_peak_allocated_mb", memory.get("host_peak_rss_mb"))
        error = run.metrics.get("error")
        status = run.status + (f": {error[:80]}" if error and run.status != "finished" else "")
        lines.append(
            f"| {run.strategy} | {run.depth} | {status} | {run.verdict} | {_fmt(run.val())} | "
            f"{_fmt(run.val() - run.baseline, '+.3f')} | {_fmt(best.get('val/loss'))} "
            f"({best.get('step', '–')}) | {test or '–'} | {', '.join(extra) or '–'} | "
            f"{_fmt(spikes.get('train_loss'), '.2f')} | {_fmt(spikes.get('grad_norm'), '.2f')} | "
            f"{_fmt(run.metrics.get('seconds_per_step'), '.3f')} | {_fmt(peak, '.0f')} |"
        )
    return lines


def by_strategy(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.depth):
        groups[run.strategy].append(run)
    return dict(sorted(groups.items()))


def fig_val_vs_depth(runs: list[Run], out: Path) -> Path:
    key, label = main_metric(runs[0])
    series, failed = {}, []
    for strategy, group in by_strategy(runs).items():
        series[strategy] = ([r.depth for r in group], [r.val("final", key) for r in group])
        failed += [(r.depth, strategy) for r in group if r.verdict in ("diverged", "failed", "crashed")]
    baselines = [r.baseline for r in runs if math.isfinite(r.baseline)]
    hline = (median(baselines), "unigram plateau") if baselines and key == "val/loss" else None
    fig = plots.lines(series, f"{label} vs depth", "layers", label, hline=hline, logx=True)
    ax = fig.axes[0]
    if failed:
        top = ax.get_ylim()[1]
        xs = [d for d, _ in failed]
        ax.scatter(xs, [top] * len(failed), marker="x", color="red", label="diverged/crashed")
        ax.legend(fontsize=7)
    return plots.save(fig, out / "val_vs_depth.png")


def fig_train_curves(runs: list[Run], out: Path) -> Path:
    depths = sorted({r.depth for r in runs})
    fig, axes = plots.panels(len(depths), "training loss")
    for ax, depth in zip(axes, depths, strict=True):
        here = [r for r in runs if r.depth == depth]
        group = {r.strategy: (r.curve.get("step", []), r.curve.get("loss", [])) for r in here}
        baselines = [r.baseline for r in runs if r.depth == depth and math.isfinite(r.baseline)]
        hline = (median(baselines), "unigram plateau") if baselines else None
        plots.lines(group, f"{depth} layers", "step", "train loss", hline=hline, markers=False, ax=ax)
    fig.tight_layout()
    return plots.save(fig, out / "train_loss_by_depth.png")


def fig_update_vs_step(runs: list[Run], out: Path) -> Path | None:
    with_updates = [r for r in runs if len(r.updates()) > 1]
    if not with_updates:
        return None
    depths = sorted({r.depth for r in with_updates})
    title = "model update ||F(x, θ_t) − F(x, θ_0)|| (RMS of the final hidden state)"
    fig, axes = plots.panels(len(depths), title)
    for ax, depth in zip(axes, depths, strict=True):
        group = {}
        for r in with_updates:
            if r.depth == depth:
                steps = [s for s in sorted(r.updates()) if s > 0]
                group[r.strategy] = (steps, [r.updates()[s]["hidden_rms"] for s in steps])
        plots.lines(group, f"{depth} layers", "step", "model update", logx=True, logy=True, ax=ax)
    fig.tight_layout()
    return plots.save(fig, out / "model_update_vs_step.png")


def fig_update_vs_depth(runs: list[Run], out: Path) -> tuple[Path, int] | None:
    with_updates = [r for r in runs if len(r.updates()) > 1]
    if not with_updates:
        return None
    common = set.intersection(*(set(r.updates()) - {0} for r in with_updates))
    if not common:
        return None
    below = [s for s in common if s <= FIXED_STEP]
    step = max(below) if below else min(common)
    series = {
        strategy: ([r.depth for r in group], [r.updates()[step]["hidden_rms"] for r in group])
        for strategy, group in by_strategy(with_updates).items()
    }
    title = f"model update at step {step} vs depth"
    fig = plots.lines(series, title, "layers", "model update", logx=True, logy=True)
    return plots.save(fig, out / "model_update_vs_depth.png"), step


def fig_heatmaps(runs: list[Run], out: Path) -> list[Path]:
    paths = []
    for strategy, group in by_strategy(runs).items():
        deepest = max(group, key=lambda r: r.depth)
        for stack in ("decoder", "encoder"):
            rows = deepest.layer_records(stack)
            if len(rows) < 1:
                continue
            fig = plots.heatmap(
                [r[stack]["grad_norm"] for r in rows],
                [r["step"] for r in rows],
                f"{strategy}, {deepest.depth} layers ({stack}): gradient norm per layer",
                "gradient norm",
            )
            paths.append(plots.save(fig, out / f"grad_heatmap_{_slug(strategy)}_{stack}.png"))
    return paths


def write_report(runs: list[Run], out: Path, title: str = "normlab study") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    verdicts = (
        "Verdict: `trained` = final val loss more than 0.15 nats below the unigram plateau, "
        "`stalled` = within 0.15 of it, `worse` = above it."
    )
    md = [f"# {title}", "", f"{len(runs)} runs. {verdicts}", ""]
    md += results_table(runs)
    figures = [("Final validation metric vs depth", fig_val_vs_depth(runs, out))]
    figures.append(("Training loss, one panel per depth", fig_train_curves(runs, out)))
    update = fig_update_vs_step(runs, out)
    if update:
        figures.append(("Early model update vs step (DeepNet Fig. 5)", update))
    at_depth = fig_update_vs_depth(runs, out)
    if at_depth:
        figures.append((f"Model update at step {at_depth[1]} vs depth", at_depth[0]))
    for path in fig_heatmaps(runs, out):
        figures.append((f"Per-layer gradient norm: {path.stem.replace('grad_heatmap_', '')}", path))
    for caption, path in figures:
        md += ["", f"## {caption}", "", f"![{caption}]({path.name})"]
    md += ["", "## Runs read", ""] + [
        f"- `{r.path}`: {r.strategy}, depth {r.depth}, {r.status}" for r in runs
    ]
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    return report


class ReportAtSweepEnd(Callback):
    """Hydra callback (``hydra.callbacks``): write the report into the sweep folder when every job of
    a multirun has returned (experiment=depth_sweep uses it)."""

    def __init__(self, title: str = "normlab study") -> None:
        self.title = title

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        folders = find_runs([sweep_dir])
        if folders:
            report = write_report([load_run(f) for f in folders], sweep_dir, self.title)
            print(f"normlab: report of {len(folders)} runs -> {report}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normlab.report", description="Tables and figures from normlab run folders."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="a multirun folder, or run folders")
    parser.add_argument("--out", type=Path, help="where report.md and the PNGs go")
    parser.add_argument("--title", default="normlab study")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not p.exists()]
    if missing:
        sys.stderr.write(f"normlab: error: {missing[0]} does not exist; pass a multirun or run folder\n")
        return 2
    folders = find_runs(args.paths)
    if not folders:
        sys.stderr.write(
            f"normlab: error: no run folders (metrics.json or .hydra/config.yaml) under {args.paths[0]}\n"
        )
        return 2
    runs = [load_run(f) for f in folders]
    out = args.out or (args.paths[0] if len(args.paths) == 1 else Path("report"))
    report = write_report(runs, out, args.title)
    print(f"{len(runs)} runs -> {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
