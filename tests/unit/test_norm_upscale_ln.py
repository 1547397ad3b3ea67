"""Upscale LayerNorm (docs/norms.md §4 and §8.15): DeepNorm's alpha on the skip path, standard init
(weights equal Post-LN's under the same seed), Post-LN placement without a final norm; equal
to DeepNorm with beta = 1."""

from __future__ import annotations

import pytest
import torch

from normlab.config import validate_model_config
from normlab.models.init import build_model, materialize
from normlab.norms.registry import build_strategy

V = 50


def _cfg(arch: str, depth: int, norm: str = "upscale_ln", **extra):
    return validate_model_config(
        {"arch": arch, "norm": norm, "depth": depth, "d_model": 32, "n_heads": 4, "d_ffn": 64, **extra}
    )


def _model(arch: str, depth: int, norm: str = "upscale_ln", seed: int = 0, **extra):
    return materialize(build_model(_cfg(arch, depth, norm, **extra), vocab_size=V), "cpu", seed=seed)


@pytest.mark.parametrize(
    ("arch", "depth", "stack", "alpha"),
    [
        ("decoder", 1000, "decoder", 6.687403),  # §8.15: (2 * 1000)^(1/4)
        ("decoder", 100, "decoder", 3.760603),
        ("encoder", 12, "encoder", 2.213364),  # BERT-style, the paper's setting
        ("encoder", 24, "encoder", 2.632148),
        ("encoder_decoder", 12, "encoder", 1.417938),  # N = M = 6
        ("encoder_decoder", 12, "decoder", 2.059767),
    ],
)
def test_alpha_is_deepnorms_alpha(arch: str, depth: int, stack: str, alpha: float) -> None:
    strategy = build_strategy(_cfg(arch, depth))
    assert strategy.alpha(stack) == pytest.approx(alpha, abs=5e-7)
    assert strategy.describe()[stack]["alpha"] == pytest.approx(alpha, abs=5e-7)


def test_residuals_carry_alpha_and_no_final_norm() -> None:
    model = build_model(_cfg("encoder_decoder", 12), vocab_size=V)  # meta: no storage needed
    for stack, alpha in ((model.encoder, 1.417938), (model.decoder, 2.059767)):
        assert stack.final_norm is None
        for layer in stack.layers:
            residuals = [layer.self_attn_residual, layer.ffn_residual]
            if layer.cross_attn_residual is not None:
                residuals.append(layer.cross_attn_residual)
            assert all(type(r).__name__ == "PostNormResidual" for r in residuals)
            assert all(r.alpha == pytest.approx(alpha, abs=5e-7) for r in residuals)


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_init_is_unchanged_and_equals_deepnorm_with_beta_one(arch: str) -> None:
    """§8.15: no beta, so the weights are Post-LN's; with DeepNorm's beta forced to 1 the two
    models are the same function, bit for bit."""
    up = _model(arch, 4, seed=7)
    post = _model(arch, 4, "postln", seed=7)
    deep = _model(arch, 4, "deepnorm", seed=7, norm_args={"beta": 1.0})
    for (name, p), q, r in zip(
        up.state_dict().items(), post.state_dict().values(), deep.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q) and torch.equal(p, r), name
    ids = torch.randint(0, V, (2, 8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    args = {"decoder": (ids,), "encoder": (ids, mask), "encoder_decoder": (ids, mask, ids[:, :5])}[arch]
    assert torch.equal(up(*args), deep(*args))
    assert (up(*args) - post(*args)).abs().max() > 1e-3  # alpha > 1 does change the function


def test_block_formula() -> None:
    """One block computes LN(alpha * x + f(x)) for each sublayer."""
    model = _model("decoder", 2)
    block = model.decoder.layers[0]
    x = torch.randn(2, 5, 32)
    res = block.ffn_residual
    expected = res.norm(res.alpha * x + block.ffn(x))
    torch.testing.assert_close(res(x, block.ffn), expected, atol=0, rtol=0)
    assert res.alpha == pytest.approx((2 * 2) ** 0.25)
