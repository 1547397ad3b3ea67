"""HybridNorm and HybridNorm* (docs/norms.md §5 and §8 checks 16-19): where the norms sit, the block
equals the released code's formula (QKV norms before RoPE), zero-FFN identity, HybridNorm* block 0
is a Pre-Norm block with QKV norms, Megatron init numbers; in all three architectures."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.attention import MultiHeadAttention
from normlab.models.init import build_model, materialize
from normlab.models.rotary import apply_rotary, rotary_cos_sin
from normlab.norms.base import PlainResidual, PreNormResidual, RMSNorm, Role, Site
from normlab.norms.hybridnorm import megatron_stds
from normlab.norms.registry import build_strategy

ARCHS = ["decoder", "encoder", "encoder_decoder"]
NORMS = (nn.LayerNorm, RMSNorm)
V = 50
D, H = 32, 4


def _cfg(norm: str = "hybridnorm", arch: str = "decoder", depth: int = 4, **extra):
    return validate_model_config(
        {"arch": arch, "norm": norm, "depth": depth, "d_model": D, "n_heads": H, "d_ffn": 64, **extra}
    )


def _model(norm: str = "hybridnorm", arch: str = "decoder", depth: int = 4, seed: int = 0, **extra):
    return materialize(build_model(_cfg(norm, arch, depth, **extra), vocab_size=V), "cpu", seed=seed)


def _stacks(model) -> list:
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


def _norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, NORMS)]


@pytest.mark.parametrize("norm_layer", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("norm", ["hybridnorm", "hybridnorm_star"])
@pytest.mark.parametrize("arch", ARCHS)
def test_where_the_norms_sit(arch: str, norm: str, norm_layer: str) -> None:
    """§8.16: exactly three norms (q, k, v) over d_h per attention; no norm on the attention
    input except block 0 of HybridNorm*; one FFN norm per block; one final norm per stack."""
    model = build_model(_cfg(norm, arch, norm_layer=norm_layer), vocab_size=V)
    cls = nn.LayerNorm if norm_layer == "layernorm" else RMSNorm
    for stack in _stacks(model):
        assert isinstance(stack.final_norm, cls) and stack.final_norm.normalized_shape == (D,)
        for i, layer in enumerate(stack.layers):
            star0 = norm == "hybridnorm_star" and i == 0
            attentions = [m for m in layer.modules() if isinstance(m, MultiHeadAttention)]
            assert len(attentions) == (2 if layer.cross_attn is not None else 1)
            for att in attentions:
                inner = _norms(att)
                assert len(inner) == 3 and [att.q_norm, att.k_norm, att.v_norm] == inner
                assert all(type(n) is cls and n.normalized_shape == (D // H,) for n in inner)
                assert att.sub_norm is None
            for res in filter(None, (layer.self_attn_residual, layer.cross_attn_residual)):
                if star0:
                    assert isinstance(res, PreNormResidual) and res.norm.normalized_shape == (D,)
                else:
                    assert isinstance(res, PlainResidual) and not _norms(res)
            ffn_norms = _norms(layer.ffn_residual)
            assert len(ffn_norms) == 1 and ffn_norms[0].normalized_shape == (D,)
            expected = "PreNormResidual" if star0 else "NormedInputResidual"
            assert type(layer.ffn_residual).__name__ == expected
            n_att = len(attentions)
            assert len(_norms(layer)) == 3 * n_att + 1 + (n_att if star0 else 0)


def _reference_self_attention(att: MultiHeadAttention, h: torch.Tensor, causal: bool) -> torch.Tensor:
    """The released block's attention: W_qkv h -> per-head q/k/v norms -> RoPE -> SDPA -> W_O."""
    b, t, _ = h.shape
    q, k, v = (z.view(b, t, H, D // H).transpose(1, 2) for z in att.qkv_proj(h).chunk(3, dim=-1))
    q, k, v = att.q_norm(q), att.k_norm(k), att.v_norm(v)
    cos, sin = rotary_cos_sin(torch.arange(t), D // H, 10000.0, h.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return att.out_proj(out.transpose(1, 2).reshape(b, t, D))


def _randomise_norm_gains(model: nn.Module) -> None:
    """gamma != 1 and beta != 0, so the order "norm then RoPE" is observable."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS):
                m.weight.copy_(1 + 0.5 * torch.randn(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("norm", ["hybridnorm", "hybridnorm_star"])
@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_blocks_equal_the_reference_formulas(arch: str, norm: str) -> None:
    """§5 / §8.18: HybridNorm block = ``y = x + Attn(QKVNorm(W x)); z = Norm(y); z + FFN(z)``
    with the q/k norms applied before RoPE; HybridNorm* block 0 = ``y = x + Attn(QKVNorm(W Norm(x)));
    y + FFN(Norm(y))``; its blocks >= 1 are HybridNorm blocks."""
    model = _model(norm, arch, seed=2)
    _randomise_norm_gains(model)
    stack = model.decoder if arch == "decoder" else model.encoder
    causal = arch == "decoder"
    cos_sin = rotary_cos_sin(torch.arange(7), D // H, 10000.0, torch.float32)
    x = 2.0 * torch.randn(2, 7, D)
    for i, block in enumerate(stack.layers[:2]):
        attn = lambda h, b=block: _reference_self_attention(b.self_attn, h, causal)  # noqa: E731
        if norm == "hybridnorm_star" and i == 0:
            y = x + attn(block.self_attn_residual.norm(x))
            expected = y + block.ffn(block.ffn_residual.norm(y))
        else:
            z = block.ffn_residual.norm(x + attn(x))
            expected = z + block.ffn(z)
        got = block(x, causal=causal, rope=cos_sin)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the order matters with these gains: RoPE before the q/k norms gives a different block
    att = stack.layers[1].self_attn
    b, t = 2, 7
    q, k, _ = (z.view(b, t, H, D // H).transpose(1, 2) for z in att.qkv_proj(x).chunk(3, dim=-1))
    assert (att.q_norm(apply_rotary(q, *cos_sin)) - apply_rotary(att.q_norm(q), *cos_sin)).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_ffn_block_returns_norm_of_x_plus_attention(arch: str) -> None:
    """§8.17: with fc2 = 0 a HybridNorm block returns Norm(x + Attn(x)): unit RMS per token with
    RMSNorm (gain 1); a Pre-LN block would return x + Attn(Norm(x)) instead."""
    hybrid = _model("hybridnorm", arch, norm_layer="rmsnorm")
    pre = _model("preln", arch, norm_layer="rmsnorm")
    x = 3.0 * torch.randn(2, 6, D)
    memory = torch.randn(2, 5, D)
    for model in (hybrid, pre):
        for stack in _stacks(model):
            with torch.no_grad():
                for layer in stack.layers:
                    layer.ffn.fc2.weight.zero_()
                    layer.ffn.fc2.bias.zero_()
    block_h = _stacks(hybrid)[-1].layers[1]
    block_p = _stacks(pre)[-1].layers[1]
    kwargs = {"memory": memory} if block_h.cross_attn is not None else {}
    out_h = block_h(x, **kwargs)
    rms = out_h.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)
    if block_h.cross_attn is None:
        expected = block_h.ffn_residual.norm(x + block_h.self_attn(x))
        torch.testing.assert_close(out_h, expected, atol=1e-6, rtol=0)
    out_p = block_p(x, **kwargs)
    assert (out_p.pow(2).mean(-1).sqrt() - 1).abs().min() > 0.5  # Pre-LN keeps x's scale (~3)


def test_megatron_init_constants_of_the_released_config() -> None:
    """§8.19: d = 2048 -> sigma = 1/sqrt(5120) = 0.0139754; W^O / fc2 with 16 layers
    0.0139754 / sqrt(32) = 0.0024705."""
    std_in, std_out = megatron_stds(2048, 16)
    assert std_in == pytest.approx(0.013975424859373685, rel=1e-12)
    assert std_out == pytest.approx(0.0024705, abs=5e-8)
    strategy = build_strategy(
        validate_model_config(
            {"norm": "hybridnorm", "depth": 16, "d_model": 2048, "n_heads": 16, "d_ffn": 8192}
        )
    )
    site = Site("decoder", 3, "self_attn")
    for role in (Role.Q, Role.K, Role.V, Role.FFN_IN):
        spec = strategy.init_spec(site, role)
        assert (spec.dist, spec.std) == ("trunc_normal", pytest.approx(0.0139754, abs=5e-8))
    for role in (Role.OUT, Role.FFN_OUT):
        assert strategy.init_spec(site, role).std == pytest.approx(0.0024705, abs=5e-8)
    assert strategy.init_spec(None, Role.EMBEDDING).std == pytest.approx(2048**-0.5)
    assert strategy.describe()["decoder"]["init_std_out"] == pytest.approx(0.0024705, abs=5e-8)


def test_megatron_init_statistics() -> None:
    """Sampled weights: std = sigma * 0.98658 (a normal truncated at +-3 sigma), never beyond
    3 sigma; norms have gain 1; init=xavier restores the template's Xavier-normal init."""
    d, depth = 256, 4
    cfg = {
        "arch": "decoder",
        "norm": "hybridnorm_star",
        "depth": depth,
        "d_model": d,
        "n_heads": 4,
        "d_ffn": 4 * d,
        "norm_layer": "rmsnorm",
    }
    model = materialize(build_model(validate_model_config(cfg), V), "cpu", seed=0)
    trunc = math.sqrt(1 - 6 * math.exp(-4.5) / math.sqrt(2 * math.pi) / math.erf(3 / math.sqrt(2)))
    assert trunc == pytest.approx(0.98658, abs=1e-5)
    std_in, std_out = megatron_stds(d, depth)
    layer = model.decoder.layers[2]
    for w, std in (
        (layer.self_attn.qkv_proj.weight, std_in),
        (layer.ffn.fc1.weight, std_in),
        (layer.self_attn.out_proj.weight, std_out),
        (layer.ffn.fc2.weight, std_out),
    ):
        assert w.std().item() == pytest.approx(std * trunc, rel=0.03)
        assert w.abs().max().item() <= 3 * std + 1e-7
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in _norms(model))
    xavier = materialize(
        build_model(validate_model_config({**cfg, "norm_args": {"init": "xavier"}}), V), "cpu", seed=0
    )
    w = xavier.decoder.layers[2].self_attn.out_proj.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (2 * d)), rel=0.03)


