"""Sandwich-LN / Peri-LN placement (docs/norms.md §7, §8.7): a norm before and after every sublayer
(self-attn, cross-attn, FFN), the residual stream itself never normalised, exactly one final norm
per stack; LayerNorm or RMSNorm. In all three architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlab.config import validate_model_config
from normlab.models.init import build_model, materialize
from normlab.norms.base import RMSNorm, SandwichResidual

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(arch: str, depth: int = 4, seed: int = 0, **extra):
    shape = {"d_model": 32, "n_heads": 4, "d_ffn": 64, "norm_layer": "layernorm"}  # unless a test says
    cfg = validate_model_config({"arch": arch, "norm": "sandwich", "depth": depth, **shape, **extra})
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _stacks(model):
    return [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]


@pytest.mark.parametrize("norm_layer", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("arch", ARCHS)
def test_two_norms_per_sublayer_and_one_final_norm(arch: str, norm_layer: str) -> None:
    model = _model(arch, norm_layer=norm_layer)
    norm_cls = torch.nn.LayerNorm if norm_layer == "layernorm" else RMSNorm
    n_sublayers = 0
    for stack in _stacks(model):
        assert isinstance(stack.final_norm, norm_cls)
        for block in stack.layers:
            for res in (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual):
                if res is None:
                    continue
                assert isinstance(res, SandwichResidual)
                assert isinstance(res.norm_in, norm_cls) and isinstance(res.norm_out, norm_cls)
                assert res.norm_in is not res.norm_out
                n_sublayers += 1
            assert block.self_attn.sub_norm is None and block.self_attn.q_norm is None
    expected = {"decoder": 4 * 2, "encoder": 4 * 2, "encoder_decoder": 2 * 2 + 2 * 3}[arch]
    assert n_sublayers == expected
    norms = [m for m in model.modules() if isinstance(m, norm_cls)]
    assert len(norms) == 2 * expected + len(_stacks(model))


def test_residual_is_x_plus_normed_branch_of_normed_input() -> None:
    """x_{l+1} = x_l + LN_out(F(LN_in(x_l))): the increment has per-token mean 0 and variance 1 at
    init whatever the scale of x, and matches the formula computed by hand."""
    model = _model("decoder")
    block = model.decoder.layers[2]
    res = block.ffn_residual
    x = 7.0 * torch.randn(3, 6, 32) + 2.0
    out = res(x, block.ffn)
    inc = out - x
    assert inc.mean(-1).abs().max().item() < 1e-4
    assert inc.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)
    by_hand = x + F.layer_norm(block.ffn(F.layer_norm(x, (32,), eps=1e-5)), (32,), eps=1e-5)
    torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=1e-5)


def test_stream_grows_inside_the_stack_but_the_output_is_normalised() -> None:
    """Like Pre-LN, the residual stream is not normalised inside the stack (each sublayer adds a
    unit-variance increment: variance ~ 1 + 2L at init), and the final norm brings it back to 1."""
    model = _model("decoder", depth=8)
    seen = {}
    model.decoder.final_norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    h = model.hidden(torch.randint(0, V, (4, 16)))
    assert seen["x"].var(-1, unbiased=False).mean().item() > 8.0
    assert h.var(-1, unbiased=False).mean().item() == pytest.approx(1.0, abs=1e-3)
