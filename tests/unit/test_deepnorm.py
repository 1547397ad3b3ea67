"""DeepNorm exact to docs/norms.md §2 and §8 (checks 1-7, 11b): constants, identities, init
statistics, placement, and the alpha = beta = 1 equivalence with Post-LN."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.config import validate_model_config
from normlab.models.init import build_model, materialize
from normlab.norms.deepnorm import deepnorm_constants
from normlab.norms.registry import build_strategy

REL = 1e-6


@pytest.mark.parametrize(
    ("arch", "stack", "n", "m", "alpha", "beta"),
    [
        ("decoder", "decoder", 0, 1000, 6.687403, 0.105737),
        ("decoder", "decoder", 0, 100, 3.760603, 0.188030),
        ("encoder", "encoder", 12, 0, 2.213364, 0.319472),
        ("encoder", "encoder", 24, 0, 2.632148, 0.268642),
        ("encoder_decoder", "encoder", 6, 6, 1.417938, 0.496989),
        ("encoder_decoder", "decoder", 6, 6, 2.059767, 0.343295),
        ("encoder_decoder", "encoder", 12, 6, 1.686222, 0.417916),
        ("encoder_decoder", "decoder", 12, 6, 2.059767, 0.343295),
        ("encoder_decoder", "encoder", 100, 100, 3.415742, 0.206310),
        ("encoder_decoder", "decoder", 100, 100, 4.161791, 0.169904),
    ],
)
def test_constants_match_the_paper_table(arch, stack, n, m, alpha, beta) -> None:
    a, b = deepnorm_constants(arch, stack, n, m)
    assert a == pytest.approx(alpha, rel=REL, abs=5e-7)
    assert b == pytest.approx(beta, rel=REL, abs=5e-7)


@pytest.mark.parametrize("depth", [1, 6, 48, 1000])
def test_identities_from_the_derivation(depth: int) -> None:
    for arch, stack in (("decoder", "decoder"), ("encoder", "encoder")):
        a, b = deepnorm_constants(arch, stack, depth, depth)
        assert 2 * depth * (2 * b**2) / a**2 == pytest.approx(1.0, rel=1e-12)
        assert a * b == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    a_d, b_d = deepnorm_constants("encoder_decoder", "decoder", depth, depth)
    assert 3 * depth * (2 * b_d**2) / a_d**2 == pytest.approx(1.0, rel=1e-12)
    a_e, b_e = deepnorm_constants("encoder_decoder", "encoder", depth, depth, exact=True)
    assert a_e * b_e == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    assert a_e**2 == pytest.approx((depth**4 * depth / 27) ** (1 / 8), rel=1e-12)


def test_exact_encoder_constants() -> None:
    a, b = deepnorm_constants("encoder_decoder", "encoder", 1, 1, exact=True)
    assert a == pytest.approx(0.813841, abs=1e-6)
    assert b == pytest.approx(0.868851, abs=1e-6)
    cfg = validate_model_config(
        {
            "arch": "encoder_decoder",
            "norm": "deepnorm",
            "depth": 2,
            "norm_args": {"encdec_constants": "exact"},
        }
    )
    assert build_strategy(cfg).alpha_beta("encoder")[0] == pytest.approx(0.813841, abs=1e-6)


def _model(arch: str, norm: str, depth: int, d_model: int = 64, seed: int = 0, **extra):
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": norm,
            "depth": depth,
            "d_model": d_model,
            "n_heads": 4,
            "d_ffn": 4 * d_model,
            **extra,
        }
    )
    return materialize(build_model(cfg, vocab_size=50), "cpu", seed=seed)


def test_init_statistics_beta_only_on_v_out_ffn() -> None:
    """docs/norms.md §8.6: 768x768 W^V with N=24 has std 0.268642*sqrt(2/1536) = 0.009694 (+-5%);
    W^Q, W^K keep sqrt(2/1536) = 0.036084."""
    d = 768
    model = _model("encoder", "deepnorm", 24, d_model=d, norm_layer="layernorm")
    att = model.encoder.layers[5].self_attn
    w = att.qkv_proj.weight
    assert w[2 * d :].std().item() == pytest.approx(0.009694, rel=0.05)
    assert w[:d].std().item() == pytest.approx(0.036084, rel=0.05)
    assert w[d : 2 * d].std().item() == pytest.approx(0.036084, rel=0.05)
    assert att.out_proj.weight.std().item() == pytest.approx(0.009694, rel=0.05)
    ffn = model.encoder.layers[5].ffn
    beta = 0.268642
    assert ffn.fc1.weight.std().item() == pytest.approx(beta * math.sqrt(2 / (d + 4 * d)), rel=0.05)
    assert ffn.fc2.weight.std().item() == pytest.approx(beta * math.sqrt(2 / (d + 4 * d)), rel=0.05)


def test_encoder_decoder_cross_attention_uses_decoder_beta() -> None:
    d = 256
    model = _model("encoder_decoder", "deepnorm", 12, d_model=d)  # N = M = 6
    cross = model.decoder.layers[2].cross_attn
    xavier = math.sqrt(2 / (2 * d))
    assert cross.kv_proj.weight[d:].std().item() == pytest.approx(0.343295 * xavier, rel=0.05)
    assert cross.out_proj.weight.std().item() == pytest.approx(0.343295 * xavier, rel=0.05)
    assert cross.kv_proj.weight[:d].std().item() == pytest.approx(xavier, rel=0.05)
    assert cross.q_proj.weight.std().item() == pytest.approx(xavier, rel=0.05)
    enc_v = model.encoder.layers[2].self_attn.qkv_proj.weight[2 * d :]
    assert enc_v.std().item() == pytest.approx(0.496989 * xavier, rel=0.05)


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_alpha_beta_one_is_exactly_postln(arch: str) -> None:
    """docs/norms.md §8.5: same params, same input -> bit-identical outputs."""
    deep = _model(arch, "deepnorm", 4, seed=3, norm_args={"alpha": 1.0, "beta": 1.0})
    post = _model(arch, "postln", 4, seed=3)
    assert all(
        torch.equal(a, b) for a, b in zip(deep.state_dict().values(), post.state_dict().values(), strict=True)
    )
    ids = torch.randint(0, 50, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    if arch == "decoder":
        out_d, out_p = deep(ids), post(ids)
    elif arch == "encoder":
        out_d, out_p = deep(ids, mask), post(ids, mask)
    else:
        out_d, out_p = deep(ids, mask, ids[:, :5]), post(ids, mask, ids[:, :5])
    assert torch.equal(out_d, out_p)


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_deepnorm_is_post_ln_without_final_norm(arch: str) -> None:
    """§8.7 / §8.11b: DeepNorm stacks are Post-LN (norm after the add) with no final norm,
    unlike torchscale's DecoderConfig(deepnorm=True) default."""
    model = _model(arch, "deepnorm", 4)
    stacks = [
        m
        for m in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if m is not None and hasattr(m, "layers")
    ]
    for stack in stacks:
        assert stack.final_norm is None
        res = stack.layers[0].ffn_residual
        assert type(res).__name__ == "PostNormResidual" and res.alpha > 1


def test_post_ln_block_outputs_are_normalised() -> None:
    """§8.8: LN after the add gives per-token mean 0, variance 1 at init."""
    model = _model("decoder", "deepnorm", 3)
    h = model.hidden(torch.randint(0, 50, (4, 16)))
    assert h.mean(-1).abs().max().item() < 1e-5
    assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)
