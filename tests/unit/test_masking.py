"""BERT masking: exactly 15% of ordinary tokens selected per example, 80/10/10 mask/random/keep,
labels only on selected positions, fixed eval masks; the MLM loss sees selected positions only;
the real corpus packs into [CLS] a [SEP] b [SEP] examples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from normlab.data.mlm import (
    CLS_ID,
    IGNORE_INDEX,
    MASK_ID,
    N_SPECIAL,
    SEP_ID,
    MaskedPairs,
    MaskingCollator,
    MLMDataModule,
    mask_tokens,
    pair_windows,
)
from normlab.errors import ConfigError

V = 500


def _batch(rows: int = 400, length: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids, _ = pair_windows(torch.randint(N_SPECIAL, V, (rows * (length - 3),), generator=g), length)
    return ids


def test_exactly_fifteen_percent_of_ordinary_tokens_selected_per_example() -> None:
    ids = _batch()
    ids[:5, 100:] = 0  # some padding: never selected, and not counted
    inputs, labels = mask_tokens(ids, V, torch.Generator().manual_seed(1))
    selected = labels != IGNORE_INDEX
    n_ordinary = (ids >= N_SPECIAL).sum(1)
    expected = torch.round(n_ordinary.double() * 0.15).long()  # 125 -> 19 (BERT num_to_predict)
    assert torch.equal(selected.sum(1), expected)
    assert expected[10].item() == 19 and expected[0].item() == round(0.15 * 97)
    assert not selected[ids < N_SPECIAL].any()  # [CLS], [SEP], pad are never selected
    assert torch.equal(labels[selected], ids[selected])  # labels hold the original token
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes


def test_selected_tokens_are_80_masked_10_random_10_kept() -> None:
    ids = _batch(rows=2000)
    inputs, labels = mask_tokens(ids, V, torch.Generator().manual_seed(2))
    selected = labels != IGNORE_INDEX
    n = int(selected.sum())  # 38,000 selected tokens
    masked = (inputs == MASK_ID) & selected
    changed = selected & (inputs != ids) & ~masked
    kept_or_same = selected & (inputs == ids)
    # a random replacement equals the original with probability 1/(V-7); count it as "random"
    p_same = 1.0 / (V - N_SPECIAL)
    for count, p in (
        (masked.sum(), 0.8),
        (changed.sum(), 0.1 * (1 - p_same)),
        (kept_or_same.sum(), 0.1 + 0.1 * p_same),
    ):
        sd = math.sqrt(n * p * (1 - p))
        assert abs(int(count) - n * p) < 4 * sd, (int(count), n * p)
    random_ids = inputs[changed]
    assert random_ids.min() >= N_SPECIAL and random_ids.max() < V  # never a special token
    # random tokens are uniform over the ordinary vocabulary: mean (7 + 499) / 2
    assert random_ids.float().mean().item() == pytest.approx((N_SPECIAL + V - 1) / 2, rel=0.03)


def test_every_example_gets_at_least_one_prediction() -> None:
    ids = torch.tensor([[CLS_ID, 100, 101, SEP_ID, 102, SEP_ID]])  # 3 ordinary: round(0.45) = 0
    _, labels = mask_tokens(ids, V)
    assert int((labels != IGNORE_INDEX).sum()) == 1


def test_eval_masks_are_fixed_per_example_and_training_masks_change() -> None:
    ids, segments = pair_windows(torch.randint(N_SPECIAL, V, (50 * 61,)), 64)
    data = MaskedPairs(ids, segments)
    fixed = MaskingCollator(V, 0.15, 0.8, 0.1, seed=7)
    a = fixed([data[i] for i in range(8)])
    b = fixed([data[i] for i in (5, 6, 7)])  # same examples in another batch
    assert torch.equal(a["input_ids"][5:], b["input_ids"])
    assert torch.equal(a["labels"][5:], b["labels"])
    fresh = MaskingCollator(V, 0.15, 0.8, 0.1, seed=None)
    torch.manual_seed(0)
    c = fresh([data[i] for i in range(8)])
    d = fresh([data[i] for i in range(8)])
    assert not torch.equal(c["labels"], d["labels"])  # dynamic masking (RoBERTa)


def test_pair_windows_pack_cls_a_sep_b_sep_with_segments() -> None:
    stream = torch.arange(100, 100 + 2 * 13 + 5)
    ids, segments = pair_windows(stream, 16)
    assert ids.shape == (2, 16)  # 31 tokens -> two windows of 13, 5 dropped
    assert ids[0].tolist() == [CLS_ID, *range(100, 106), SEP_ID, *range(106, 113), SEP_ID]
    assert segments[0].tolist() == [0] * 8 + [1] * 8
    assert ids[1, 1].item() == 113  # non-overlapping


def test_mlm_loss_is_cross_entropy_on_selected_positions_only() -> None:
    from normlab.tasks.mlm import MaskedLMTask

    task = MaskedLMTask(
        model={"arch": "encoder", "depth": 2, "d_model": 32, "n_heads": 2, "d_ffn": 64},
        optim={},
        vocab_size=V,
        seed=3,
    )
    task.configure_model()
    task.eval()
    ids, segments = pair_windows(torch.randint(N_SPECIAL, V, (4 * 29,)), 32)
    inputs, labels = mask_tokens(ids, V, torch.Generator().manual_seed(0))
    batch = {"input_ids": inputs, "segments": segments, "labels": labels}
    loss, acc, n = task._loss(batch)
    full = task(inputs, segments)  # [B, T, V] logits at every position
    sel = labels != IGNORE_INDEX
    assert n == int(sel.sum())
    expected = F.cross_entropy(full.reshape(-1, V), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(loss, expected)
    assert acc.item() == pytest.approx((full[sel].argmax(-1) == labels[sel]).float().mean().item())
    assert loss.item() == pytest.approx(math.log(V), abs=0.5)  # untrained: about uniform


def test_bad_masking_settings_fail_in_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.mask_frac"):
        MLMDataModule(data_dir=str(tmp_path), mask_frac=0.95, random_frac=0.1)
    with pytest.raises(ConfigError, match="data.corpora"):
        MLMDataModule(data_dir=str(tmp_path), corpora=["wikipedia"])


@pytest.mark.slow
def test_real_corpus_examples_and_masking(data_dir) -> None:
    dm = MLMDataModule(data_dir=str(data_dir), seq_len=64, batch_size=16, tokenizer={"vocab_size": 512})
    dm.setup()
    n = {s: len(dm.ids[s]) for s in ("train", "val", "test")}
    assert n["train"] > 10 * n["val"] > 0 and n["test"] > 0
    # all three corpora are in the train split
    text = dm.tokenizer.decode(dm.ids["train"][:200].tolist())
    assert text.startswith("Two young, White males are outside near many bushes.")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (16, 64)
    assert (batch["input_ids"][:, 0] == CLS_ID).all() and (batch["input_ids"][:, -1] == SEP_ID).all()
    sel = batch["labels"] != IGNORE_INDEX
    assert torch.equal(sel.sum(1), torch.full((16,), round(61 * 0.15)))
    again = next(iter(dm.val_dataloader()))
    assert torch.equal(again["input_ids"], batch["input_ids"])  # fixed eval masks
    # masked tokens are predicted from context: the unigram model of train costs ~5.5 nats
    assert 4.5 < dm.unigram_baseline < math.log(512)
