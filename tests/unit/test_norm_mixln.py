"""Mix-LN exact to docs/norms.md §7 and §8.20: Post-LN for the first floor(alpha * L) layers, Pre-LN
after; alpha = 0 is Pre-LN and alpha = 1 is Post-LN bit for bit; each stack of an encoder-decoder
is split on its own. In all three architectures."""

from __future__ import annotations

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.base import PostNormResidual, PreNormResidual
from normlab.norms.mixln import post_ln_layers
from tests.model_helpers import forward

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _cfg(arch: str, depth: int, norm: str = "mixln", **extra):
    """LayerNorm unless a test says otherwise, so comparisons with preln / postln hold the norm class
    fixed (mixln defaults to the authors' RMSNorm, tests/unit/test_config.py)."""
    shape = {"d_model": 32, "n_heads": 4, "d_ffn": 64, "norm_layer": "layernorm"}
    return validate_model_config({"arch": arch, "norm": norm, "depth": depth, **shape, **extra})


def _model(arch: str, depth: int, seed: int = 0, norm: str = "mixln", **extra):
    return materialize(build_model(_cfg(arch, depth, norm, **extra), vocab_size=V), "cpu", seed=seed)


def _stacks(model):
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


def _kinds(stack) -> list[str]:
    """'post' or 'pre' per layer, asserting that all sublayers of a layer agree."""
    out = []
    for block in stack.layers:
        residuals = [
            r
            for r in (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual)
            if r is not None
        ]
        kinds = {
            "post" if isinstance(r, PostNormResidual) else "pre" if isinstance(r, PreNormResidual) else "?"
            for r in residuals
        }
        assert len(kinds) == 1
        out.append(kinds.pop())
    return out


@pytest.mark.parametrize(("depth", "n_post"), [(24, 6), (12, 3), (48, 12), (3, 0)])
def test_layer_split_of_a_decoder(depth: int, n_post: int) -> None:
    """docs/norms.md §8.20: L = 24, alpha = 0.25 -> layers 0-5 Post-LN, 6-23 Pre-LN; L = 12 -> 0-2."""
    model = build_model(_cfg("decoder", depth), vocab_size=V)  # meta device: structure only
    assert _kinds(model.decoder) == ["post"] * n_post + ["pre"] * (depth - n_post)
    assert model.decoder.final_norm is not None
    described = model.norm_strategy.describe()["decoder"]
    assert described["post_ln_layers"] == (f"0-{n_post - 1}" if n_post else "none")
    assert described["pre_ln_layers"] == f"{n_post}-{depth - 1}"


@pytest.mark.parametrize("arch", ["encoder", "encoder_decoder"])
def test_each_stack_is_split_on_its_own(arch: str) -> None:
    """Encoder-only 12 layers -> 3 Post-LN; encoder-decoder 24 = 12 + 12 -> 3 Post-LN in each stack,
    cross-attention included."""
    model = build_model(_cfg(arch, 12 if arch == "encoder" else 24), vocab_size=V)
    for stack in _stacks(model):
        assert _kinds(stack) == ["post"] * 3 + ["pre"] * 9
        assert stack.final_norm is not None


def test_alpha_is_floored_exactly() -> None:
    assert [post_ln_layers(0.25, n) for n in (1, 3, 4, 7, 8, 1000)] == [0, 0, 1, 1, 2, 250]
    assert post_ln_layers(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996 in floating point
    assert post_ln_layers(1.0, 5) == 5 and post_ln_layers(0.0, 5) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_alpha_zero_is_pre_ln_and_alpha_one_is_post_ln(arch: str) -> None:
    ids = torch.randint(0, V, (2, 9))
    for alpha, ref in ((0.0, "preln"), (1.0, "postln")):
        mix = _model(arch, 4, seed=4, norm_args={"alpha": alpha})
        base = _model(arch, 4, seed=4, norm=ref)
        sm, sb = mix.state_dict(), base.state_dict()
        assert list(sm) == list(sb) and all(torch.equal(sm[k], sb[k]) for k in sm)
        assert torch.equal(forward(mix, arch, ids), forward(base, arch, ids))
        for stack in _stacks(mix):
            assert (stack.final_norm is None) == (alpha == 1.0)


def test_post_ln_layers_normalise_and_pre_ln_layers_accumulate() -> None:
    """Outputs of the Post-LN layers have per-token variance 1; the Pre-LN layers after them add
    to an unnormalised stream, so its variance grows above 1."""
    model = _model("decoder", 8, norm_args={"alpha": 0.5})
    outs = []
    for block in model.decoder.layers:
        block.register_forward_hook(lambda m, a, o: outs.append(o))
    model(torch.randint(0, V, (4, 16)))
    variances = [o.var(-1, unbiased=False).mean().item() for o in outs]
    assert all(v == pytest.approx(1.0, abs=1e-3) for v in variances[:4])
    assert variances[-1] > 1.5


def test_alpha_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"model.norm_args.alpha: must be in \[0, 1\], got 1.5"):
        _cfg("decoder", 4, norm_args={"alpha": 1.5})
    with pytest.raises(ConfigError, match="alpha: expected float"):
        _cfg("decoder", 4, norm_args={"alpha": "quarter"})
