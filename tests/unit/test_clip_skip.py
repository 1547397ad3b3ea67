"""``optimizer.clip_grads_with_norm`` skips the multiplication when the clip coefficient clamps to 1
(on the CPU) and is otherwise torch's ``clip_grads_with_norm_``: bit-identical to it for every norm,
below, at and above the threshold, zero, inf and nan. ``optimizer.grad_norm_of`` is bit-identical
to ``torch.nn.utils.get_total_norm`` on its fast path and on torch's."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.optimizer import clip_grads_with_norm, grad_norm_of


def _params(scale: float) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (7, 64, 33, 1)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    params.append(torch.nn.Parameter(torch.zeros(5)))  # a parameter without a gradient
    return params


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 10.0, 1e4])
@pytest.mark.parametrize("max_norm", [0.5, 1.0])
def test_bit_identical_to_torch_for_real_norms(scale: float, max_norm: float) -> None:
    ours, theirs = _params(scale), _params(scale)
    norm = grad_norm_of(ours)
    clip_grads_with_norm(ours, max_norm, norm)
    reference = _torch_norm(theirs)
    assert torch.equal(norm, reference)
    torch.nn.utils.clip_grads_with_norm_(theirs, max_norm, reference)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
    clipped = float(norm) > max_norm + 1e-6
    assert clipped == (scale >= 10.0)  # both regimes are really exercised


@pytest.mark.parametrize("norm", [0.0, 1.0 - 1e-6, 1.0, 1.0 + 1e-3, math.inf, math.nan])
def test_bit_identical_at_the_threshold_and_for_non_finite_norms(norm: float) -> None:
    ours, theirs = _params(1.0), _params(1.0)
    clip_grads_with_norm(ours, 1.0, torch.tensor(norm))
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, torch.tensor(norm))
    for a, b in zip(ours, theirs, strict=True):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad) or (a.grad.isnan().all() and b.grad.isnan().all())


def test_within_the_threshold_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(1e-3)
    calls: list[int] = []
    monkeypatch.setattr(torch, "_foreach_mul_", lambda *a, **k: calls.append(1))
    clip_grads_with_norm(params, 1.0, grad_norm_of(params))
    assert calls == []
    clip_grads_with_norm(params, 1e-9, grad_norm_of(params))  # above: torch's multiplication runs
    assert calls == [1]


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_bit_identical_for_bfloat16_gradients(scale: float) -> None:
    ours, theirs = _params(scale), _params(scale)
    for p in ours + theirs:
        p.data = p.data.bfloat16()
        if p.grad is not None:
            p.grad = p.grad.bfloat16()
    clip_grads_with_norm(ours, 1.0, grad_norm_of(ours))
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, _torch_norm(theirs))
    for a, b in zip(ours, theirs, strict=True):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)


def _many_gradients(count: int, scale: float) -> list[torch.nn.Parameter]:
    """A deep model's case: many tensors of mixed shapes (matrices, vectors, scalars)."""
    g = torch.Generator().manual_seed(11)
    shapes = [(64, 64), (256, 64), (64,), (1,), (3, 5, 7)]
    params = [torch.nn.Parameter(torch.zeros(shapes[i % len(shapes)])) for i in range(count)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 1.0, 1e18])
def test_norm_fast_path_is_bit_identical_to_torch_and_taken(
    monkeypatch: pytest.MonkeyPatch, scale: float
) -> None:
    params = _many_gradients(500, scale)
    reference = _torch_norm(params)
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", _refuse)  # the fast path must not call it
    assert torch.equal(grad_norm_of(params), reference)


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_mixed_dtypes_take_torchs_path_and_agree(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    ours, theirs = _many_gradients(50, scale), _many_gradients(50, scale)
    for p in ours[::3] + theirs[::3]:
        p.data, p.grad = p.data.double(), p.grad.double()
    reference = _torch_norm(theirs)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, reference)
    calls: list[str] = []
    total_norm, clip_ = torch.nn.utils.get_total_norm, torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(
        torch.nn.utils, "get_total_norm", lambda *a, **k: calls.append("norm") or total_norm(*a, **k)
    )
    monkeypatch.setattr(
        torch.nn.utils, "clip_grads_with_norm_", lambda *a, **k: calls.append("clip") or clip_(*a, **k)
    )
    norm = grad_norm_of(ours)
    clip_grads_with_norm(ours, 1.0, norm)
    assert torch.equal(norm, reference)
    assert calls == (["norm", "clip"] if scale > 1.0 else ["norm"])
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)


def test_clip_above_the_threshold_with_an_int_max_norm_is_torchs() -> None:
    ours, theirs = _many_gradients(500, 1.0), _many_gradients(500, 1.0)
    norm = _torch_norm(theirs)
    assert float(norm) > 1.0
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, norm)
    clip_grads_with_norm(ours, 1, norm)  # an int max_norm, as a config may give it
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)


def _torch_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The reference: torch's own utility over the gradients that exist."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("torch's get_total_norm was called where the fast path applies")
