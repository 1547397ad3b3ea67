"""Encoder-only, end to end on real data: MLM pretraining on the staged English corpus, MRPC
fine-tuning from that checkpoint, and eval.py on the fine-tuned checkpoint alone; plus one
optimizer step of a 1,000-layer Upscale-LN encoder.

Asserts the MLM loss falls (first vs last training steps, and val below the unigram baseline's
neighbourhood), the classifier's loss falls, the fine-tuned encoder started from the pretrained
one, and eval reports test accuracy / F1 with the majority-class baseline beside them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from normlab.run import evaluate, train

pytestmark = pytest.mark.slow

TINY = [
    "model.depth=2",
    "model.d_model=32",
    "model.n_heads=2",
    "model.d_ffn=64",
    "model.dropout=0.0",
    "logger=csv",
    "~callbacks.rich_progress_bar",
    "trainer.log_every_n_steps=1",
]


def _train_losses(run_dir: Path) -> list[float]:
    rows = csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open())
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_pretrain_then_finetune_then_eval(make_cfg, tmp_path: Path) -> None:
    mlm_cfg = make_cfg(
        "train",
        [
            "experiment=mlm_pretrain",
            *TINY,
            "data.seq_len=64",
            "data.batch_size=16",
            "data.tokenizer.vocab_size=512",
            "trainer.max_steps=80",
            "trainer.val_check_interval=40",
            "trainer.limit_val_batches=4",
            "trainer.limit_test_batches=4",
            "optim.lr=3e-3",
            "optim.warmup_steps=10",
        ],
        out_dir=tmp_path / "mlm",
    )
    mlm_metrics, mlm = train(mlm_cfg)
    losses = _train_losses(tmp_path / "mlm")
    assert len(losses) == 80
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > math.log(512) - 0.3  # starts near uniform over the vocabulary (6.24 nats)
    assert last < first - 0.5, (first, last)
    assert mlm_metrics["val/loss"] < mlm_metrics["unigram_baseline"] + 0.3, mlm_metrics
    assert 0.0 < mlm_metrics["test/acc"] < 1.0

    ckpt = tmp_path / "mlm" / "checkpoints" / "last.ckpt"
    ft_cfg = make_cfg(
        "train",
        [
            "experiment=mrpc_finetune",
            *TINY,
            f"model.init_from={ckpt}",
            "data.max_len=64",
            "trainer.max_steps=60",
            "trainer.val_check_interval=30",
            "trainer.limit_test_batches=8",
            "optim.lr=1e-3",
            "optim.warmup_steps=5",
        ],
        out_dir=tmp_path / "ft",
    )
    ft_metrics, ft = train(ft_cfg)
    assert ft["datamodule"].tokenizer.to_json() == mlm["task"].tokenizer_json  # tokenizer came along
    losses = _train_losses(tmp_path / "ft")
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.02, (first, last)
    assert ft_metrics["val/loss"] < math.log(2)
    # the fine-tuned encoder is the pretrained one moved a little, not a fresh init
    pre = mlm["task"].net.encoder.state_dict()
    post = ft["task"].net.encoder.state_dict()
    w0, w1 = pre["embed.weight"], post["embed.weight"]
    assert (w1 - w0).norm() / w0.norm() < 0.3

    best = ft["trainer"].checkpoint_callback.best_model_path
    eval_cfg = make_cfg(
        "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=8"], out_dir=tmp_path / "eval"
    )
    metrics, _ = evaluate(eval_cfg)
    assert metrics["test/acc"] == pytest.approx(ft_metrics["test/acc"], abs=1e-6)
    assert metrics["test/f1"] == pytest.approx(ft_metrics["test/f1"], abs=1e-6)
    # majority class (1) on the first 8 x 32 test pairs, the same baseline train.py reported
    assert 0.55 < metrics["test/majority_acc"] < 0.8
    acc = metrics["test/majority_acc"]
    assert metrics["test/majority_f1"] == pytest.approx(2 * acc / (1 + acc), abs=1e-5)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["metrics"]) >= {"test/acc", "test/f1", "test/majority_acc", "test/majority_f1"}


def test_thousand_layer_upscale_ln_encoder_trains_a_step(data_dir) -> None:
    from normlab.data.mlm import MLMDataModule
    from normlab.tasks.mlm import MaskedLMTask

    dm = MLMDataModule(data_dir=str(data_dir), seq_len=32, batch_size=4, tokenizer={"vocab_size": 512})
    batch = next(iter(dm.val_dataloader()))
    task = MaskedLMTask(
        model={
            "arch": "encoder",
            "norm": "upscale_ln",
            "depth": 1000,
            "d_model": 16,
            "n_heads": 2,
            "d_ffn": 32,
        },
        optim={},
        vocab_size=dm.tokenizer.vocab_size,
    )
    task.configure_model()
    residual = task.net.encoder.encoder.layers[0].ffn_residual
    assert residual.alpha == pytest.approx(2000**0.25)  # (2N)^(1/4) = 6.687
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    loss, _, _ = task._loss(batch)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)
    bottom = task.net.encoder.encoder.layers[0].ffn.fc1.weight.grad
    assert bottom.abs().sum() > 0  # the gradient reaches layer 0 through 1,000 layers
    optimizer.step()
    with torch.no_grad():
        after, _, _ = task._loss(batch)
    assert abs(loss.item() - math.log(dm.tokenizer.vocab_size)) < 1.0  # starts near uniform
    assert math.isfinite(after.item())
