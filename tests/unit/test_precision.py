"""Precision is a per-run choice: bf16 trains on CPU; impossible combinations fail at start.

``bf16-mixed`` (autocast, fp32 weights) and ``bf16-true`` (bf16 weights) train the debug LM a few
steps on real data next to ``32-true`` from the same init and batches: finite, falling losses, and a
first-step loss within bf16 rounding of fp32's. Combinations the hardware or strategy cannot run are
refused by ``normlab.trainer_config.validate_trainer_config`` with one line naming the key and the fix,
before any data is touched, and every trainer config builds a Trainer.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from normlab.distributed import FSDP2Strategy
from normlab.errors import ConfigError
from normlab.run import build_trainer, train
from normlab.trainer_config import validate_trainer_config
from tests.distributed import recorder

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    from tests.conftest import compose_config

    out, runs = tmp_path_factory.mktemp("precision"), {}
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        cfg = compose_config(
            "train",
            [
                "experiment=debug",
                f"trainer.precision={precision}",
                f"trainer.max_steps={STEPS}",
                "trainer.limit_val_batches=0",
                "test=false",
                "optim.warmup_steps=2",
                "callbacks=none",
                "~logger",
                "+callbacks.recorder._target_=tests.distributed.recorder.Recorder",
                f"+callbacks.recorder.out_dir={out / precision}",
            ],
            out / f"run-{precision}",
            data_dir,
        )
        _, objects = train(cfg)
        runs[precision] = {
            "losses": recorder.read(out / precision)[0]["losses"],
            "dtype": next(objects["task"].net.parameters()).dtype,
        }
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("precision, weights", [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_bf16_trains_a_few_steps_beside_fp32(
    precision_runs: dict, precision: str, weights: torch.dtype
) -> None:
    fp32, run = precision_runs["32-true"]["losses"], precision_runs[precision]
    losses = [run["losses"][str(s)] for s in range(1, STEPS + 1)]
    assert run["dtype"] == weights
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05  # it trains
    # the same init and batch: bf16 matmuls round to ~3 significant digits, so the loss agrees closely
    assert losses[0] == pytest.approx(fp32["1"], abs=0.05)
    assert precision_runs["32-true"]["dtype"] == torch.float32


BAD = [
    (["trainer.precision=16-true"], "trainer.precision: '16-true' is not supported"),
    (["trainer.precision=32"], "trainer.precision: 32 is not supported"),
    (
        ["trainer=cpu", "trainer.precision=16-mixed"],
        "trainer.precision: 16-mixed (fp16 AMP) needs a CUDA GPU",
    ),
    (
        ["trainer=fsdp", "trainer.precision=16-mixed"],
        "trainer.precision: 16-mixed (fp16 AMP) needs a CUDA GPU",
    ),
    (["trainer.strategy=fsdp"], "trainer.strategy: Lightning's FSDP1 strategy 'fsdp' runs only on CUDA GPUs"),
    (
        ["trainer=fsdp", "trainer.strategy.param_dtype=bfloat16", "trainer.precision=bf16-mixed"],
        "trainer.strategy.param_dtype: FSDP2 mixed precision replaces trainer.precision=bf16-mixed",
    ),
    (
        ["trainer=fsdp", "trainer.strategy.sharding=zero3"],
        "trainer.strategy.sharding: 'zero3' is not one of full, hybrid",
    ),
    (
        ["trainer=fsdp", "trainer.strategy.layers_per_unit=0"],
        "trainer.strategy.layers_per_unit: must be an integer",
    ),
    (
        ["trainer=fsdp", "trainer.strategy.param_dtype=fp8"],
        "trainer.strategy.param_dtype: 'fp8' is not one of float32, bfloat16, float16 or null",
    ),
    (["trainer=fsdp", "+trainer.strategy.cpu_offload=true"], "trainer.strategy.cpu_offload: unknown key"),
    (
        ["trainer=fsdp", "trainer.strategy._target_=lightning.pytorch.strategies.ModelParallelStrategy"],
        "trainer.strategy: plain ModelParallelStrategy is not supported",
    ),
]
if not torch.cuda.is_available():
    BAD.append((["trainer=gpu"], "trainer.accelerator: 'gpu' but no CUDA GPU is visible"))


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_impossible_combinations_fail_with_one_line(make_cfg, overrides: list[str], message: str) -> None:
    cfg = make_cfg("train", ["experiment=debug", *overrides])
    with pytest.raises(ConfigError) as err:
        validate_trainer_config(cfg.trainer)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_check_runs_before_any_data_is_touched(make_cfg) -> None:
    # the dataset name is bad too, but the trainer is checked first (no download, no tokenizer)
    cfg = make_cfg("train", ["experiment=debug", "trainer.precision=16-mixed", "data.dataset=missing"])
    with pytest.raises(ConfigError, match=r"^trainer\.precision: 16-mixed"):
        train(cfg)


def test_world_size_must_match_the_launcher(make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = make_cfg("train", ["experiment=debug", "trainer=fsdp", "trainer.devices=1"])
    with pytest.raises(ConfigError, match=r"^trainer\.devices x trainer\.num_nodes = 1 x 1 but the launcher"):
        validate_trainer_config(cfg.trainer)
    cfg = make_cfg("train", ["experiment=debug", "trainer=fsdp", "trainer.devices=1", "trainer.num_nodes=2"])
    validate_trainer_config(cfg.trainer)


@pytest.mark.parametrize(
    "name, strategy, processes",
    [
        ("default", SingleDeviceStrategy, 1),
        ("cpu", SingleDeviceStrategy, 1),
        ("ddp", DDPStrategy, 1),
        ("ddp_sim", DDPStrategy, 2),
        ("fsdp", FSDP2Strategy, 1),
    ],
)
def test_every_trainer_config_builds_its_strategy(
    make_cfg, name: str, strategy: type, processes: int
) -> None:
    cfg = make_cfg("train", ["experiment=debug", f"trainer={name}", "trainer.accelerator=cpu"])
    trainer = build_trainer(cfg, [], [])
    assert type(trainer.strategy) is strategy
    assert trainer.num_devices == processes
    if name == "fsdp":
        assert (trainer.strategy.args.sharding, trainer.strategy.args.layers_per_unit) == ("full", 1)
        assert trainer.strategy._save_distributed_checkpoint


@pytest.mark.slow  # a fresh interpreter imports torch + Lightning: about 5 s
def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "NORMLAB_RUN_ID": "bad-precision"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=debug",
            "trainer.precision=16-mixed",
            f"paths.log_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("normlab: error:")]
    assert errors == [
        "normlab: error: trainer.precision: 16-mixed (fp16 AMP) needs a CUDA GPU, this run is on cpu; "
        "use bf16-mixed or 32-true"
    ]
    assert "Traceback" not in proc.stderr


def test_fused_adamw_under_fsdp2_is_refused_before_any_data_is_touched(make_cfg) -> None:
    """optim.fused=true with trainer=fsdp: one line naming the key and the fix, not a silent swap to
    the loop (the bad dataset name is never reached); the builder refuses DTensor parameters too."""
    cfg = make_cfg("train", ["experiment=debug", "trainer=fsdp", "optim.fused=true", "data.dataset=missing"])
    with pytest.raises(ConfigError, match=r"^optim\.fused: .* drop optim\.fused=true or use trainer=ddp$"):
        train(cfg)
    cfg = make_cfg("train", ["experiment=debug", "trainer=fsdp", "data.dataset=missing"])
    with pytest.raises(ConfigError, match=r"^data"):
        train(cfg)  # without optim.fused the same run gets past the check
