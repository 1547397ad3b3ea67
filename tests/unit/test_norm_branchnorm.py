"""BranchNorm in both readings (docs/norms.md §3 and its Update, §8 checks 12-14): the ramp (ProRes'
reading, the default) and standardize (Candidate A). The schedules' numbers; both forms are exactly
Post-LN for t >= T; the ramp makes every sublayer LN(x) at t = 0; standardize is invariant to the
branch-weight scale at t = 0 and needs no mean-centring under LayerNorm; the progress lives in
checkpointed buffers; typed arguments; describe; the headline command."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normlab.errors import ConfigError
from normlab.norms.base import Site
from normlab.norms.branchnorm import (
    BranchRampResidual,
    BranchStandardizeResidual,
    branchnorm_exponent,
    branchnorm_ramp,
)
from normlab.norms.registry import build_strategy, get_strategy_class
from tests.model_helpers import forward, tiny_config, tiny_model

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _cfg(norm: str = "branchnorm", arch: str = "decoder", depth: int = 4, **extra):
    return tiny_config(norm, arch, depth, **extra)


def _model(norm: str = "branchnorm", arch: str = "decoder", depth: int = 4, seed: int = 0, **extra):
    return tiny_model(norm, arch, depth, seed, vocab=V, **extra)


_run = forward


STANDARDIZE = {"form": "standardize"}
FORMS = ["ramp", "standardize"]


@pytest.mark.parametrize(
    ("decay", "step", "expected"),
    [
        ("linear", 0, 0.0),
        ("linear", 25, 0.25),
        ("linear", 99, 0.99),
        ("linear", 100, 1.0),
        ("linear", 10_000, 1.0),
        ("cosine", 0, 0.0),
        ("cosine", 25, (1 - math.cos(math.pi / 4)) / 2),
        ("cosine", 50, 0.5),
        ("cosine", 100, 1.0),
        ("step", 0, 0.0),
        ("step", 99, 0.0),
        ("step", 100, 1.0),
    ],
)
def test_ramp_schedule(decay: str, step: int, expected: float) -> None:
    """s_t = min(t/T, 1) for linear: ProRes' 'equal' schedule with T = max_norm_step."""
    assert branchnorm_ramp(step, 100, decay) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("decay", "step", "expected"),
    [
        ("linear", 0, 1.0),
        ("linear", 25, 0.75),
        ("linear", 50, 0.5),
        ("linear", 99, 0.01),
        ("linear", 100, 0.0),
        ("linear", 10_000, 0.0),
        ("cosine", 0, 1.0),
        ("cosine", 25, (1 + math.cos(math.pi / 4)) / 2),
        ("cosine", 50, 0.5),
        ("cosine", 100, 0.0),
        ("cosine", 150, 0.0),
        ("step", 0, 1.0),
        ("step", 99, 1.0),
        ("step", 100, 0.0),
    ],
)
def test_standardize_exponent_schedule(decay: str, step: int, expected: float) -> None:
    assert branchnorm_exponent(step, 100, decay) == pytest.approx(expected, abs=1e-12)
    assert branchnorm_exponent(step, 100, decay) == pytest.approx(1 - branchnorm_ramp(step, 100, decay))


