"""The benchmark scripts still run (they are not timed here: speed is never asserted in tests).

A smoke run of ``benchmarks/peers.py`` at depth 2 for normlab and the plain stack, with one normlab
variant (and of ``benchmarks/gpu_check.sh``, which runs it, with the device set to the CPU), of
``benchmarks/peers_paired.py`` (the same rows from one process, in rotating order), of
``benchmarks/optimizer_step.py``, ``benchmarks/gradient_lifetime.py``, ``benchmarks/gc_pauses.py``,
``benchmarks/heap.py`` and ``benchmarks/callback_costs.py`` (a real ``train.py`` run under
Lightning's profiler): they finish and
write the table they promise, and the models peers compares have the same parameter count (the
peers' premise: the same model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_peers_benchmark_runs_and_compares_equal_models(tmp_path: Path) -> None:
    out = tmp_path / "peers"
    args = ["benchmarks/peers.py", "--depths", "2", "--norms", "deepnorm", "--impls", "normlab", "plain"]
    _run(
        [*args, "--variants", "ac-full", "--rounds", "1", "--warmup", "1", "--steps", "1", "--out", str(out)]
    )
    rows = json.loads(out.with_suffix(".json").read_text())
    assert {(r["impl"], r["variant"]) for r in rows} == {
        ("normlab", "default"),
        ("plain", "default"),
        ("normlab", "ac-full"),
    }
    assert len({r["params_m"] for r in rows}) == 1, rows  # the same model in every row
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 for r in rows)
    assert "| plain | deepnorm | 2 |" in out.with_suffix(".md").read_text()


def test_a_failed_measurement_keeps_the_table_and_exits_non_zero(tmp_path: Path) -> None:
    out = tmp_path / "peers"
    args = ["--depths", "2", "--norms", "preln", "--impls", "plain", "--device", "bogus", "--rounds", "1"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/peers.py", *args, "--warmup", "1", "--steps", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "[peers] plain preln 2: failed:" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "[peers] 1 of 1 measurements failed (see above)"


def test_gpu_check_script_runs_its_table_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh itself, end to end, with the device set to the CPU and depth 2: the rows
    it will measure on a GPU (normlab fp32 and bf16-mixed, the plain stack; torchscale where installed)
    reach its table. The CUDA path differs only in the device string and the GPU-memory peak."""
    out = tmp_path / "gpu_check"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env.update(GPU_CHECK_DEVICE="cpu", GPU_CHECK_OUT=str(out))
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--depths", "2", "--warmup", "1", "--steps", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    measured = {(r["impl"], r["variant"], r["norm"], r["depth"], r["device"]) for r in rows}
    for norm in ("deepnorm", "preln"):
        for impl, variant in (("normlab", "default"), ("normlab", "bf16-mixed"), ("plain", "default")):
            assert (impl, variant, norm, 2, "cpu") in measured, measured
    table = out.with_suffix(".md").read_text()
    assert "| normlab (bf16-mixed) | deepnorm | 2 |" in table
    assert table.splitlines()[0] in proc.stdout  # the table is printed, not only written


def test_peers_paired_benchmark_times_all_implementations_in_one_process(tmp_path: Path) -> None:
    out = tmp_path / "paired"
    args = ["benchmarks/peers_paired.py", "--depths", "2", "--norms", "preln", "--impls", "normlab", "plain"]
    _run([*args, "--rounds", "3", "--warmup", "1", "--out", str(out)])
    rows = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["impl"], r["round"]) for r in rows) == [
        (i, r) for i in ("normlab", "plain") for r in range(3)
    ]
    assert [r["position"] for r in rows if r["impl"] == "normlab"] == [0, 1, 0]  # rotating order
    assert len({r["params_m"] for r in rows}) == 1, rows  # the same model in every row
    assert all(len(r["losses"]) == 4 and r["step_s"] > 0 for r in rows)  # 1 warm-up + 3 rounds
    text = out.with_suffix(".md").read_text()
    assert text.splitlines()[0].endswith(
        f"`python benchmarks/peers_paired.py {' '.join(args[1:])} --rounds 3 --warmup 1 --out {out}`"
    )
    assert "| plain | preln | 2 |" in text


