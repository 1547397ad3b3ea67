"""The norm output recomputed in backward (normlab.recompute): bit-identical gradients for every
strategy and architecture, the tensor really freed after forward, the live memory really smaller,
and the recipe standing aside where other saved-tensor hooks, autocast or no_grad are active."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

import normlab.recompute as recompute
from normlab.distributed import apply_activation_checkpointing
from normlab.norms import registered_names
from normlab.norms.base import Residual
from tests.model_helpers import forward, tiny_model

ARCHS = ("decoder", "encoder", "encoder_decoder")


def _gradients(norm: str, arch: str, monkeypatch, *, recompute_on: bool) -> tuple[torch.Tensor, dict]:
    with monkeypatch.context() as patch:
        if not recompute_on:
            patch.setattr(recompute, "applies_to", lambda value: False)
        model = tiny_model(norm, arch, depth=4, seed=0)
        ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
        loss = forward(model, arch, ids).float().square().mean()
        loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", registered_names())
def test_gradients_are_bit_identical_to_keeping_the_norm_output(norm: str, arch: str, monkeypatch) -> None:
    loss_kept, kept = _gradients(norm, arch, monkeypatch, recompute_on=False)
    loss, grads = _gradients(norm, arch, monkeypatch, recompute_on=True)
    assert torch.equal(loss, loss_kept)
    assert kept.keys() == grads.keys() and kept
    for name in kept:
        assert torch.equal(grads[name], kept[name]), name


def _recipes_used(model: nn.Module, ids: torch.Tensor, monkeypatch) -> int:
    computed = []
    original = recompute._Recipe.compute

    def counting(recipe):
        computed.append(recipe)
        return original(recipe)

    with monkeypatch.context() as patch:
        patch.setattr(recompute._Recipe, "compute", counting)
        model(ids).sum().backward()
    return len({id(r) for r in computed})


def test_a_pre_ln_decoder_recomputes_both_norm_outputs_of_every_layer(monkeypatch) -> None:
    model = tiny_model("preln", depth=3)
    assert _recipes_used(model, torch.randint(0, 50, (2, 8)), monkeypatch) == 2 * 3


def test_the_norm_output_is_freed_after_forward(monkeypatch) -> None:
    outputs: list[weakref.ref] = []
    original = Residual.branch_of_norm

    def watching(branch, norm, x):
        def watched(h):
            outputs.append(weakref.ref(h))
            return branch(h)

        return original(watched, norm, x)

    monkeypatch.setattr(Residual, "branch_of_norm", staticmethod(watching))
    model = tiny_model("preln", depth=2)
    out = model(torch.randint(0, 50, (2, 8)))
    gc.collect()
    assert len(outputs) == 4 and all(ref() is None for ref in outputs)
    out.sum().backward()  # and backward still works without them


def _peak_live_bytes_of_a_step(model: nn.Module, ids: torch.Tensor) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(ids).sum().backward()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def test_a_pre_ln_step_holds_two_block_wide_tensors_fewer_per_layer(monkeypatch) -> None:
    depth, batch, seq, d = 6, 4, 32, 32
    ids = torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(0))
    with_recipe = _peak_live_bytes_of_a_step(tiny_model("preln", depth=depth), ids)
    monkeypatch.setattr(recompute, "applies_to", lambda value: False)
    kept = _peak_live_bytes_of_a_step(tiny_model("preln", depth=depth), ids)
    unit = batch * seq * d * 4  # one fp32 tensor of the residual stream's shape
    saved = kept - with_recipe
    assert 2 * depth * unit * 0.9 <= saved <= 2 * depth * unit * 1.1, (saved, unit)


def _a_norm_and_linear() -> tuple[nn.LayerNorm, nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return nn.LayerNorm(8), nn.Linear(8, 8), torch.randn(4, 8, requires_grad=True)


def test_it_stands_aside_under_other_saved_tensor_hooks_autocast_and_no_grad() -> None:
    norm, _, leaf = _a_norm_and_linear()
    h = norm(leaf * 1.0)
    assert recompute.applies_to(h)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert not recompute.applies_to(h)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not recompute.applies_to(h)
    with torch.no_grad():
        assert not recompute.applies_to(norm(leaf))
    assert not recompute.applies_to(h.t())  # not contiguous: views of it could not be rebuilt


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_decides_alone_what_is_kept(mode: str, monkeypatch) -> None:
    """Checkpointing (non-reentrant, saved-tensor hooks of its own) sees every saved tensor: no
    recipe in its forward nor in its recomputation, and the gradients are those of the plain path."""
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    plain = tiny_model("preln", depth=3)
    plain(ids).sum().backward()
    model = apply_activation_checkpointing(tiny_model("preln", depth=3), mode)
    assert _recipes_used(model, ids, monkeypatch) == 0
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


def test_modifying_the_norm_input_in_place_before_backward_is_an_error() -> None:
    norm, linear, leaf = _a_norm_and_linear()
    x = leaf * 1.0
    h = norm(x)
    with recompute.recompute_in_backward(h, lambda: norm.forward(x), x):
        y = linear(h)
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place after the forward pass"):
        y.sum().backward()
