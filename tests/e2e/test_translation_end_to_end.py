"""Encoder-decoder translation end to end on real Multi30k De->En, and the encoder-decoder at depth.

- ``train(cfg)`` then ``evaluate(cfg)``: the loss falls below the target-unigram baseline, a
  SacreBLEU score with its signature and a hypotheses file are produced, and the checkpoint alone
  reproduces the test scores;
- DeepNorm's per-side constants (encoder 0.81 (N^4 M)^(1/16) / 0.87 (N^4 M)^(-1/16), decoder
  (3M)^(1/4) / (12M)^(-1/4)) land in the built model, in the residuals and in the init;
- a 1,000-layer (500 + 500) encoder-decoder trains one step with a finite loss.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from normlab.config import validate_model_config
from normlab.models.init import build_model, materialize
from normlab.norms.base import PostNormResidual
from normlab.run import evaluate, train

TINY = [
    "experiment=mt_multi30k",
    "model.depth=2",
    "model.d_model=64",
    "model.n_heads=4",
    "model.d_ffn=128",
    "model.dropout=0.0",
    "data.tokenizer.vocab_size=1000",
    "data.max_tokens=1024",
    "data.eval_max_tokens=2048",
    "optim.lr=3e-3",
    "optim.warmup_steps=10",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are dominated by per-op overhead: on a 2-core machine shared with other jobs, two
    OpenMP threads made this module ~6x slower (spin-waiting), one thread is as fast when idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def target_unigram_baseline(datamodule) -> float:
    """Val cross-entropy (nats/token) of the add-one unigram model of the train targets (+<eos>):
    what a decoder gets without looking at the source or its own prefix."""
    vocab = datamodule.tokenizer.vocab_size
    eos = datamodule.tokenizer.eos_id

    def ids(split: str) -> torch.Tensor:
        return torch.tensor([i for t in datamodule.datasets[split].tgt for i in t + [eos]])

    counts = torch.bincount(ids("train"), minlength=vocab).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return float(-log_p[ids("val")].mean())


@pytest.mark.slow
def test_train_then_eval_translation_from_checkpoint_alone(make_cfg, tmp_path: Path) -> None:
    overrides = TINY + [
        "logger=csv",
        "callbacks=default",
        "~callbacks.rich_progress_bar",
        "trainer.max_steps=200",
        "trainer.val_check_interval=100",
        "trainer.limit_val_batches=4",
        "trainer.limit_test_batches=3",
        "task.val_bleu_size=40",
        "task.beam_size=3",
    ]
    cfg = make_cfg("train", overrides, out_dir=tmp_path / "train")
    metrics, objects = train(cfg)
    baseline = target_unigram_baseline(objects["datamodule"])
    assert math.log(1000) > baseline > 4.0
    assert metrics["val/loss"] < baseline - 0.5, (metrics, baseline)  # learned more than frequencies
    assert metrics["test/ppl"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-4)
    # 200 steps of a d=64 model: BLEU ~3, chrF ~15 (an untrained model scores ~0 and ~3-5)
    assert 1.0 < metrics["test/bleu"] < 100.0 and metrics["test/chrf"] > 10.0
    assert "val/bleu" in metrics

    best = objects["trainer"].checkpoint_callback.best_model_path
    eval_cfg = make_cfg(
        "eval", [f"ckpt_path={best}", "trainer.limit_test_batches=3"], out_dir=tmp_path / "eval"
    )
    eval_metrics, eval_objects = evaluate(eval_cfg)
    assert eval_metrics["test/bleu"] == pytest.approx(metrics["test/bleu"], abs=1e-6)
    assert eval_metrics["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-5)

    hyp_file = tmp_path / "eval" / "hypotheses" / "test_2016_flickr.de-en.beam3.en"
    report = json.loads(hyp_file.with_name(hyp_file.name + ".json").read_text())
    lines = hyp_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == report["n_sentences"] > 50
    assert report["bleu"] == pytest.approx(eval_metrics["test/bleu"])
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert report["beam_size"] == 3 and report["pair"] == "de-en"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["test/chrf"] > 10.0

    # decoding settings are overridable at eval time without retraining
    greedy_cfg = make_cfg(
        "eval",
        [f"ckpt_path={best}", "trainer.limit_test_batches=1", "+task_overrides.beam_size=1"],
        out_dir=tmp_path / "eval_greedy",
    )
    evaluate(greedy_cfg)
    assert (tmp_path / "eval_greedy" / "hypotheses" / "test_2016_flickr.de-en.beam1.en").exists()


def _alphas(stack) -> set[float]:
    return {round(m.alpha, 9) for m in stack.modules() if isinstance(m, PostNormResidual)}


@pytest.mark.parametrize(
    ("n", "m", "enc", "dec"),
    [
        (6, 6, (1.417938, 0.496989), (2.059767, 0.343295)),  # norms.md section 8, check 3
        (12, 6, (1.686222, 0.417916), (2.059767, 0.343295)),
    ],
)
def test_deepnorm_constants_per_side_of_an_encoder_decoder(n, m, enc, dec) -> None:
    cfg = validate_model_config(
        dict(
            arch="encoder_decoder",
            norm="deepnorm",
            depth=n + m,
            encoder_depth=n,
            d_model=128,
            n_heads=4,
            d_ffn=512,
        )
    )
    net = materialize(build_model(cfg, 64), "cpu", seed=0)
    assert _alphas(net.encoder) == {round(0.81 * (n**4 * m) ** (1 / 16), 9)}
    assert _alphas(net.decoder) == {round((3 * m) ** 0.25, 9)}
    assert _alphas(net.encoder).pop() == pytest.approx(enc[0], abs=1e-6)
    assert _alphas(net.decoder).pop() == pytest.approx(dec[0], abs=1e-6)
    # 3 residuals per decoder layer (self, cross, FFN), 2 per encoder layer
    assert sum(isinstance(x, PostNormResidual) for x in net.decoder.modules()) == 3 * m
    assert sum(isinstance(x, PostNormResidual) for x in net.encoder.modules()) == 2 * n
    assert net.encoder.final_norm is None and net.decoder.final_norm is None

    d = 128
    xavier = math.sqrt(2 / (d + d))

    def std(weights: list[torch.Tensor]) -> float:
        return float(torch.cat([w.detach().flatten() for w in weights]).std())

    for stack, (_, beta) in ((net.encoder, enc), (net.decoder, dec)):
        attn = [layer.self_attn for layer in stack.layers]
        v = [a.qkv_proj.weight[2 * d :] for a in attn]
        q = [a.qkv_proj.weight[:d] for a in attn]
        out = [a.out_proj.weight for a in attn]
        assert std(v) == pytest.approx(beta * xavier, rel=0.03)
        assert std(out) == pytest.approx(beta * xavier, rel=0.03)
        assert std(q) == pytest.approx(xavier, rel=0.03)  # W^Q, W^K keep gain 1
    # the decoder's cross-attention W^V / W^O use the decoder's beta, W^Q gain 1
    cross = [layer.cross_attn for layer in net.decoder.layers]
    assert std([c.kv_proj.weight[d:] for c in cross]) == pytest.approx(dec[1] * xavier, rel=0.03)
    assert std([c.out_proj.weight for c in cross]) == pytest.approx(dec[1] * xavier, rel=0.03)
    assert std([c.q_proj.weight for c in cross]) == pytest.approx(xavier, rel=0.03)


@pytest.mark.slow
def test_thousand_layer_encoder_decoder_trains_a_step(make_cfg, tmp_path: Path) -> None:
    """DeepNet's 1,000-layer model counts 500 encoder + 500 decoder layers: model.depth=1000."""
    cfg = make_cfg(
        "train",
        TINY
        + [
            "model.norm=deepnorm",
            "model.depth=1000",
            "model.d_model=32",
            "model.n_heads=2",
            "model.d_ffn=64",
            "data.max_tokens=128",
            "trainer.max_steps=1",
            "trainer.limit_val_batches=0",
            "test=false",
            "callbacks=none",
            "logger=csv",
        ],
        out_dir=tmp_path,
    )
    metrics, objects = train(cfg)
    net = objects["task"].net
    assert (len(net.encoder.layers), len(net.decoder.layers)) == (500, 500)
    assert _alphas(net.encoder) == {round(0.81 * (500**5) ** (1 / 16), 9)}  # 0.81 (N^4 M)^(1/16) = 3.868
    assert _alphas(net.decoder) == {round(1500**0.25, 9)}  # (3M)^(1/4) = 6.223
    assert objects["trainer"].global_step == 1
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/grad_norm"])
    assert abs(metrics["train/loss"] - math.log(1000)) < 2.0  # a sane start, not a blow-up
    assert all(torch.isfinite(p).all() for p in net.parameters())
