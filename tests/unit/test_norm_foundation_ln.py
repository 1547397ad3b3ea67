"""FoundationLayerNorm (docs/norms.md §4 and §8.15): alpha = 0.974 at every depth and on every stack,
configurable, standard init (weights equal Post-LN's), no final norm; alpha = 1 is Post-LN."""

from __future__ import annotations

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.base import Site
from normlab.norms.registry import build_strategy

V = 50


def _cfg(arch: str = "decoder", depth: int = 4, **extra):
    return validate_model_config(
        {
            "arch": arch,
            "norm": "foundation_ln",
            "depth": depth,
            "d_model": 32,
            "n_heads": 4,
            "d_ffn": 64,
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("arch", "depth"), [("decoder", 6), ("decoder", 1000), ("encoder", 24), ("encoder_decoder", 12)]
)
def test_alpha_is_0974_whatever_the_depth(arch: str, depth: int) -> None:
    strategy = build_strategy(_cfg(arch, depth))
    description = strategy.describe()
    for stack in strategy.arch.stacks:
        assert description[stack]["alpha"] == 0.974
        assert description[stack]["final_norm"] is False
        assert strategy.residual(Site(stack, strategy.arch.depth(stack) - 1, "ffn")).alpha == 0.974
    if depth > 24:
        return
    model = build_model(_cfg(arch, depth), vocab_size=V)  # meta device: no storage
    residuals = [m for m in model.modules() if type(m).__name__ == "PostNormResidual"]
    expected = {"decoder": 2 * depth, "encoder": 2 * depth, "encoder_decoder": 2 * 6 + 3 * 6}[arch]
    assert len(residuals) == expected  # one per sublayer
    assert {r.alpha for r in residuals} == {0.974}


def test_alpha_is_configurable_and_validated() -> None:
    assert build_strategy(_cfg(norm_args={"alpha": 0.9})).describe()["decoder"]["alpha"] == 0.9
    with pytest.raises(ConfigError, match=r"model\.norm_args\.alpha: must be a finite number > 0"):
        _cfg(norm_args={"alpha": 0.0})
    with pytest.raises(ConfigError, match=r"model\.norm_args\.alpha: expected float.*alpha=0\.974"):
        _cfg(norm_args={"alpha": "small"})
    unknown = r"model\.norm_args\.beta: unknown key; valid keys are: alpha=0\.974"
    with pytest.raises(ConfigError, match=unknown):
        _cfg(norm_args={"beta": 1.0})


@pytest.mark.parametrize("arch", ["decoder", "encoder", "encoder_decoder"])
def test_standard_init_and_alpha_one_is_post_ln(arch: str) -> None:
    found = materialize(build_model(_cfg(arch), V), "cpu", seed=4)
    one = materialize(build_model(_cfg(arch, norm_args={"alpha": 1.0}), V), "cpu", seed=4)
    post_cfg = validate_model_config(
        {"arch": arch, "norm": "postln", "depth": 4, "d_model": 32, "n_heads": 4, "d_ffn": 64}
    )
    post = materialize(build_model(post_cfg, V), "cpu", seed=4)
    for a, b in zip(found.state_dict().values(), post.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ids = torch.randint(0, V, (2, 8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    args = {"decoder": (ids,), "encoder": (ids, mask), "encoder_decoder": (ids, mask, ids[:, :5])}[arch]
    assert torch.equal(one(*args), post(*args))
    assert (found(*args) - post(*args)).abs().max() > 1e-4


def test_block_down_weights_the_skip_path() -> None:
    model = materialize(build_model(_cfg(depth=2), V), "cpu", seed=0)
    block = model.decoder.layers[1]
    x = torch.randn(2, 5, 32)
    res = block.self_attn_residual
    expected = res.norm(0.974 * x + block.self_attn(x, causal=True))
    got = res(x, lambda h: block.self_attn(h, causal=True))
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
