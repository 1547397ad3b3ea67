"""How ``benchmarks/peers.py`` and ``benchmarks/peers_paired.py`` turn rows into their table: ratios
paired within a round, rounds run in alternating or rotating order, peaks not measured shown as such,
and the provenance line above the table (no process is started here)."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    """A benchmark script as a module (benchmarks/ is not a package: its scripts import each other)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module(name)


def _row(impl: str, round_: int, step_s: float, **extra) -> dict:
    base = {"impl": impl, "variant": "default", "norm": "preln", "depth": 100, "round": round_}
    return {**base, "step_s": step_s, "peak_mb": 500.0, "tokens_per_s": 1.0, "build_s": 1.0, **extra}


def test_paired_ratio_divides_within_each_round_not_the_medians() -> None:
    t = _load("peers_table")
    # the machine is twice as fast in round 1: per round normlab / torchscale = 0.5 and 0.7
    rows = [
        _row("normlab", 0, 5.0),
        _row("torchscale", 0, 10.0),
        _row("normlab", 1, 3.5),
        _row("torchscale", 1, 5.0),
    ]
    normlab = [r for r in rows if r["impl"] == "normlab"]
    assert abs(t.paired_ratio(normlab, rows, "torchscale") - 0.6) < 1e-12
    # the ratio of the medians of rounds is another number (4.25 / 7.5), and the table shows both
    line = next(ln for ln in t.table(rows).splitlines() if ln.startswith("| normlab |"))
    assert "| 0.57 | 0.60 |" in line
    assert t.paired_ratio(normlab, rows, "plain") is None  # no plain rows: no ratio, not a number


def test_paired_ratio_skips_rounds_where_the_reference_failed() -> None:
    t = _load("peers_table")
    rows = [
        _row("normlab", 0, 4.0),
        _row("torchscale", 0, 8.0),
        _row("normlab", 1, 9.0),
    ]  # no torchscale in 1
    assert t.paired_ratio(rows[::2], rows, "torchscale") == 0.5


def test_a_peak_not_measured_is_shown_as_not_measured() -> None:
    t = _load("peers_table")
    rows = [_row("normlab", 0, 4.0, peak_mb=math.nan), _row("torchscale", 0, 8.0, peak_mb=math.nan)]
    line = next(ln for ln in t.table(rows).splitlines() if ln.startswith("| normlab |"))
    assert line.endswith("| 0.50 | 0.50 | – | 1 | – | – | – | – | 1.0 |"), line
    assert "nan" not in t.table(rows)


def test_peak_above_depth_1_subtracts_each_implementations_own_floor() -> None:
    t = _load("peers_table")
    rows = [
        _row("normlab", 0, 0.1, depth=1, peak_mb=420.0),
        _row("torchscale", 0, 0.1, depth=1, peak_mb=400.0),
        _row("normlab", 0, 1.0, depth=100, peak_mb=640.0),
        _row("torchscale", 0, 1.5, depth=100, peak_mb=840.0),
        _row("plain", 0, 1.2, depth=100, peak_mb=700.0),  # no depth-1 row: no floor to subtract
    ]
    lines = {ln.split(" | ")[0] + ln.split(" | ")[2]: ln for ln in t.table(rows).splitlines()[2:]}
    # whole peaks 640 / 840 = 0.76; above each one's own floor (220 / 440) = 0.50
    assert lines["| normlab100"].endswith("| 640 | 0.76 | 220 | 0.50 | 1.0 |"), lines["| normlab100"]
    assert lines["| torchscale100"].endswith("| 840 | 1.00 | 440 | 1.00 | 1.0 |")
    assert lines["| plain100"].endswith("| 700 | 0.83 | – | – | 1.0 |")
    assert lines["| normlab1"].endswith("| 420 | 1.05 | – | – | 1.0 |")  # depth 1 is the floor itself


def test_peers_rounds_alternate_their_order() -> None:
    peers = _load("peers")
    specs = [{"impl": name} for name in ("normlab", "torchscale", "plain")]
    orders = [[s["impl"] for s in peers.round_order(specs, r)] for r in range(3)]
    assert orders == [["normlab", "torchscale", "plain"], ["plain", "torchscale", "normlab"], orders[0]]


def test_paired_rounds_rotate_so_each_implementation_goes_first_equally_often() -> None:
    paired = _load("peers_paired")
    impls = ["normlab", "torchscale", "plain"]
    orders = [paired.rotation(impls, r) for r in range(6)]
    assert orders[:3] == [impls, ["torchscale", "plain", "normlab"], ["plain", "normlab", "torchscale"]]
    assert orders[3:] == orders[:3]
    for position in range(3):
        assert sorted(order[position] for order in orders) == sorted(impls * 2)


def test_provenance_names_date_machine_torch_commit_and_command() -> None:
    t = _load("peers_table")
    rows = [_row("normlab", 0, 1.0, machine="Some CPU (2 logical CPUs)", torch="2.13.0")]
    line = t.provenance(rows, ["--depths", "100"])
    assert "Some CPU (2 logical CPUs)" in line and "torch 2.13.0" in line
    assert line.endswith("`python benchmarks/peers.py --depths 100`")
    assert line[:4].isdigit() and "normlab " in line
    assert t.provenance(rows, [], "benchmarks/peers_paired.py").endswith(
        "`python benchmarks/peers_paired.py`"
    )


def test_cpu_name_is_read_from_the_kernel() -> None:
    name = _load("peers")._cpu_name()
    assert name and name != "unknown CPU"


def test_a_measuring_process_that_fails_gives_no_row_and_its_last_error_line() -> None:
    peers = _load("peers")
    env = {"PATH": "/usr/bin:/bin"}
    ok = [sys.executable, "-c", "print('noise'); print('ROWS [1, 2]'); print('ROW {}')"]
    assert peers.run_measuring(ok, env, marker="ROWS") == ([1, 2], "?")
    # a process that printed its row and then failed is a failure, not a row
    failed = [sys.executable, "-c", "import sys; print('ROW {}'); sys.exit('measuring: out of memory')"]
    assert peers.run_measuring(failed, env) == (None, "measuring: out of memory")
    silent = [sys.executable, "-c", "print('nothing')"]
    assert peers.run_measuring(silent, env) == (None, "?")
