"""Sub-LN / Magneto exact to docs/norms.md §2b and §8.9: gamma per architecture, gamma multiplies
(DeepNorm's beta shrinks), q/k and cross-attention untouched, an LN before W^O and before fc2,
one final norm, in all three architectures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.base import PreNormResidual
from normlab.norms.deepnorm import deepnorm_constants
from normlab.norms.subln import subln_gamma

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(arch: str, depth: int, d_model: int = 32, seed: int = 0, **extra):
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": "subln",
            "depth": depth,
            "d_model": d_model,
            "n_heads": 4,
            "d_ffn": 4 * d_model,
            **extra,
        }
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _stacks(model):
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


@pytest.mark.parametrize(
    ("arch", "stack", "n", "m", "gamma"),
    [
        ("encoder", "encoder", 12, 0, 1.782710),
        ("decoder", "decoder", 0, 12, 1.782710),
        ("encoder_decoder", "encoder", 12, 12, 1.948385),
        ("encoder_decoder", "decoder", 12, 12, 1.893018),
    ],
)
def test_gamma_matches_the_paper_table(arch, stack, n, m, gamma) -> None:
    assert subln_gamma(arch, stack, n, m) == pytest.approx(gamma, abs=5e-7)


@pytest.mark.parametrize("depth", [2, 12, 100, 1000])
def test_gamma_identities_from_theorem_3_2(depth: int) -> None:
    """gamma^2 = log L with L = 2N (enc/dec-only) and L = 3M (decoder of enc-dec); the encoder of an
    enc-dec takes the geometric mean-like form log(3M) * log(2N) / 3."""
    assert subln_gamma("encoder", "encoder", depth, 0) ** 2 == pytest.approx(math.log(2 * depth), rel=1e-12)
    assert subln_gamma("encoder_decoder", "decoder", depth, depth) ** 2 == pytest.approx(
        math.log(3 * depth), rel=1e-12
    )
    enc = subln_gamma("encoder_decoder", "encoder", depth, 2 * depth) ** 2
    assert enc == pytest.approx(math.log(6 * depth) * math.log(2 * depth) / 3, rel=1e-12)
    # Sub-LN multiplies (gamma > 1) where DeepNorm shrinks (beta < 1).
    beta = deepnorm_constants("decoder", "decoder", 0, depth)[1]
    assert subln_gamma("decoder", "decoder", 0, depth) > 1 > beta


def test_init_statistics_gamma_only_on_v_out_ffn() -> None:
    """Encoder-only N = 12, d = 256: W^V, W^O, fc1, fc2 have Xavier std times 1.782710 (+-5%);
    W^Q and W^K keep the plain Xavier std sqrt(2 / 2d)."""
    d, gamma = 256, 1.782710
    model = _model("encoder", 12, d_model=d)
    att, ffn = model.encoder.layers[7].self_attn, model.encoder.layers[7].ffn
    xavier = math.sqrt(2 / (2 * d))
    w = att.qkv_proj.weight
    assert w[:d].std().item() == pytest.approx(xavier, rel=0.05)
    assert w[d : 2 * d].std().item() == pytest.approx(xavier, rel=0.05)
    assert w[2 * d :].std().item() == pytest.approx(gamma * xavier, rel=0.05)
    assert att.out_proj.weight.std().item() == pytest.approx(gamma * xavier, rel=0.05)
    ffn_xavier = math.sqrt(2 / (d + 4 * d))
    assert ffn.fc1.weight.std().item() == pytest.approx(gamma * ffn_xavier, rel=0.05)
    assert ffn.fc2.weight.std().item() == pytest.approx(gamma * ffn_xavier, rel=0.05)


def test_encoder_decoder_cross_attention_is_not_scaled() -> None:
    """N = M = 12, d = 128: the decoder's cross-attention weights keep gain 1; its self-attention
    W^V uses gamma_dec = 1.893018 and the encoder's uses gamma_enc = 1.948385."""
    d = 128
    model = _model("encoder_decoder", 24, d_model=d)
    xavier = math.sqrt(2 / (2 * d))
    cross = model.decoder.layers[3].cross_attn
    for w in (cross.q_proj.weight, cross.kv_proj.weight[:d], cross.kv_proj.weight[d:], cross.out_proj.weight):
        assert w.std().item() == pytest.approx(xavier, rel=0.05)
    dec_v = model.decoder.layers[3].self_attn.qkv_proj.weight[2 * d :]
    enc_v = model.encoder.layers[3].self_attn.qkv_proj.weight[2 * d :]
    assert dec_v.std().item() == pytest.approx(1.893018 * xavier, rel=0.05)
    assert enc_v.std().item() == pytest.approx(1.948385 * xavier, rel=0.05)


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_placement(arch: str) -> None:
    """Pre-LN residuals, an LN over d before W^O in every self-attention, an LN over d_ffn before fc2
    in every FFN, none inside cross-attention, and exactly one final norm per stack."""
    d = 32
    model = _model(arch, 4, d_model=d)
    for stack in _stacks(model):
        assert isinstance(stack.final_norm, torch.nn.LayerNorm)
        for block in stack.layers:
            assert isinstance(block.self_attn_residual, PreNormResidual)
            assert isinstance(block.ffn_residual, PreNormResidual)
            assert tuple(block.self_attn.sub_norm.normalized_shape) == (d,)
            assert tuple(block.ffn.sub_norm.normalized_shape) == (4 * d,)
            assert block.self_attn.q_norm is None
            if block.cross_attn is not None:
                assert isinstance(block.cross_attn_residual, PreNormResidual)
                assert block.cross_attn.sub_norm is None


