"""MRPC pairs: the staged files parse into the documented counts (BOM, quotes), pairs pack as
[CLS] a [SEP] b [SEP] with segment ids and longest-first truncation, batches pad with a mask, and
the majority-class baseline has the value computed from the label counts."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import BinaryF1Score

from normlab.data.pairs import (
    CLS_ID,
    PAD_ID,
    SEP_ID,
    PairsDataModule,
    collate_pairs,
    pack_pair,
    read_mrpc,
)
from normlab.data.sources import ensure_dataset
from normlab.errors import ConfigError


@pytest.fixture(scope="module")
def mrpc_dir(data_dir):
    return ensure_dataset("mrpc", data_dir)


def test_staged_files_parse_into_documented_counts(mrpc_dir) -> None:
    counts = {}
    for split in ("train", "val", "test"):
        pairs = read_mrpc(mrpc_dir / f"msr-para-{split}.tsv")
        counts[split] = (len(pairs), sum(p.label for p in pairs))
    # mrpc/README.md: train 3,576 (2,407 positive), val 500 (346), test 1,725 (1,147)
    assert counts == {"train": (3576, 2407), "val": (500, 346), "test": (1725, 1147)}
    first = read_mrpc(mrpc_dir / "msr-para-train.tsv")[0]  # the file starts with a BOM
    assert first.label == 1
    assert first.a.startswith('Amrozi accused his brother, whom he called "the witness"')


def test_pack_pair_segments_and_longest_first_truncation() -> None:
    ids, seg = pack_pair([10, 11], [20, 21, 22], max_len=16)
    assert ids == [CLS_ID, 10, 11, SEP_ID, 20, 21, 22, SEP_ID]
    assert seg == [0, 0, 0, 0, 1, 1, 1, 1]
    ids, seg = pack_pair(list(range(100, 110)), [20, 21, 22], max_len=12)  # 9 body tokens
    assert ids == [CLS_ID, *range(100, 106), SEP_ID, 20, 21, 22, SEP_ID]
    ids, _ = pack_pair(list(range(100, 110)), list(range(200, 210)), max_len=11)
    assert ids == [CLS_ID, 100, 101, 102, 103, SEP_ID, 200, 201, 202, 203, SEP_ID]


def test_collate_pads_right_with_a_mask() -> None:
    items = [
        {"ids": [4, 9, 5, 8, 5], "segments": [0, 0, 0, 1, 1], "label": 1},
        {"ids": [4, 9, 5], "segments": [0, 0, 0], "label": 0},
    ]
    b = collate_pairs(items)
    assert b["input_ids"].tolist() == [[4, 9, 5, 8, 5], [4, 9, 5, PAD_ID, PAD_ID]]
    assert b["padding_mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert b["segments"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert b["labels"].tolist() == [1, 0]


def test_datamodule_batches_and_majority_baseline(data_dir) -> None:
    dm = PairsDataModule(data_dir=str(data_dir), max_len=64, batch_size=8, tokenizer={"vocab_size": 512})
    dm.setup()
    assert dm.majority_class == 1  # 2,407 of 3,576 train pairs are paraphrases
    batch = next(iter(dm.test_dataloader()))
    ids, seg, mask = batch["input_ids"], batch["segments"], batch["padding_mask"]
    assert ids.shape[0] == 8 and ids.shape[1] <= 64
    assert (ids[:, 0] == CLS_ID).all()
    assert ((ids == SEP_ID) & mask).sum(1).tolist() == [2] * 8  # exactly two real [SEP]
    for row in range(8):
        n = int(mask[row].sum())
        assert ids[row, n - 1] == SEP_ID and (ids[row, n:] == PAD_ID).all()
        first_b = int((ids[row] == SEP_ID).nonzero()[0]) + 1
        assert seg[row, :first_b].eq(0).all() and seg[row, first_b:n].eq(1).all()
    # the classifier's test-time baseline: always predict 1 on the 1,725 test pairs
    labels = torch.tensor([e["label"] for e in dm.examples("test")])
    f1 = BinaryF1Score()(torch.ones_like(labels), labels).item()
    assert (labels == 1).float().mean().item() == pytest.approx(1147 / 1725)
    assert f1 == pytest.approx(2 * 1147 / (2 * 1147 + 578), abs=1e-6)  # 0.7987


def test_tokenizer_from_a_missing_checkpoint_fails_in_one_line(tmp_path) -> None:
    dm = PairsDataModule(data_dir=str(tmp_path), tokenizer_from=str(tmp_path / "nope.ckpt"))
    with pytest.raises(ConfigError, match=r"^data.tokenizer_from: .*nope.ckpt does not exist"):
        dm.prepare_tokenizer()
