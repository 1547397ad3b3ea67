"""Residual sums written in place (``normlab.norms.base.add_into``): the same numbers as ``x + f``.

The shared residual modules (Post-LN / DeepNorm family, Pre-LN, Sandwich, plain, normed-input) add
into a tensor made in the same forward instead of allocating the sum. These tests hold that to the
out-of-place sum bit for bit, outputs and every gradient, for every registered strategy in every
architecture (with dropout, and with a ProRes gate), and check the reuse rule itself: when the
memory is reused and when it must not be."""

from __future__ import annotations

import sys

import pytest
import torch

import normlab.norms.base as base
from normlab.norms import registered_names
from tests.model_helpers import forward, tiny_model

ARCHS = ["decoder", "encoder", "encoder_decoder"]


def out_of_place(owned: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return other + owned


def replace_add_into(patch: pytest.MonkeyPatch, replacement) -> int:
    """``add_into`` replaced in norms/base.py and in every strategy module that imported it; how many."""
    modules = [m for name, m in list(sys.modules.items()) if name.startswith("normlab.norms")]
    users = [m for m in modules if getattr(m, "add_into", None) is base.add_into]
    for module in users:
        patch.setattr(module, "add_into", replacement)
    return len(users)


def outputs_and_grads(norm: str, arch: str, **extra) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = tiny_model(norm, arch, depth=4, **extra)
    model.train()
    torch.manual_seed(7)  # the same dropout masks in both runs
    ids = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    out = forward(model, arch, ids)
    out.float().pow(2).mean().backward()
    return out.detach(), [p.grad for p in model.parameters() if p.grad is not None]


def assert_same_with_and_without_in_place(monkeypatch, norm: str, arch: str, **extra) -> None:
    in_place = outputs_and_grads(norm, arch, **extra)
    with monkeypatch.context() as patch:
        assert replace_add_into(patch, out_of_place) >= 6  # base and the strategies with their own residuals
        reference = outputs_and_grads(norm, arch, **extra)
    assert torch.equal(in_place[0], reference[0])
    assert len(in_place[1]) == len(reference[1]) > 0
    for a, b in zip(in_place[1], reference[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", registered_names())
def test_every_strategy_gives_the_out_of_place_numbers(monkeypatch, norm: str, arch: str) -> None:
    assert_same_with_and_without_in_place(monkeypatch, norm, arch)


@pytest.mark.parametrize("norm", ["postln", "preln", "deepnorm", "sandwich", "hybridnorm"])
def test_with_dropout_and_a_residual_warmup_too(monkeypatch, norm: str) -> None:
    """Dropout's output and the gate's product are the terms written into here."""
    warmup = {"schedule": "linear", "T": 10}
    assert_same_with_and_without_in_place(monkeypatch, norm, "decoder", dropout=0.1, residual_warmup=warmup)


@pytest.mark.parametrize("norm", ["deepnorm", "preln"])
def test_the_default_blocks_write_their_sums_in_place(monkeypatch, norm: str) -> None:
    """deepnorm writes both sums into its own alpha * x; preln writes the FFN's into the GELU + fc2
    output (the attention's output projection returns a view, so that sum is a new tensor)."""
    real, reused = base.add_into, []

    def recording(owned: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        pointer = owned.data_ptr()
        out = real(owned, other)
        reused.append(out.data_ptr() == pointer)
        return out

    replace_add_into(monkeypatch, recording)
    outputs_and_grads(norm, "decoder")
    assert len(reused) == 8  # 4 layers x 2 sublayers
    assert reused == ([True] * 8 if norm == "deepnorm" else [False, True] * 4)


def test_the_sum_reuses_a_fresh_tensor_of_its_own_shape_and_dtype() -> None:
    x = torch.randn(2, 3, 4, requires_grad=True)
    f = torch.randn(2, 3, 4, requires_grad=True) * 2.0  # a fresh non-leaf, as a branch returns
    expected = x.detach() + f.detach()
    pointer = f.data_ptr()
    out = base.add_into(f, x)
    assert out.data_ptr() == pointer and torch.equal(out.detach(), expected)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize(
    "case",
    ["view", "dtype", "shape", "leaf", "itself"],
)
def test_the_sum_is_a_new_tensor_when_the_term_may_not_be_reused(case: str) -> None:
    x = torch.randn(2, 3, 4)
    owned = {
        "view": torch.randn(6, 4).view(2, 3, 4),  # writing into a view would rewrite its base
        "dtype": torch.randn(2, 3, 4).bfloat16(),  # autocast's bf16 branch: the sum is fp32
        "shape": torch.randn(3, 4),  # broadcast: the sum is larger than the term
        "leaf": torch.randn(2, 3, 4, requires_grad=True),  # a parameter-like leaf
        "itself": x,
    }[case]
    before = owned.detach().clone()
    out = base.add_into(owned, x)
    assert out.data_ptr() != owned.data_ptr()
    assert torch.equal(owned.detach(), before)  # untouched
    assert out.dtype == torch.result_type(x, owned) and out.shape == torch.broadcast_shapes(
        x.shape, owned.shape
    )
