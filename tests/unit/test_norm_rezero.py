"""ReZero exact to docs/norms.md §7 and §8.23: every gate is 0 at init, so every stack maps its input
to itself; no norm anywhere; one gate per layer shared by its sublayers; at init only the gates
receive gradient. In all three architectures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from normlab.config import validate_model_config
from normlab.models.init import build_model, materialize
from normlab.norms.base import RMSNorm
from normlab.norms.rezero import ReZeroGate, ReZeroResidual

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(arch: str, depth: int = 4, seed: int = 0, **extra):
    cfg = validate_model_config(
        {"arch": arch, "norm": "rezero", "depth": depth, "d_model": 32, "n_heads": 4, "d_ffn": 64, **extra}
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _gates(model) -> list[ReZeroGate]:
    return [m for m in model.modules() if isinstance(m, ReZeroGate)]


@pytest.mark.parametrize("arch", ARCHS)
def test_every_stack_is_the_identity_at_init(arch: str) -> None:
    """docs/norms.md §8.23: with all gates 0 the hidden states equal the embeddings exactly."""
    model = _model(arch, depth=6)
    assert all(g.alpha.item() == 0.0 for g in _gates(model))
    src, tgt = torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 5))
    mask = torch.ones_like(src, dtype=torch.bool)
    if arch == "decoder":
        assert torch.equal(model.hidden(src), model.embed(src))
    elif arch == "encoder":
        assert torch.equal(model(src, mask), model.embed(src))
    else:
        memory = model.encode(src, mask)
        assert torch.equal(memory, model.src_embed(src))
        logits = model.decode(tgt, memory, mask)
        assert torch.equal(logits, F.linear(model.tgt_embed(tgt), model.tgt_embed.weight))


@pytest.mark.parametrize("arch", ARCHS)
def test_no_norms_and_one_gate_per_layer_shared_by_its_sublayers(arch: str) -> None:
    model = _model(arch, norm_layer="rmsnorm") if arch == "decoder" else _model(arch)
    assert not any(isinstance(m, (torch.nn.LayerNorm, RMSNorm)) for m in model.modules())
    stacks = [
        s
        for s in (getattr(model, "encoder", None), getattr(model, "decoder", None))
        if s is not None and hasattr(s, "layers")
    ]
    n_layers = 0
    for stack in stacks:
        assert stack.final_norm is None
        for block in stack.layers:
            residuals = [
                r
                for r in (block.self_attn_residual, block.cross_attn_residual, block.ffn_residual)
                if r is not None
            ]
            assert all(isinstance(r, ReZeroResidual) for r in residuals)
            assert len({id(r.rezero_gate) for r in residuals}) == 1  # shared within the layer
            n_layers += 1
    assert len(_gates(model)) == n_layers == 4  # distinct gates across layers
    assert sum(g.alpha.numel() for g in _gates(model)) == 4


def test_at_init_only_the_gates_get_gradient_then_the_function_moves() -> None:
    """With alpha = 0, dL/dW = 0 for every branch weight while dL/dalpha != 0; one SGD step on the
    gates opens them and the stack stops being the identity."""
    model = _model("decoder")
    ids = torch.randint(0, V, (3, 10))
    F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    gate_ids = {id(g.alpha) for g in _gates(model)}
    for name, p in model.named_parameters():
        if id(p) in gate_ids:
            assert p.grad.abs().item() > 0, name
        elif ".layers." in name:
            assert p.grad.abs().max().item() == 0.0, name
    with torch.no_grad():
        for g in _gates(model):
            g.alpha -= 0.1 * g.alpha.grad
    assert all(g.alpha.item() != 0.0 for g in _gates(model))
    assert (model.hidden(ids) - model.embed(ids)).abs().max().item() > 1e-4


def test_alpha_init_argument_and_meta_materialisation() -> None:
    """Gates built on the meta device get their value from reset_parameters at init time."""
    model = _model("decoder", norm_args={"alpha_init": 0.25})
    assert [g.alpha.item() for g in _gates(model)] == [0.25] * 4
    ids = torch.randint(0, V, (2, 7))
    assert (model.hidden(ids) - model.embed(ids)).abs().max().item() > 1e-3
    assert model.norm_strategy.describe()["decoder"]["alpha_init"] == 0.25
