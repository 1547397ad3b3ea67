"""FlatAdamW is torch's AdamW bit for bit: parameters and moments are compared with torch.equal after
several steps, with windows that straddle parameters, odd sizes, lr changes, skipped gradients and
checkpoint round trips in both directions."""

from __future__ import annotations

import io

import pytest
import torch

from normlab.config import validate_model_config, validate_optim_config
from normlab.flat_adamw import FlatAdamW, plan_windows
from normlab.models.init import build_model, materialize
from normlab.optimizer import build_optimizer

# odd widths: no parameter size is a multiple of the SIMD width, so vector tails are exercised
CFG = {"norm": "deepnorm", "depth": 3, "d_model": 24, "n_heads": 4, "d_ffn": 52}
VOCAB = 37


def _net() -> torch.nn.Module:
    return materialize(build_model(validate_model_config(CFG), VOCAB), "cpu", seed=0)


def _groups(net: torch.nn.Module) -> list[dict]:
    params = [p for p in net.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _flat(net: torch.nn.Module, window: int = 97) -> FlatAdamW:
    return FlatAdamW(_groups(net), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, window=window)


def _loop(net: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(_groups(net), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, foreach=False)


def _backward(net: torch.nn.Module, seed: int) -> None:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed))
    net(ids).float().logsumexp(-1).mean().backward()


def _run(net, opt, steps: range, skip: set[int] = frozenset()) -> None:
    for step in steps:
        _backward(net, step)
        if step in skip:  # a parameter that got no gradient this step (e.g. an unused branch)
            next(p for p in net.parameters() if p.ndim == 1).grad = None
        if step == 3:  # a scheduler changing lr mid-run
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.5
        opt.step()
        opt.zero_grad(set_to_none=True)


def _assert_same(net_a, opt_a, net_b, opt_b) -> None:
    for pa, pb in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert torch.equal(sa["step"], sb["step"])
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


@pytest.mark.parametrize("window", [1, 97, 1 << 16])
def test_bit_identical_to_torch_adamw_loop(window: int) -> None:
    net_a, net_b = _net(), _net()
    opt_a, opt_b = _flat(net_a, window), _loop(net_b)
    _run(net_a, opt_a, range(6), skip={2})
    _run(net_b, opt_b, range(6), skip={2})
    _assert_same(net_a, opt_a, net_b, opt_b)
    assert opt_a.flat[1].uniform_step is None  # the skipped parameter is one step behind
    _run(net_a, opt_a, range(6, 8))
    _run(net_b, opt_b, range(6, 8))
    _assert_same(net_a, opt_a, net_b, opt_b)


def test_parameters_are_views_of_one_buffer_and_memory_is_not_doubled() -> None:
    net = _net()
    opt = _flat(net)
    decay = opt.flat[0]
    assert decay.param.numel() == sum(p.numel() for p in opt.param_groups[0]["params"])
    base = decay.param.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in opt.param_groups[0]["params"])


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("direction", ["flat_to_torch", "torch_to_flat"])
def test_checkpoints_move_between_flat_and_torch_adamw(direction: str) -> None:
    net_a, net_b = _net(), _net()
    make_first, make_second = (_flat, _loop) if direction == "flat_to_torch" else (_loop, _flat)
    opt_a = make_first(net_a)
    _run(net_a, opt_a, range(4))
    net_b.load_state_dict(net_a.state_dict())
    opt_b = make_second(net_b)
    opt_b.load_state_dict(_round_trip(opt_a.state_dict()))
    _assert_same(net_a, opt_a, net_b, opt_b)
    _run(net_a, opt_a, range(4, 7))
    _run(net_b, opt_b, range(4, 7))
    _assert_same(net_a, opt_a, net_b, opt_b)


def test_replacing_a_parameter_after_construction_is_an_error() -> None:
    net = _net()
    opt = _flat(net)
    _backward(net, 0)
    victim = opt.param_groups[0]["params"][2]
    victim.data = victim.data.clone()
    with pytest.raises(RuntimeError, match=r"no longer lives in the optimizer's flat buffer"):
        opt.step()


def test_unsupported_settings_are_refused() -> None:
    net = _net()
    with pytest.raises(ValueError, match="amsgrad"):
        FlatAdamW([{"params": list(net.parameters()), "amsgrad": True}], lr=1e-3, betas=(0.9, 0.9), eps=1e-8)
    mixed = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    with pytest.raises(ValueError, match="one float dtype"):
        FlatAdamW(mixed, lr=1e-3, betas=(0.9, 0.9), eps=1e-8)


@pytest.mark.parametrize("window", [1, 6, 8, 30, 64])
def test_windows_cover_every_element_once_in_order(window: int) -> None:
    params = [torch.zeros(5), torch.zeros(0), torch.zeros(7), torch.zeros(4, 7), torch.zeros(2)]
    offsets, start = [], 0
    for p in params:
        offsets.append((start, start + p.numel()))
        start += p.numel()
    covered = []
    for w in plan_windows(params, offsets, window):
        assert w.end - w.start <= max(window, 1) or len(w.members) == 1
        if w.gathered is not None:  # whole parameters, gathered into scratch of their shapes
            assert [v.shape for v in w.scratch_views] == [params[i].shape for i in w.members]
            assert w.gathered.numel() == w.end - w.start
            covered += list(range(w.start, w.end))
        else:
            (i,) = w.members
            covered += [offsets[i][0] + k for k in range(w.lo, w.hi)]
            assert (offsets[i][0] + w.lo, offsets[i][0] + w.hi) == (w.start, w.end)
    assert covered == list(range(start))


def test_build_optimizer_uses_it_on_the_cpu() -> None:
    net = _net()
    opt = build_optimizer(net, validate_optim_config({}))
    assert isinstance(opt, FlatAdamW)
    fused = build_optimizer(_net(), validate_optim_config({"fused": True}))
    assert not isinstance(fused, FlatAdamW) and fused.defaults["fused"] is True
