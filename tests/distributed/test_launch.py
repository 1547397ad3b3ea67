"""One run directory per job, written by rank 0; FSDP units; the launcher scripts refuse bad setups.

Fast checks of the pieces the multi-process tests (test_fsdp.py) rely on: the run id every rank
derives from the launcher, Hydra's run dir / config output resolved per rank, how blocks group
into FSDP units, and the scripts' argument checks.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from normlab import distributed, launch
from normlab.checkpoints import read_extras
from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_VARS = (
    "RANK",
    "SLURM_PROCID",
    "LOCAL_RANK",
    "NODE_RANK",
    "NORMLAB_RUN_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "TORCHELASTIC_RUN_ID",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    launch.register_resolvers()
    return monkeypatch


def test_run_id_comes_from_the_command_line_then_the_launcher(clean_env: pytest.MonkeyPatch) -> None:
    started = launch.run_id()
    assert launch.run_id() == started  # the time-stamp fallback is fixed per process
    clean_env.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default: not a job id
    assert launch.run_id() == started
    clean_env.setenv("TORCHELASTIC_RUN_ID", "rdzv42")
    assert launch.run_id() == "rdzv42"
    clean_env.setenv("SLURM_JOB_ID", "123456")  # an allocation alone (salloc shell): not one run
    assert launch.run_id() == "rdzv42"
    clean_env.setenv("SLURM_STEP_ID", "2")  # an srun step: all its tasks are one run
    assert launch.run_id() == "123456_2"
    clean_env.setenv("NORMLAB_RUN_ID", "exp1")
    assert launch.run_id() == "exp1"
    assert launch.run_id("from-cli") == "from-cli"


@pytest.mark.parametrize(
    "env, rank",
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_PROCID": "5"}, 5),
        ({"LOCAL_RANK": "1"}, 1),
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, 1),
    ],
)
def test_launch_rank_before_any_process_group(clean_env: pytest.MonkeyPatch, env: dict, rank: int) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert launch.launch_rank() == rank


def _hydra_node(overrides: list[str]) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_all_ranks_share_one_run_dir_and_only_rank_0_writes_configs(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NORMLAB_RUN_ID", "job7")
    seen = []
    for rank in ("0", "1"):
        clean_env.setenv("RANK", rank)
        cfg = _hydra_node(["paths.log_dir=/runs"])
        seen.append((cfg.hydra.run.dir, cfg.hydra.output_subdir))
    assert seen == [("/runs/train/runs/job7", ".hydra"), ("/runs/train/runs/job7", None)]
    assert _hydra_node(["paths.log_dir=/runs", "run_id=mine"]).hydra.run.dir == "/runs/train/runs/mine"
    log = OmegaConf.create({"file": "${normlab.rank_zero_log:/runs/train.log}"})
    assert log.file == os.devnull  # RANK=1 still set
    clean_env.setenv("RANK", "0")
    assert log.file == "/runs/train.log"


def test_blocks_group_into_fsdp_units_within_each_stack() -> None:
    net = build_model(validate_model_config({"depth": 5, "d_model": 16, "n_heads": 2, "d_ffn": 32}), 64)
    units = distributed.shard_units(net, 2)
    assert [len(u) for u in units] == [2, 2, 1]
    assert [m for u in units for m in u] == list(net.decoder.layers)
    seq2seq = build_model(
        validate_model_config(
            {"arch": "encoder_decoder", "depth": 8, "d_model": 16, "n_heads": 2, "d_ffn": 32}
        ),
        64,
    )
    units = distributed.shard_units(seq2seq, 3)  # 4 encoder + 4 decoder layers: units never mix stacks
    assert [len(u) for u in units] == [3, 1, 3, 1]
    assert units[1][0] is seq2seq.encoder.layers[3] and units[2][0] is seq2seq.decoder.layers[0]


def test_fsdp_strategy_checks_its_own_arguments() -> None:
    strategy = distributed.FSDP2Strategy(sharding="hybrid", layers_per_unit=4, param_dtype="bfloat16")
    assert strategy.mp_policy().param_dtype is not None and strategy.mp_policy().reduce_dtype is None
    with pytest.raises(ConfigError, match=r"^trainer\.strategy\.layers_per_unit: must be an integer >= 1"):
        distributed.FSDP2Strategy(layers_per_unit=0)


def test_a_directory_without_metadata_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ckpt_path: .* is a directory without meta\.pt"):
        read_extras(tmp_path)


def _script(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | env
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "torchrun.sh"), "experiment=debug"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_torchrun_script_refuses_multi_node_without_run_id_or_endpoint() -> None:
    out = _script({"NNODES": "2", "RDZV_ENDPOINT": "127.0.0.1:1"})
    assert out.returncode == 2 and "set RUN_ID (the same value on every node)" in out.stderr
    out = _script({"NNODES": "2", "RUN_ID": "x"})
    assert out.returncode == 2 and "needs RDZV_ENDPOINT=<host:port>" in out.stderr


def test_launcher_scripts_parse() -> None:
    for script in ("torchrun.sh", "slurm.sbatch"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True, timeout=30)
