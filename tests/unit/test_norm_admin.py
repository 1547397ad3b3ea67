"""Admin (admin-torch closed form) exact to docs/norms.md §6 and §8.10: omega values, n counted per
stack (2N, 2M, 3M), omega = 1 is bit-identical to Post-LN, the learnable variant, Post-LN
placement without a final norm, in all three architectures. The profiling form (§8.11) is in
test_admin_profiling.py."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.admin import LearnableOmegaResidual, admin_omega
from normlab.norms.base import PostNormResidual
from tests.model_helpers import forward

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(arch: str, depth: int, seed: int = 0, norm: str = "admin", **extra):
    cfg = validate_model_config(
        {"arch": arch, "norm": norm, "depth": depth, "d_model": 32, "n_heads": 4, "d_ffn": 64, **extra}
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _stacks(model):
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


def _residuals(block):
    residuals = (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual)
    return [r for r in residuals if r is not None]


def test_omega_values_for_n_12() -> None:
    """docs/norms.md §8.10: n = 12 residual sublayers -> 2.017009 (O(logn)), 3.464102 (O(1)), 1.0 (O(n))."""
    assert admin_omega(12) == pytest.approx(2.017009, abs=5e-7)
    assert admin_omega(12, "O(1)") == pytest.approx(3.464102, abs=5e-7)
    assert admin_omega(12, "O(n)") == 1.0


@pytest.mark.parametrize("n", [2, 12, 96, 2000])
def test_omega_closed_form(n: int) -> None:
    """omega^2 = (n + 1) / ln(n + 1) - 1: between O(n) (omega = 1) and O(1) (omega^2 = n)."""
    w = admin_omega(n)
    assert w**2 == pytest.approx((n + 1) / math.log(n + 1) - 1, rel=1e-12)
    assert 1.0 < w < admin_omega(n, "O(1)")


@pytest.mark.parametrize(
    ("arch", "depth", "expected"),
    [
        ("decoder", 6, {"decoder": (12, 2.017009)}),  # 2M = 12
        ("encoder", 6, {"encoder": (12, 2.017009)}),  # 2N = 12
        ("encoder_decoder", 8, {"encoder": (8, admin_omega(8)), "decoder": (12, 2.017009)}),  # 2N=8, 3M=12
    ],
)
def test_omega_is_counted_per_stack_and_placed_on_every_sublayer(arch, depth, expected) -> None:
    model = _model(arch, depth)
    described = model.norm_strategy.describe()
    for stack in _stacks(model):
        name = "encoder" if stack is getattr(model, "encoder", None) else "decoder"
        n, omega = expected[name]
        assert described[name]["num_res_layers"] == n
        assert described[name]["omega"] == pytest.approx(omega, abs=5e-7)
        assert stack.final_norm is None
        for block in stack.layers:
            for res in _residuals(block):
                assert isinstance(res, PostNormResidual)
                assert res.alpha == pytest.approx(omega, abs=5e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_omega_one_is_exactly_post_ln(arch: str) -> None:
    """docs/norms.md §8.10: with omega = 1 (output_change_scale O(n)) the Admin model is Post-LN."""
    admin = _model(arch, 4, seed=3, norm_args={"output_change_scale": "O(n)"})
    post = _model(arch, 4, seed=3, norm="postln")
    sa, sp = admin.state_dict(), post.state_dict()
    assert list(sa) == list(sp) and all(torch.equal(sa[k], sp[k]) for k in sa)
    ids = torch.randint(0, V, (2, 9))
    assert torch.equal(forward(admin, arch, ids), forward(post, arch, ids))


def test_block_outputs_are_normalised_and_differ_from_post_ln() -> None:
    """Post-LN placement: per-token mean 0, variance 1 after every sublayer; omega > 1 changes the
    function (same weights as Post-LN, different outputs)."""
    admin, post = _model("decoder", 3, seed=1), _model("decoder", 3, seed=1, norm="postln")
    ids = torch.randint(0, V, (3, 10))
    h = admin.hidden(ids)
    assert h.mean(-1).abs().max().item() < 1e-5
    assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)
    assert (h - post.hidden(ids)).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_learnable_omega_vector(arch: str) -> None:
    """as_parameter: omega is a d-vector filled with the closed form after meta-device init, gets a
    gradient, and at init the model computes the same function as the constant version."""
    learn = _model(arch, 4, seed=2, norm_args={"as_parameter": True})
    const = _model(arch, 4, seed=2)
    for stack in _stacks(learn):
        name = "encoder" if stack is getattr(learn, "encoder", None) else "decoder"
        omega = learn.norm_strategy.omega(name)
        for block in stack.layers:
            for res in _residuals(block):
                assert isinstance(res, LearnableOmegaResidual)
                assert res.omega.shape == (32,)
                assert torch.allclose(res.omega, torch.full((32,), omega))
    ids = torch.randint(0, V, (2, 9))
    out = forward(learn, arch, ids)
    torch.testing.assert_close(out, forward(const, arch, ids), atol=1e-5, rtol=1e-5)
    out.pow(2).mean().backward()
    first = _residuals(_stacks(learn)[0].layers[0])[0]
    assert first.omega.grad is not None and first.omega.grad.abs().sum().item() > 0


def test_arguments_are_validated() -> None:
    with pytest.raises(ConfigError, match="output_change_scale.*O\\(logn\\), O\\(n\\), O\\(1\\)"):
        _model("decoder", 2, norm_args={"output_change_scale": "O(n^2)"})
    with pytest.raises(ConfigError, match="as_parameter: expected bool"):
        _model("decoder", 2, norm_args={"as_parameter": "yes"})
