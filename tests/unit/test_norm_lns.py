"""LayerNorm Scaling (lns; Sun et al. 2025, arXiv 2502.05795): Pre-LN with the norm output of layer
l scaled by 1/sqrt(l). Layer 1 is Pre-LN exactly; deeper layers compute x + f(Norm(x)/sqrt(l)); one
final norm; the gain_init reading (ProRes' code) computes the same function at init."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.errors import ConfigError
from normlab.norms.registry import build_strategy
from tests.model_helpers import forward, tiny_config, tiny_model

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 40


# LayerNorm unless a test says otherwise, so comparisons with preln hold the norm class fixed (lns
# defaults to the authors' RMSNorm, tests/unit/test_config.py)
SHAPE = {"d_model": 16, "n_heads": 2, "d_ffn": 32, "norm_layer": "layernorm"}


def _cfg(norm: str = "lns", arch: str = "decoder", depth: int = 4, **extra):
    return tiny_config(norm, arch, depth, **{**SHAPE, **extra})


def _model(norm: str = "lns", arch: str = "decoder", depth: int = 4, seed: int = 0, **extra):
    return tiny_model(norm, arch, depth, seed, vocab=V, **{**SHAPE, **extra})


_run = forward


@pytest.mark.parametrize("arch", ARCHS)
def test_one_layer_per_stack_is_pre_ln_bit_for_bit(arch: str) -> None:
    depth = 2 if arch == "encoder_decoder" else 1
    ids = torch.randint(0, V, (2, 7))
    lns, pre = _model("lns", arch, depth, seed=4), _model("preln", arch, depth, seed=4)
    assert torch.equal(_run(lns, arch, ids), _run(pre, arch, ids))
    assert not torch.equal(
        _run(_model("lns", arch, 4, seed=4), arch, ids), _run(_model("preln", arch, 4, seed=4), arch, ids)
    )


@pytest.mark.parametrize("scaling", ["constant", "gain_init"])
def test_layer_l_scales_the_norm_output_by_one_over_sqrt_l(scaling: str) -> None:
    model = _model(depth=9, norm_args={"scaling": scaling})
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16)
    f = lambda h: 2.0 * h + 1.0  # noqa: E731
    plain_ln = torch.nn.LayerNorm(16)
    for layer in (0, 3, 8):
        for residual in (
            model.decoder.layers[layer].self_attn_residual,
            model.decoder.layers[layer].ffn_residual,
        ):
            expected = x + f(plain_ln(x) / math.sqrt(layer + 1))
            torch.testing.assert_close(residual(x, f), expected, atol=1e-6, rtol=1e-6)


def test_gain_init_is_the_constant_form_at_initialisation_but_learnable() -> None:
    ids = torch.randint(0, V, (2, 7))
    constant, gain = _model(depth=6, seed=1), _model(depth=6, seed=1, norm_args={"scaling": "gain_init"})
    torch.testing.assert_close(gain(ids), constant(ids), atol=1e-6, rtol=1e-6)
    norm = gain.decoder.layers[3].ffn_residual.norm.norm
    assert torch.equal(norm.weight, torch.full((16,), 0.5))  # 1/sqrt(4)
    assert norm.weight.requires_grad and torch.equal(norm.bias, torch.zeros(16))
    assert torch.equal(constant.decoder.layers[3].ffn_residual.norm.weight, torch.ones(16))


def test_final_norm_standard_init_and_describe() -> None:
    model = _model(depth=3)
    assert model.decoder.final_norm is not None
    pre = _model("preln", depth=3)
    assert torch.equal(model.decoder.layers[1].ffn.fc2.weight, pre.decoder.layers[1].ffn.fc2.weight)
    consts = build_strategy(_cfg(depth=100)).describe()["decoder"]
    assert consts["scale_l1"] == 1.0 and consts["scale_l100"] == pytest.approx(0.1)
    assert consts["final_norm"] is True and consts["scaling"] == "constant"


def test_bad_scaling_fails_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.norm_args\.scaling: 'sqrt' is not one of constant, gain_init"
    ):
        _cfg(norm_args={"scaling": "sqrt"})
