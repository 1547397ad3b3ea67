"""Admin's profiling pass under FSDP2 on 2 gloo processes: the forward it runs is collective, so both
ranks must profile the same batch (the first training batch, broadcast from rank 0); they end with
the same omegas, also when omega is a learnable vector sharded as a DTensor, and train to the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed import recorder
from tests.distributed.launch import torchrun
from tests.distributed.test_fsdp import recorder_args

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.mark.parametrize(
    ("as_parameter", "reshard"),
    [(False, True), (True, True), (True, False)],
    ids=["buffer", "vector", "vector-kept"],
)
def test_both_ranks_profile_the_same_omegas(
    tmp_path: Path, data_dir: Path, as_parameter: bool, reshard: bool
) -> None:
    """reshard=False: trainer.strategy.reshard_after_forward=false keeps the gathered parameters after
    the pass; the values must still land in the sharded parameters (checked after 3 steps)."""
    overrides = [
        "experiment=debug",
        "trainer=fsdp",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=0",
        "test=false",
        "data.batch_size=4",
        "model.depth=3",
        "model.norm=admin",
        "++model.norm_args.output_change_scale=profiling",
        f"++model.norm_args.as_parameter={str(as_parameter).lower()}",
        f"trainer.strategy.reshard_after_forward={str(reshard).lower()}",
        "callbacks=none",
        "~logger",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *recorder_args(tmp_path / "rec"),
    ]
    done = torchrun(overrides, run_id="admin", cwd=tmp_path, nnodes=1, nproc_per_node=2)
    assert done.ok, done.tail()
    ranks = recorder.read(tmp_path / "rec")
    assert sorted(ranks) == [0, 1]
    omegas = [ranks[r]["omegas"] for r in (0, 1)]
    assert len(omegas[0]) == 6 and omegas[0][0] == 1.0 and omegas[0][-1] > 1.0
    assert omegas[0] == omegas[1]
    end = ranks[0]["omegas_end"]  # learnable omegas move by ~lr per step, not back to 1
    assert end[-1] == pytest.approx(omegas[0][-1], abs=0.05) and end[-1] > 1.05
    assert all(len(ranks[r]["losses"]) == 3 for r in (0, 1))
