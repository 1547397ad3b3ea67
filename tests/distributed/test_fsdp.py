"""FSDP2 on 2 gloo processes (127.0.0.1): real sharding, same numbers as one process, sharded resume.

One 2-"node" torchrun launch (``scripts/torchrun.sh``, ``--nnodes=2 --nproc_per_node=1``, c10d) trains
the debug LM for 6 steps with full sharding and activation checkpointing, writing sharded checkpoints
at steps 3 and 6. A second 2-node launch resumes from step 3 with *hybrid* sharding (HSDP: replicate
across the 2 nodes, shard within each) and 2 blocks per FSDP unit, so the resume also proves that DCP
re-shards on load. A
single-process run with the same global batch (8 = 2 ranks x 4) and seed is the reference. All runs
record per-step global losses (tests/distributed/recorder.py). The model is DeepNorm with a ProRes
linear residual warm-up still under way at the resume, so the warm-up's buffers are checked under
sharding and resume too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from normlab.checkpoints import read_extras as read_checkpoint_extras
from normlab.run import evaluate, train
from tests.distributed import recorder
from tests.distributed.launch import torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

STEPS = 6
COMMON = [
    "experiment=debug",
    "trainer.max_steps=6",
    "trainer.limit_val_batches=0",
    "trainer.limit_test_batches=2",
    "optim.warmup_steps=2",
    "model.depth=3",
    "model.norm=deepnorm",
    # ProRes linear, T = 1: layer l warms up over l steps, so the step-3 resume lands mid-warm-up
    "++model.residual_warmup.schedule=linear",
    "++model.residual_warmup.T=1",
]
CKPT = [
    "callbacks.model_checkpoint.monitor=null",
    # numbered checkpoints every 3 steps, no validation: Lightning's own ModelCheckpoint does that
    "callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.model_checkpoint.save_last=false",
    "callbacks.model_checkpoint.filename='step{step}'",
    "~callbacks.rich_progress_bar",
]

MONITOR = {"_target_": "normlab.callbacks.stability.StabilityMonitor", "every_n_steps": 2}


def recorder_args(out: Path) -> list[str]:
    return [
        "+callbacks.recorder._target_=tests.distributed.recorder.Recorder",
        f"+callbacks.recorder.out_dir={out}",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    from tests.conftest import compose_config

    base = tmp_path_factory.mktemp("fsdp")
    # 1. reference: one process, global batch 8 (also builds the tokenizer cache the launches reuse)
    ref_cfg = compose_config(
        "train",
        COMMON
        + ["data.batch_size=8", "callbacks=none", "~logger", "test=false", *recorder_args(base / "ref")]
        + [f"+callbacks.stability_monitor.{k}={v}" for k, v in MONITOR.items()],
        base / "ref_run",
        data_dir,
    )
    train(ref_cfg)
    fsdp = COMMON + [
        "trainer=fsdp",
        "data.batch_size=4",
        "compute.activation_checkpointing=full",
        "logger=csv",
        "callbacks.stability_monitor.every_n_steps=2",
        *CKPT,
        f"paths.data_dir={data_dir}",
    ]
    # 2. two "nodes" of one process each, sharded checkpoints at steps 3 and 6, test at the end
    two_node = torchrun(
        fsdp + ["test=true", f"paths.log_dir={base / 'logs'}", *recorder_args(base / "two_node")],
        run_id="two_node",
        cwd=base,
        nnodes=2,
        nproc_per_node=1,
    )
    assert two_node.ok, two_node.tail()
    run_dir = base / "logs" / "debug" / "runs" / "two_node"
    # 3. resume from the step-3 shards, as HSDP (2 nodes: replicate across them, shard within); from a
    # copy outside the run's checkpoints/ folder, so it is a run of its own (a resume from inside
    # continues in the original folder, see the kill test below)
    import shutil

    copy = base / "step3.ckpt"
    shutil.copytree(run_dir / "checkpoints" / "step3.ckpt", copy)
    resumed = torchrun(
        fsdp
        + [
            "test=false",
            "trainer.strategy.sharding=hybrid",
            "trainer.strategy.layers_per_unit=2",  # 3 blocks -> units of 2 + 1
            f"paths.log_dir={base / 'logs2'}",
            f"ckpt_path={copy}",
            *recorder_args(base / "resumed"),
        ],
        run_id="resumed",
        cwd=base,
        nnodes=2,
        nproc_per_node=1,
    )
    assert resumed.ok, resumed.tail()
    return {
        "base": base,
        "run_dir": run_dir,
        "ref": recorder.read(base / "ref")[0],
        "two_node": recorder.read(base / "two_node"),
        "resumed": recorder.read(base / "resumed"),
    }


def test_two_torchrun_nodes_finish_into_one_run_directory(runs: dict) -> None:
    ranks = runs["two_node"]
    assert sorted(ranks) == [0, 1]  # both ranks reached teardown and wrote their record
    assert {r["node_rank"] for r in ranks.values()} == {0, 1}
    assert all(r["num_nodes"] == 2 and r["world_size"] == 2 for r in ranks.values())
    assert [p.name for p in (runs["base"] / "logs" / "debug" / "runs").iterdir()] == ["two_node"]
    run_dir = runs["run_dir"]
    # only rank 0 writes the Hydra configs, the job log and the metrics
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert [p.name for p in run_dir.glob("*.log")] == ["train.log"]
    assert len(list(run_dir.rglob("metrics.csv"))) == 1
    # both ranks wrote their shard of each checkpoint directory
    for step in (3, 6):
        shards = sorted(p.name for p in (run_dir / "checkpoints" / f"step{step}.ckpt").glob("*.distcp"))
        assert shards == ["__0_0.distcp", "__1_0.distcp"]


def test_each_rank_holds_about_half_of_the_parameters(runs: dict) -> None:
    ranks, total = runs["two_node"], runs["ref"]["total_numel"]
    assert all(r["dtensor"] and r["placements"] == ["S(0)"] for r in ranks.values())  # Shard(0) on a 1-D mesh
    assert all(r["total_numel"] == total for r in ranks.values())
    assert sum(r["local_numel"] for r in ranks.values()) == total
    for r in ranks.values():  # dim-0 chunks: uneven only by the odd rows of some tensors
        assert abs(r["local_numel"] / total - 0.5) < 0.01, (r["local_numel"], total)


def test_sharded_init_gives_the_weights_of_the_unsharded_init(runs: dict) -> None:
    ref, sharded = runs["ref"]["init_stats"], runs["two_node"][0]["init_stats"]
    assert sharded.keys() == ref.keys()
    for name, (mean, std, abs_sum) in ref.items():
        assert sharded[name] == pytest.approx([mean, std, abs_sum], rel=1e-6, abs=1e-9), name


def test_first_losses_match_one_process_with_the_same_global_batch(runs: dict) -> None:
    ref, sharded = runs["ref"]["losses"], runs["two_node"][0]["losses"]
    assert sorted(map(int, sharded)) == list(range(1, STEPS + 1))
    assert runs["two_node"][1]["losses"] == sharded  # every rank sees the same reduced loss
    for step in map(str, range(1, STEPS + 1)):
        assert math.isfinite(sharded[step])
        assert sharded[step] == pytest.approx(ref[step], abs=2e-4), (step, sharded[step], ref[step])
    assert ref["6"] < ref["1"]  # and it trains


def test_sharded_checkpoint_resumes_to_the_same_losses_under_hybrid_sharding(runs: dict) -> None:
    straight, resumed = runs["two_node"][0], runs["resumed"][0]
    # HSDP mesh (replicate=2 nodes, shard=1 process per node): every rank holds all parameters
    assert resumed["placements"] == ["R", "S(0)"] and resumed["local_numel"] == resumed["total_numel"]
    assert resumed["global_step_at_start"] == 3
    assert sorted(map(int, resumed["losses"])) == [4, 5, 6]
    for step in ("4", "5", "6"):
        assert resumed["losses"][step] == pytest.approx(straight["losses"][step], abs=1e-6), step


def test_eval_reads_the_sharded_checkpoint_directory(runs: dict, make_cfg, tmp_path: Path) -> None:
    ckpt = runs["run_dir"] / "checkpoints" / "step6.ckpt"
    assert ckpt.is_dir() and read_checkpoint_extras(ckpt)["tokenizer"]
    # one process, 4 batches of 4 = the 2 ranks x 2 batches x 4 the FSDP run tested
    cfg = make_cfg("eval", [f"ckpt_path={ckpt}", "trainer.limit_test_batches=4"], out_dir=tmp_path)
    metrics, _ = evaluate(cfg)
    assert metrics["test/loss"] == pytest.approx(runs["two_node"][0]["metrics"]["test/loss"], abs=1e-5)


def test_stability_monitor_reduces_sharded_gradients_to_the_full_block_norms(runs: dict) -> None:
    """Per-block gradient norms from FSDP shards (one all-reduce) equal the single-process ones."""
    ref = [json.loads(x) for x in (runs["base"] / "ref_run" / "stability.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (runs["run_dir"] / "stability.jsonl").read_text().splitlines()]
    ref_updates = [r for r in ref if "update" in r]
    two_updates = [r for r in two if "update" in r]
    ref, two = [r for r in ref if "decoder" in r], [r for r in two if "decoder" in r]
    assert [r["step"] for r in two] == [r["step"] for r in ref] == [1, 3, 5]
    # the model update on the same (broadcast) probe batch: the same numbers as one process
    assert [r["step"] for r in two_updates] == [r["step"] for r in ref_updates] == [0, 1, 2, 3, 4, 5]
    for a, b in zip(two_updates, ref_updates, strict=True):
        for key in ("hidden_rms", "logits_rms"):
            assert a["update"][key] == pytest.approx(b["update"][key], rel=1e-3, abs=1e-6), (a, b)
    for a, b in zip(two, ref, strict=True):
        assert a["decoder"]["grad_norm"] == pytest.approx(b["decoder"]["grad_norm"], rel=2e-3)
        # mean over ranks of per-rank RMS vs RMS over the whole batch: close, not identical
        assert a["decoder"]["act_rms"] == pytest.approx(b["decoder"]["act_rms"], rel=5e-2)


def test_kill_9_of_a_sharded_run_resumes_to_the_same_losses(runs: dict, data_dir: Path) -> None:
    """Both ranks SIGKILLed after the backward of step 5; last.ckpt (a sharded directory written
    every 2 steps, swapped in whole) is complete, and resuming it reproduces the uninterrupted FSDP
    run's losses for every step."""
    from normlab.checkpoints import read_checkpoint_meta

    base = runs["base"]
    fsdp = COMMON + [
        "trainer=fsdp",
        "data.batch_size=4",
        "compute.activation_checkpointing=full",
        "~logger",
        "callbacks.stability_monitor.every_n_steps=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "~callbacks.rich_progress_bar",
        "test=false",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={base / 'logs_kill'}",
    ]
    killer = [
        "+callbacks.killer._target_=tests.e2e.test_crash_safety.KillAt",
        "+callbacks.killer.point=step",
        "+callbacks.killer.step=5",
    ]
    killed = torchrun(fsdp + killer, run_id="killed", cwd=base, nnodes=2, nproc_per_node=1)
    assert not killed.ok
    run_dir = base / "logs_kill" / "debug" / "runs" / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_dir() and read_checkpoint_meta(last)["global_step"] == 4
    assert not list((run_dir / "checkpoints").glob(".*tmp*"))
    resumed = torchrun(
        fsdp + [f"ckpt_path={last}", *recorder_args(base / "after_kill")],
        run_id="after_kill",
        cwd=base,
        nnodes=2,
        nproc_per_node=1,
    )
    assert resumed.ok, resumed.tail()
    # global losses (mean over ranks: which torchrun node gets rank 0 may differ between launches)
    after = recorder.read(base / "after_kill")[0]
    straight = runs["two_node"][0]
    assert after["global_step_at_start"] == 4
    for step in ("5", "6"):
        assert after["losses"][step] == pytest.approx(straight["losses"][step], abs=1e-6), step
    # the run record continued in the killed run's folder: one row per step, 1..6
    rows = (run_dir / "train_curve.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, STEPS + 1))


def test_a_sharded_checkpoint_with_a_missing_shard_is_one_line(runs: dict, tmp_path: Path) -> None:
    import shutil

    from normlab.checkpoints import read_checkpoint_meta
    from normlab.errors import ConfigError

    broken = tmp_path / "step6.ckpt"
    shutil.copytree(runs["run_dir"] / "checkpoints" / "step6.ckpt", broken)
    shard = sorted(broken.glob("*.distcp"))[-1]
    shard.unlink()
    with pytest.raises(ConfigError, match=rf"is missing shard {shard.name} \(1 of 2 files\)") as info:
        read_checkpoint_meta(broken)
    assert "\n" not in str(info.value)