def test_sub_norms_normalise_the_inputs_of_out_proj_and_fc2() -> None:
    """Functional check of the placement: what enters W^O and fc2 has per-token mean 0 and variance 1
    (LayerNorm with gamma = 1, b = 0 at init), unlike the raw attention output / activation."""
    model = _model("decoder", 3, d_model=32)
    seen: dict[str, torch.Tensor] = {}
    block = model.decoder.layers[1]
    block.self_attn.out_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("out", a[0]))
    block.ffn.fc2.register_forward_pre_hook(lambda m, a: seen.__setitem__("fc2", a[0]))
    model(torch.randint(0, V, (2, 12)))
    for key in ("out", "fc2"):
        h = seen[key]
        assert h.mean(-1).abs().max().item() < 1e-5
        assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)


def test_attention_output_equals_out_proj_of_layernormed_attention() -> None:
    """MSA(x) = W^O LN(Attention(Q, K, V)): recompute one self-attention by hand."""
    model = _model("encoder", 2, d_model=32).eval()
    att = model.encoder.layers[0].self_attn
    x = torch.randn(2, 5, 32)
    q, k, v = (t.view(2, 5, 4, 8).transpose(1, 2) for t in att.qkv_proj(x).chunk(3, dim=-1))
    o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 32)
    expected = att.out_proj(F.layer_norm(o, (32,), att.sub_norm.weight, att.sub_norm.bias, 1e-5))
    torch.testing.assert_close(att(x), expected, atol=1e-6, rtol=1e-6)


def test_gamma_argument_overrides_and_is_validated() -> None:
    d = 128
    model = _model("decoder", 6, d_model=d, norm_args={"gamma": 1.0})
    v = model.decoder.layers[0].self_attn.qkv_proj.weight[2 * d :]
    assert v.std().item() == pytest.approx(math.sqrt(2 / (2 * d)), rel=0.05)
    assert model.norm_strategy.describe()["decoder"]["gamma"] == 1.0
    with pytest.raises(ConfigError, match="model.norm_args.gamma: must be > 0"):
        _model("decoder", 2, norm_args={"gamma": -1.0})
    with pytest.raises(ConfigError, match="unknown key.*gamma=None"):
        _model("decoder", 2, norm_args={"beta": 1.0})
