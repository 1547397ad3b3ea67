"""The study report on a tiny real multirun (2 strategies x 2 depths, a few steps, through
``python train.py -m experiment=depth_sweep``) plus one deliberately diverged run: every file is
written, every run has its row (the diverged one as such), jobs are named after the swept keys, and
the report works on a subset of runs and on other task families' records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normlab.report import main as report_main
from normlab.study import find_runs, load_run
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

FIGURES = [
    "val_vs_depth.png",
    "train_loss_by_depth.png",
    "model_update_vs_step.png",
    "model_update_vs_depth.png",
]
TINY = [
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.stability_monitor.every_n_steps=3",
]


def _train(args: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *args, f"paths.data_dir={data_dir}"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    logs = tmp_path_factory.mktemp("sweep")
    proc = _train(
        ["-m", "experiment=depth_sweep", "model.norm=postln,deepnorm,nosuchnorm", "model.depth=2,3", *TINY]
        + [f"paths.log_dir={logs}", "run_id=tiny"],
        data_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = logs / "depth_sweep" / "multiruns" / "tiny"
    # the two jobs with an unknown strategy fail in one line each and the sweep goes on
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("normlab: error: job ")]
    assert len(failed) == 2 and all("unknown strategy 'nosuchnorm'" in ln for ln in failed)
    assert "normlab: report of 6 runs" in proc.stdout
    injector = "tests.e2e.test_divergence_guard.NaNGradientInjector"
    diverged = _train(
        ["experiment=depth_sweep", "hydra.mode=RUN", "model.norm=postln", "model.depth=4", *TINY]
        + [f"+callbacks.nan_injector._target_={injector}", "+callbacks.nan_injector.at_step=5"]
        + [f"hydra.run.dir={folder / 'diverged'}"],
        data_dir,
    )
    assert diverged.returncode == 3, diverged.stderr[-3000:]
    return folder


def test_the_sweep_ends_in_a_report_with_every_run(sweep: Path) -> None:
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "depth=2,norm=deepnorm",
        "depth=2,norm=nosuchnorm",
        "depth=2,norm=postln",
        "depth=3,norm=deepnorm",
        "depth=3,norm=nosuchnorm",
        "depth=3,norm=postln",
        "diverged",
    ]
    for name in FIGURES:  # written by the Hydra callback at the end of the multirun
        assert (sweep / name).stat().st_size > 5_000, name
    assert report_main([str(sweep)]) == 0  # again, now with the diverged run
    text = (sweep / "report.md").read_text()
    rows = [
        line for line in text.splitlines() if line.startswith("| postln") or line.startswith("| deepnorm")
    ]
    assert len(rows) == 5
    diverged = [r for r in rows if "| 4 |" in r]
    assert len(diverged) == 1 and "diverged" in diverged[0] and "optimizer step 5" in diverged[0]
    for name in FIGURES + ["grad_heatmap_postln_decoder.png", "grad_heatmap_deepnorm_decoder.png"]:
        assert (sweep / name).is_file() and f"]({name})" in text, name


def test_runs_carry_what_the_report_needs(sweep: Path) -> None:
    runs = {(r.strategy, r.depth): r for r in map(load_run, find_runs([sweep]))}
    expected = {("postln", 2), ("postln", 3), ("deepnorm", 2), ("deepnorm", 3), ("postln", 4)}
    assert set(runs) == expected | {("nosuchnorm", 2), ("nosuchnorm", 3)}
    assert runs[("nosuchnorm", 2)].verdict == "crashed"
    assert runs[("postln", 4)].status == "diverged" and runs[("postln", 4)].verdict == "diverged"
    ok = runs[("deepnorm", 3)]
    assert ok.status == "finished" and len(ok.curve["loss"]) == 12
    updates = ok.updates()
    assert updates[0]["hidden_rms"] == 0.0 and sorted(updates)[:4] == [0, 1, 2, 3]
    assert [r["step"] for r in ok.layer_records("decoder")] == [1, 4, 7, 10]
    record = json.loads((ok.path / "metrics.json").read_text())
    assert {"final", "best"} <= set(record["val"]) and record["test"]["test/loss"] > 0


def test_a_subset_of_runs_into_another_folder(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "subset"
    assert (
        report_main(
            [str(sweep / "depth=2,norm=postln"), str(sweep / "depth=3,norm=postln"), "--out", str(out)]
        )
        == 0
    )
    text = (out / "report.md").read_text()
    assert text.count("| postln |") == 2 and "deepnorm" not in text.split("## Runs read")[0]


def _fake_run(folder: Path, task: str, val: dict, test: dict) -> None:
    folder.mkdir(parents=True)
    record = {
        "status": "finished",
        "steps": 10,
        "task": task,
        "model": {"norm": "preln", "depth": 6, "arch": "encoder_decoder"},
        "val": {"final": {"step": 10, **val}, "best": {"step": 10, **val}},
        "val_history": [{"step": 10, **val}],
        "test": test,
        "spike_score": {"train_loss": 0.0, "grad_norm": 0.0},
        "seconds_per_step": 0.1,
        "memory": {"host_peak_rss_mb": 500.0},
        "unigram_baseline": None,
    }
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "train_curve.csv").write_text("step,loss,grad_norm,seconds\n1,5.0,1.0,0.1\n2,4.0,1.0,0.1\n")


def test_other_task_families_show_their_metrics(tmp_path: Path) -> None:
    """Run records of a translation and a classification run (written as RunRecord writes them)."""
    _fake_run(
        tmp_path / "mt",
        "normlab.tasks.translate.TranslationTask",
        {"val/loss": 2.1, "val/bleu": 31.5},
        {"test/bleu": 30.2},
    )
    _fake_run(
        tmp_path / "clf",
        "normlab.tasks.classify.PairClassificationTask",
        {"val/loss": 0.6, "val/acc": 0.71, "val/f1": 0.8},
        {"test/acc": 0.69},
    )
    assert report_main([str(tmp_path / "mt"), str(tmp_path / "clf"), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "bleu 31.500" in text and "acc 0.710, f1 0.800" in text and "bleu 30.200" in text


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path / "nope")]) == 2
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("normlab: error: ") for line in err)