def test_heap_benchmark_reads_the_heap_after_each_forward(tmp_path: Path) -> None:
    out = tmp_path / "heap"
    _run(["benchmarks/heap.py", "--depth", "2", "--norms", "preln", "--steps", "2", "--out", str(out)])
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["checkout"] == "current" and len(row["after_forward"]) == 2
    for reading in row["after_forward"]:
        assert reading["heap_in_use_mb"] > 0 and reading["rss_mb"] > reading["heap_in_use_mb"]
    assert row["end"]["peak_mb"] >= max(r["rss_mb"] for r in row["after_forward"])
    assert "| current | preln | 2 |" in out.with_suffix(".md").read_text()


def test_gc_pauses_benchmark_times_the_collector(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    # one setting (a train.py run each); that the setting reaches the run is tests/unit/test_frozen_gc.py's
    _run(["benchmarks/gc_pauses.py", "--depth", "2", "--steps", "3", "--settings", "on", "--out", str(out)])
    on = json.loads(out.with_suffix(".json").read_text())["on"]
    assert len(on) == 3  # 5 steps, 2 of them warm-up
    assert min(r["frozen"] for r in on) > 1000
    assert all(r["step_s"] > 0 and len(r["seconds"]) == 3 and len(r["count"]) == 3 for r in on)
    assert "| compute.freeze_gc=true (default) |" in out.with_suffix(".md").read_text()


def test_optimizer_step_benchmark_runs() -> None:
    table = _run(["benchmarks/optimizer_step.py", "--depth", "2", "--steps", "1"])
    for name in (
        "| loop |",
        "| foreach |",
        "| FlatAdamW (default) |",
        "| fused (optim.fused=true) |",
        "grad norm, one foreach group called directly (now)",
        "clip to norm 1.0, a step whose norm is above it",
        "clip to norm 1.0, a step whose norm is within it",
    ):
        assert name in table


def test_gradient_lifetime_benchmark_runs_both_parts(tmp_path: Path) -> None:
    out = tmp_path / "lifetime"
    _run(["benchmarks/gradient_lifetime.py", "--depth", "2", "--rounds", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    loop, train = result["loop"], result["train"]
    assert len(loop["freed"]) == len(loop["kept"]) == 2
    assert all(f > 0 and b > 0 for f, b in loop["freed"] + loop["kept"])
    # python train.py with the alternating callback: 7 steps, 4 after warm-up, 2 (freed, kept) pairs
    assert len(train["pairs"]) == 2 and all(t > 0 for pair in train["pairs"] for t in pair)
    table = out.with_suffix(".md").read_text()
    assert "| kept until after the next forward (Lightning) |" in table
    assert "| gradients kept through the next forward (Lightning's order) |" in table


def test_callback_costs_reads_lightnings_profile_of_a_real_run(tmp_path: Path) -> None:
    out = tmp_path / "callbacks"
    _run(["benchmarks/callback_costs.py", "--depth", "2", "--steps", "3", "--out", str(out)])
    run = json.loads(out.with_suffix(".json").read_text())["deepnorm"]
    rows = {r["action"]: r for r in run["rows"]}
    assert len(run["grad_norms"]) == 3 and all(n > 0 for n in run["grad_norms"])
    guard = rows["[Callback]DivergenceGuard.on_before_optimizer_step"]
    assert guard["calls"] == 3 and guard["total_s"] > 0
    assert rows["[LightningModule]LanguageModelTask.configure_gradient_clipping"]["calls"] == 3
    table = out.with_suffix(".md").read_text()
    assert "| deepnorm | [Callback]DivergenceGuard.on_before_optimizer_step | 3 |" in table