def test_defaults() -> None:
    args = get_strategy_class("branchnorm").Args()
    assert (args.form, args.max_norm_step, args.decay) == ("ramp", None, "linear")
    # T defaults to 20 x the layers of the deepest stack
    assert build_strategy(_cfg(depth=24)).max_norm_step == 480
    assert build_strategy(_cfg(depth=1000)).max_norm_step == 20_000
    assert build_strategy(_cfg(arch="encoder_decoder", depth=18, encoder_depth=12)).max_norm_step == 240
    assert "(20 x layers, the default)" in build_strategy(_cfg(depth=24)).describe()["decoder"]["schedule"]
    strategy = build_strategy(_cfg(depth=1000, norm_args={"max_norm_step": 4000}))
    assert strategy.factor_name == "scale"
    assert strategy.factor_at(1000) == pytest.approx(0.25)
    old = build_strategy(_cfg(depth=1000, norm_args={"max_norm_step": 4000, **STANDARDIZE}))
    assert old.factor_name == "exponent" and old.factor_at(1000) == pytest.approx(0.75)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("norm_layer", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("arch", ARCHS)
def test_equals_post_ln_bit_for_bit_once_t_reaches_T(arch: str, norm_layer: str, form: str) -> None:
    """§8.12: for step >= T the model output equals the Post-LN output exactly, in both forms."""
    args = {"max_norm_step": 20, "decay": "linear", "form": form}
    branch = _model("branchnorm", arch, seed=3, norm_layer=norm_layer, norm_args=args)
    post = _model("postln", arch, seed=3, norm_layer=norm_layer)
    params_b = dict(branch.named_parameters())
    assert params_b.keys() == dict(post.named_parameters()).keys()
    assert all(torch.equal(params_b[k], p) for k, p in post.named_parameters())
    ids = torch.randint(0, V, (2, 9))
    out_post = _run(post, arch, ids)
    branch.norm_strategy.set_progress(10)  # halfway: not Post-LN yet
    assert (_run(branch, arch, ids) - out_post).abs().max() > 1e-2
    for step in (20, 21, 500):
        branch.norm_strategy.set_progress(step)
        factor = float(getattr(branch.norm_strategy, branch.norm_strategy.factor_name))
        assert factor == (1.0 if form == "ramp" else 0.0)
        assert torch.equal(_run(branch, arch, ids), out_post)


@pytest.mark.parametrize("norm_layer", ["layernorm", "rmsnorm"])
def test_ramp_at_step_0_makes_every_sublayer_the_norm_of_its_input(norm_layer: str) -> None:
    """s_0 = 0: LN(x + 0 * f(x)) == LN(x) exactly, whatever the branch computes."""
    strategy = build_strategy(_cfg(norm_layer=norm_layer, norm_args={"max_norm_step": 50}))
    strategy.set_progress(0)
    torch.manual_seed(0)
    x, y = torch.randn(3, 5, 32), 10 * torch.randn(3, 5, 32)
    for kind in ("self_attn", "ffn"):
        residual = strategy.residual(Site("decoder", 0, kind))
        assert isinstance(residual, BranchRampResidual)
        assert torch.equal(residual(x, lambda h: y), residual.norm(x))
    strategy.set_progress(10)  # s = 0.2
    torch.testing.assert_close(residual(x, lambda h: y), residual.norm(x + 0.2 * y), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_ramp_output_at_step_0_does_not_depend_on_branch_weights(arch: str) -> None:
    """At t = 0 every block is LN(LN(x)): scaling W^O / fc2 by any c changes nothing, exactly."""
    ids = torch.randint(0, V, (2, 9))
    ref = _run(_model("branchnorm", arch, seed=1), arch, ids)
    for c in (0.0, 0.25, 4.0):
        model = _model("branchnorm", arch, seed=1)
        _scale_branch_outputs(model, c)
        assert torch.equal(_run(model, arch, ids), ref)


def _scale_branch_outputs(model: nn.Module, c: float) -> None:
    """Multiply the last linear map of every branch (W^O and fc2, weight and bias) by ``c``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".out_proj." in name or ".fc2." in name:
                p.mul_(c)


@pytest.mark.parametrize("arch", ARCHS)
def test_standardize_invariant_to_branch_weight_scale_at_step_0(arch: str) -> None:
    """§8.14: at t = 0 the branch is standardised, so scaling W^O / fc2 by c > 0 changes nothing
    (up to eps, taken tiny here: small-variance branches make the default 1e-5 visible at c = 1/4);
    Post-LN's output does change."""
    args = {"eps": 1e-12, **STANDARDIZE}
    ids = torch.randint(0, V, (2, 9))
    ref_b = _run(_model("branchnorm", arch, seed=1, norm_args=args), arch, ids)
    ref_p = _run(_model("postln", arch, seed=1), arch, ids)
    for c in (0.25, 4.0):
        branch, post = _model("branchnorm", arch, seed=1, norm_args=args), _model("postln", arch, seed=1)
        _scale_branch_outputs(branch, c)
        _scale_branch_outputs(post, c)
        torch.testing.assert_close(_run(branch, arch, ids), ref_b, atol=2e-4, rtol=1e-4)
        assert (_run(post, arch, ids) - ref_p).abs().max() > 0.05


def test_standardize_branch_at_step_0_and_untouched_at_T() -> None:
    strategy = build_strategy(_cfg(norm_args={"max_norm_step": 8, **STANDARDIZE}))
    residual = strategy.residual(Site("decoder", 0, "ffn"))
    assert isinstance(residual, BranchStandardizeResidual)
    residual.norm = nn.Identity()  # look at x + rescaled branch directly
    x = torch.zeros(3, 5, 32)
    y = 3.0 * torch.randn(3, 5, 32) + 0.7
    strategy.set_progress(0)
    out = residual(x, lambda h: y)
    var = out.var(-1, unbiased=False)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0)
    strategy.set_progress(4)  # a = 1/2: divide by (Var + eps)^(1/4)
    expected = y / (y.var(-1, unbiased=False, keepdim=True) + 1e-5) ** 0.25
    torch.testing.assert_close(residual(x, lambda h: y), expected, atol=1e-6, rtol=1e-6)
    strategy.set_progress(8)
    assert torch.equal(residual(x, lambda h: y), y)


def test_mean_centring_is_a_no_op_under_layernorm() -> None:
    """§8.13: LN(x + y - mean(y)) == LN(x + y), which is why the standardised branch is not
    centred; with RMSNorm it is not a no-op, and leaving centring out keeps t >= T exactly Post-LN
    there too."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 7, 32), torch.randn(4, 7, 32) + 2.0
    ln = nn.LayerNorm(32)
    centred = y - y.mean(-1, keepdim=True)
    torch.testing.assert_close(ln(x + centred), ln(x + y), atol=1e-6, rtol=0)
    strategy = build_strategy(_cfg(norm_args={"max_norm_step": 4000, **STANDARDIZE}))
    res = BranchStandardizeResidual(ln, strategy, eps=1e-5)
    strategy.set_progress(1000)  # a = 0.75
    torch.testing.assert_close(res(x, lambda h: centred), res(x, lambda h: y - 0.0), atol=2e-6, rtol=0)
    rms = nn.RMSNorm(32)
    assert (rms(x + centred) - rms(x + y)).abs().max() > 0.1


@pytest.mark.parametrize(
    ("form", "buffer", "at_7"), [("ramp", "scale", 0.7), ("standardize", "exponent", 0.3)]
)
def test_progress_lives_in_checkpointed_buffers(form: str, buffer: str, at_7: float) -> None:
    args = {"max_norm_step": 10, "form": form}
    model = _model(norm_args=args)
    strategy = model.norm_strategy
    assert int(strategy.progress) == 0  # reset_state after init
    assert float(getattr(strategy, buffer)) == (0.0 if form == "ramp" else 1.0)
    strategy.set_progress(7)
    state = model.state_dict()
    assert int(state["norm_strategy.progress"]) == 7
    assert float(state[f"norm_strategy.{buffer}"]) == pytest.approx(at_7)
    fresh = _model(norm_args=args, seed=9)
    fresh.load_state_dict(state)
    assert float(getattr(fresh.norm_strategy, buffer)) == pytest.approx(at_7)
    ids = torch.randint(0, V, (2, 6))
    assert torch.equal(fresh(ids), model(ids))
    # residual modules hold no copy of the buffers: there is exactly one factor in the model
    assert [k for k in state if k.endswith(buffer)] == [f"norm_strategy.{buffer}"]


def test_no_final_norm_and_standard_init() -> None:
    model = _model(depth=3)
    assert model.decoder.final_norm is None
    post = _model("postln", depth=3)
    assert torch.equal(model.decoder.layers[1].ffn.fc2.weight, post.decoder.layers[1].ffn.fc2.weight)


def test_describe_shows_form_schedule_and_current_value() -> None:
    strategy = build_strategy(_cfg(norm_args={"max_norm_step": 200, "decay": "cosine"}))
    strategy.set_progress(100)
    consts = strategy.describe()["decoder"]
    assert consts["form"] == "ramp" and consts["formula"] == "LN(x + s_t*f(x))"
    assert consts["step"] == 100
    assert consts["scale"] == pytest.approx(0.5)
    assert "cosine" in consts["schedule"] and "T=200" in consts["schedule"]
    assert consts["final_norm"] is False
    assert strategy.schedule_values() == {"scale": pytest.approx(0.5), "progress": 100.0}
    old = build_strategy(_cfg(norm_args={"max_norm_step": 200, **STANDARDIZE}))
    old.set_progress(50)
    assert old.describe()["decoder"]["exponent"] == pytest.approx(0.75)
    assert old.schedule_values() == {"exponent": pytest.approx(0.75), "progress": 50.0}


@pytest.mark.parametrize(
    ("norm_args", "message"),
    [
        (
            {"max_norm_stp": 10},
            r"model\.norm_args\.max_norm_stp: unknown key; valid keys are: "
            r"form='ramp', max_norm_step=None, decay='linear', eps=1e-05",
        ),
        (
            {"max_norm_step": "soon"},
            r"model\.norm_args\.max_norm_step: expected int or null, got 'soon'.*max_norm_step=None",
        ),
        ({"max_norm_step": 0}, r"model\.norm_args\.max_norm_step: must be >= 1"),
        (
            {"decay": "exponential"},
            r"model\.norm_args\.decay: 'exponential' is not one of linear, cosine, step",
        ),
        ({"form": "scalar"}, r"model\.norm_args\.form: 'scalar' is not one of ramp, standardize"),
        ({"eps": -1.0}, r"model\.norm_args\.eps: must be > 0"),
    ],
)
def test_typed_arguments_fail_in_one_line(norm_args: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _cfg(norm_args=norm_args)
    assert "\n" not in str(info.value)


def test_cli_override_without_plus_and_headline_command(capsys) -> None:
    """``model.norm_args.max_norm_step=N`` works as written (no Hydra '+'), and the headline
    ``model.norm=branchnorm model.depth=1000`` needs no other argument."""
    from normlab.describe import describe, main

    assert main(["model.norm=branchnorm", "model.depth=1000", "model.norm_args.max_norm_step=100"]) == 0
    out = capsys.readouterr().out
    assert "T=100" in out and "M=1000" in out and "form=ramp" in out
    described = describe(["model.norm=branchnorm", "model.depth=1000"])
    assert described["args"]["max_norm_step"] is None
    assert described["decoder"]["exactly_postln_from_step"] == 20_000
    assert described["decoder"]["scale"] == 0.0