def test_unknown_init_fails_in_one_line() -> None:
    bad = r"model\.norm_args\.init: 'kaiming' is not one of megatron, xavier"
    with pytest.raises(ConfigError, match=bad):
        _cfg(norm_args={"init": "kaiming"})
    unknown = r"model\.norm_args\.gain: unknown key; valid keys are: init='megatron'"
    with pytest.raises(ConfigError, match=unknown):
        _cfg("hybridnorm_star", norm_args={"gain": 1.0})


@pytest.mark.parametrize("norm", ["hybridnorm", "hybridnorm_star"])
def test_the_default_norm_class_is_the_released_rmsnorm(norm: str) -> None:
    """model.norm_layer=auto (the default) resolves to the released config's RMSNorm for HybridNorm(*)
    and to LayerNorm for the others; an explicit choice is kept. The resolved name is what the
    config (and so every checkpoint) records."""
    assert _cfg(norm).norm_layer == "rmsnorm"
    assert all(type(m) is RMSNorm for m in _norms(_model(norm)))
    assert _cfg(norm, norm_layer="layernorm").norm_layer == "layernorm"
    assert all(type(m) is nn.LayerNorm for m in _norms(_model(norm, norm_layer="layernorm")))
    assert (
        _cfg("preln").norm_layer == "layernorm"
        and _cfg("preln", norm_layer="rmsnorm").norm_layer == "rmsnorm"
    )
