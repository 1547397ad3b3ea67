"""DeepScaleLM to docs/norms.md §7 and §8.22: lambda / beta constants and their identity, the
variance-preserving init (weight statistics and unit-variance FFN branch), a residual stream that
keeps unit-order variance at depth 48 where Pre-LN's grows ~40x, and both placements, in all
three architectures."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.deepscalelm import ScaledPostNormResidual, ScaledPreNormResidual, deepscalelm_constants

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(
    arch: str,
    depth: int,
    d_model: int = 32,
    d_ffn: int | None = None,
    seed: int = 0,
    norm: str = "deepscalelm",
    **extra,
):
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": norm,
            "depth": depth,
            "d_model": d_model,
            "n_heads": 4,
            "d_ffn": d_ffn or 4 * d_model,
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


def test_constants_n24_k2() -> None:
    """docs/norms.md §8.22: N = 24, k = 2 -> beta = 0.288675, lambda = 0.957427, lambda^2 + beta^2 = 1."""
    lam, beta = deepscalelm_constants(24, 2.0)
    assert beta == pytest.approx(0.288675, abs=5e-7)
    assert lam == pytest.approx(0.957427, abs=5e-7)
    assert lam**2 + beta**2 == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(("depth", "k"), [(2, 2.0), (48, 2.0), (1000, 2.0), (100, 4.0), (1, 2.0)])
def test_fully_normalised_residual_identity(depth: int, k: float) -> None:
    lam, beta = deepscalelm_constants(depth, k)
    assert lam**2 + beta**2 == pytest.approx(1.0, rel=1e-12)
    assert beta**2 == pytest.approx(min(1.0, k / depth), rel=1e-12)  # clipped when N < k


@pytest.mark.parametrize("arch", ARCHS)
def test_pre_placement_constants_per_stack_and_final_norm(arch: str) -> None:
    """N is the depth of each stack: enc-dec depth 24 -> N = 12 per stack -> beta = sqrt(1/6)."""
    model = _model(arch, 24 if arch == "encoder_decoder" else 12)
    lam, beta = deepscalelm_constants(12)
    assert beta == pytest.approx(math.sqrt(1 / 6), rel=1e-12)
    for stack in _stacks(model):
        assert stack.final_norm is not None
        for block in stack.layers:
            for res in (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual):
                if res is not None:
                    assert type(res) is ScaledPreNormResidual
                    assert res.lam == pytest.approx(lam, rel=1e-12)
                    assert res.beta == pytest.approx(beta, rel=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_post_placement_normalises_every_sublayer_without_final_norm(arch: str) -> None:
    model = _model(arch, 4, norm_args={"placement": "post"})
    for stack in _stacks(model):
        assert stack.final_norm is None
        assert all(type(b.ffn_residual) is ScaledPostNormResidual for b in stack.layers)
    if arch == "decoder":
        h = model.hidden(torch.randint(0, V, (2, 8)))
        assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)


def test_residual_formulas_by_hand() -> None:
    res = _model("decoder", 8).decoder.layers[0].ffn_residual
    x, f = torch.randn(2, 5, 32), torch.nn.Linear(32, 32)
    lam, beta = deepscalelm_constants(8)
    torch.testing.assert_close(res(x, f), lam * x + beta * f(res.norm(x)))
    post = ScaledPostNormResidual(res.norm, lam, beta)
    torch.testing.assert_close(post(x, f), res.norm(lam * x + beta * f(x)))


def test_init_statistics() -> None:
    """d = 256, d_ffn = 1024: fc1 and fc2 std (d * d_ffn / 2)^(-1/4) = 0.052556 (sigma_f^2 =
    sqrt(1/2)/d for d_ffn = 4d); W^Q, W^K, W^V, W^O std d^-1/2 = 0.0625 (+-5%)."""
    d = 256
    model = _model("decoder", 2, d_model=d)  # the init does not depend on depth
    block = model.decoder.layers[1]
    assert (0.5 * d * 4 * d) ** -0.25 == pytest.approx(0.052556, abs=5e-7)
    assert ((0.5 * d * 4 * d) ** -0.25) ** 2 == pytest.approx(math.sqrt(0.5) / d, rel=1e-12)
    assert block.ffn.fc1.weight.std().item() == pytest.approx(0.052556, rel=0.05)
    assert block.ffn.fc2.weight.std().item() == pytest.approx(0.052556, rel=0.05)
    w = block.self_attn.qkv_proj.weight
    for rows in (w[:d], w[d : 2 * d], w[2 * d :], block.self_attn.out_proj.weight):
        assert rows.std().item() == pytest.approx(0.0625, rel=0.05)
    assert model.embed(torch.arange(V)).var().item() == pytest.approx(1.0, rel=0.1)  # unit-variance input


def test_relu_ffn_branch_preserves_unit_variance() -> None:
    """Var[fc2(relu(fc1 x))] = d sigma^2 * 1/2 * d_ffn sigma^2 = 1 for unit-variance x (+-10%)."""
    d = 256
    ffn = _model("decoder", 1, d_model=d, activation="relu").decoder.layers[0].ffn
    x = torch.randn(4096, d)
    with torch.no_grad():
        assert ffn(x).var().item() == pytest.approx(1.0, rel=0.1)


def _stream_variance(norm: str) -> float:
    model = _model("decoder", 48, d_model=32, norm=norm, activation="relu")
    seen = {}
    model.decoder.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        model(torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(0)))
    return seen["x"].var(-1, unbiased=False).mean().item()


def test_residual_stream_variance_stays_unit_order_at_depth_48() -> None:
    """At init the 48-layer DeepScaleLM stream keeps variance ~1 (measured 0.85; attention's
    averaging over tokens makes it a bit < 1) while the Pre-LN stream grows to ~45."""
    assert 0.4 < _stream_variance("deepscalelm") < 1.2
    assert _stream_variance("preln") > 20.0


def test_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="model.norm_args.placement: 'middle' is not one of pre, post"):
        _model("decoder", 2, norm_args={"placement": "middle"})
    with pytest.raises(ConfigError, match="model.norm_args.k: must be > 0"):
        _model("decoder", 2, norm_args={"k": 0})
    assert _model("decoder", 24, norm_args={"k": 6}).norm_strategy.describe()["decoder"]["beta"] == 0.5
