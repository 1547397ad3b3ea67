"""ProRes residual warm-up (docs/norms.md §7b; arXiv 2603.05369 Tables 1 and 5; dandingsky/ProRes code).

Every schedule's alpha(l, t) against Table 5 at sample points and against the authors' code path
(linspace of per-layer warm-up ends over --prores_warmup_steps = T*L); where the scalar sits
(Table 1) for Pre-LN, Post-LN, Sandwich, DeepNorm and LNS; one alpha per layer shared by its
sublayers; alpha = 1 is bit-identical to no warm-up and alpha = 0 removes every branch, for every
registered strategy in all three architectures; config errors; describe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from normlab.description import format_description, model_description
from normlab.errors import ConfigError
from normlab.models.warmup import WarmupSchedule, prores_alpha, warmup_end
from normlab.norms import registered_names
from normlab.norms.base import Residual
from tests.model_helpers import forward, tiny_config, tiny_model

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 40
S2, S3 = math.sqrt(2), math.sqrt(3)

# L = 4, T = 10, t = 15 (t = 5 for equal): alpha for layers 1..4, worked out by hand from Table 5
TABLE_5 = {
    "linear": [1.0, 0.75, 0.5, 0.375],
    "linear-sqrt": [1.0, math.sqrt(0.75), math.sqrt(0.5), math.sqrt(0.375)],
    "linear-square": [1.0, 0.5625, 0.25, 0.140625],
    "reverse": [0.375, 0.5, 0.75, 1.0],
    "stagewise-0": [1.0, 0.5, 0.0, 0.0],
    "stagewise-L": [1.0, 0.625, 0.25, 0.25],
    "stagewise-sqrt-L": [1.0, 0.75, 0.5, 0.5],
    "stagewise-sqrt-l": [1.0, 1 / S2 + (1 - 1 / S2) * 0.5, 1 / S3, 0.5],
    "fix-L": [0.25] * 4,
    "fix-sqrt-L": [0.5] * 4,
    "fix-sqrt-l": [1.0, 1 / S2, 1 / S3, 0.5],
}


@pytest.mark.parametrize(("schedule", "expected"), sorted(TABLE_5.items()))
def test_table_5_values(schedule: str, expected: list[float]) -> None:
    assert prores_alpha(schedule, 15, 4, 10) == pytest.approx(expected, abs=1e-12)


def test_equal_is_one_ramp_for_every_layer() -> None:
    assert prores_alpha("equal", 5, 4, 10) == pytest.approx([0.5] * 4)
    assert prores_alpha("equal", 10, 4, 10) == [1.0] * 4


def test_every_schedule_has_a_table_entry() -> None:
    assert {str(s) for s in WarmupSchedule} == set(TABLE_5) | {"equal"}


def _authors_code(schedule: str, update_step: int, n_layers: int, T: int) -> list[float]:
    """The alpha computation of dandingsky/ProRes ``torchrun_main.py`` (re-expressed, not copied),
    with ``--prores_warmup_steps = T * L`` as its README prescribes and the code's schedule names."""
    total = T * n_layers
    if schedule == "equal":
        ends = np.array([total] * n_layers, dtype=float)  # the code reuses the total for "equal"
    else:
        ends = np.linspace(total // n_layers, total, n_layers)
        if schedule == "reverse":
            ends = np.flip(ends)
    if schedule in ("linear", "equal", "reverse"):
        return np.clip(update_step / ends, 0.0, 1.0).tolist()
    if schedule == "linear-sqrt":
        return np.clip(np.sqrt(update_step / ends), 0.0, 1.0).tolist()
    if schedule == "linear-square":
        return np.clip((update_step / ends) ** 2, 0.0, 1.0).tolist()
    floors = {
        "stagewise-0": 0.0,
        "stagewise-L": 1 / n_layers,
        "stagewise-sqrt-L": np.sqrt(1 / n_layers),
        "stagewise-sqrt-l": 1 / np.sqrt(np.arange(1, n_layers + 1)),
    }
    m = floors[schedule]
    starts = np.concatenate(([0], ends[:-1]))
    return np.clip(m + (1 - m) * (update_step - starts) / np.diff(ends, prepend=0), m, 1).tolist()


@pytest.mark.parametrize(
    "schedule",
    ["linear", "linear-sqrt", "linear-square", "reverse", "stagewise-0", "stagewise-L", "stagewise-sqrt-L"]
    + ["stagewise-sqrt-l"],
)
@pytest.mark.parametrize(("n_layers", "T"), [(4, 10), (24, 1000), (7, 3)])
def test_matches_the_authors_code(schedule: str, n_layers: int, T: int) -> None:
    for t in sorted({0, 1, T - 1, T, T + 1, 2 * T + 3, T * n_layers // 2, T * n_layers - 1, T * n_layers}):
        assert prores_alpha(schedule, t, n_layers, T) == pytest.approx(
            _authors_code(schedule, t, n_layers, T), abs=1e-12
        ), (schedule, t)


def test_equal_matches_the_code_with_the_total_length() -> None:
    """The code's 'equal' ramps over T*L; Table 5 writes T: ours follows Table 5 (T as given)."""
    for t in (0, 7, 40, 41):
        assert prores_alpha("equal", t, 4, 40) == pytest.approx(_authors_code("equal", t, 4, 10))


@pytest.mark.parametrize("schedule", [str(s) for s in WarmupSchedule])
def test_starts_at_zero_and_ends_at_one(schedule: str) -> None:
    end = warmup_end(schedule, 6, 5)
    if end is None:  # fix-*: constant, never 1 everywhere
        assert schedule.startswith("fix")
        assert prores_alpha(schedule, 0, 6, 5) == prores_alpha(schedule, 10**6, 6, 5)
        return
    assert end == (5 if schedule == "equal" else 30)
    start = prores_alpha(schedule, 0, 6, 5)
    if schedule.startswith("stagewise-") and schedule != "stagewise-0":
        assert min(start) > 0  # stagewise-L/sqrt-L/sqrt-l start from their floor
    else:
        assert start == [0.0] * 6
    assert prores_alpha(schedule, end - 1, 6, 5) != [1.0] * 6
    assert prores_alpha(schedule, end, 6, 5) == [1.0] * 6
    assert prores_alpha(schedule, end + 100, 6, 5) == [1.0] * 6


# --- the model -------------------------------------------------------------------------------


def _cfg(norm: str, arch: str, warmup: dict | None, depth: int = 4, **extra):
    small = {"d_model": 16, "n_heads": 2, "d_ffn": 32, **extra}
    return tiny_config(norm, arch, depth, **small, **({"residual_warmup": warmup} if warmup else {}))


def _model(norm: str, arch: str, warmup: dict | None = None, seed: int = 0, **extra) -> nn.Module:
    small = {"d_model": 16, "n_heads": 2, "d_ffn": 32, **extra}
    return tiny_model(
        norm, arch, seed=seed, vocab=V, **small, **({"residual_warmup": warmup} if warmup else {})
    )


_run = forward


def _set_step(model: nn.Module, step: int) -> None:
    model.residual_warmup.set_progress(step)
    strategy = model.norm_strategy
    if hasattr(strategy, "set_progress"):
        strategy.set_progress(10**6)  # BranchNorm: past its own ramp, so only the warm-up varies


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", registered_names())
def test_alpha_one_is_bit_identical_to_no_warmup(norm: str, arch: str) -> None:
    plain = _model(norm, arch, seed=5)
    warm = _model(norm, arch, {"schedule": "linear", "T": 3}, seed=5)
    for model in (plain, warm):  # ReZero's gates start at 0: open them so its branches count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("rezero_gate.alpha"):
                    p.fill_(0.5)
    assert dict(plain.named_parameters()).keys() == dict(warm.named_parameters()).keys()
    for (name, p), q in zip(plain.named_parameters(), warm.parameters(), strict=True):
        assert torch.equal(p, q), name
    if hasattr(plain.norm_strategy, "set_progress"):
        plain.norm_strategy.set_progress(10**6)
    ids = torch.randint(0, V, (2, 7))
    _set_step(warm, 3)  # layer 1 at alpha 1, the others not yet
    assert not torch.equal(_run(warm, arch, ids), _run(plain, arch, ids))
    depth = max(warm.residual_warmup.depths.values())
    _set_step(warm, 3 * depth)
    assert torch.equal(_run(warm, arch, ids), _run(plain, arch, ids))


def _perturb_block_weights(model: nn.Module) -> None:
    """Change every weight of every block except the norms' (gains and biases)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("layers." in name) and p.ndim == 2:
                p.mul_(3.0).add_(0.1)
            elif name.endswith("alpha") or name.endswith("omega"):  # ReZero / Admin gates
                p.fill_(0.7)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", registered_names())
def test_alpha_zero_removes_every_branch(norm: str, arch: str) -> None:
    """At t = 0 (linear) every alpha is 0: no strategy may add a branch term outside ``gated``."""
    model = _model(norm, arch, {"schedule": "linear", "T": 3}, seed=2)
    _set_step(model, 0)
    ids = torch.randint(0, V, (2, 7))
    before = _run(model, arch, ids)
    _perturb_block_weights(model)
    assert torch.equal(_run(model, arch, ids), before)


def test_every_residual_module_is_gated_and_layers_share_one_alpha() -> None:
    model = _model("preln", "encoder_decoder", {"schedule": "linear", "T": 2}, depth=6)
    for stack in (model.encoder, model.decoder):
        for i, block in enumerate(stack.layers):
            residuals = [m for m in block.modules() if isinstance(m, Residual)]
            assert len(residuals) == (3 if stack is model.decoder else 2)
            gates = {(r.gate.name, r.gate.index) for r in residuals}
            assert gates == {(f"alpha_{stack.stack}", i)}
    warmup = model.residual_warmup
    warmup.set_progress(3)
    assert warmup.alpha_encoder.tolist() == pytest.approx([1.0, 0.75, 0.5])  # L = 3 per stack
    assert warmup.alpha_decoder.tolist() == pytest.approx([1.0, 0.75, 0.5])


def _residual(norm: str, kind: str = "ffn", layer: int = 2, **extra) -> tuple[Residual, float]:
    model = _model(norm, "decoder", {"schedule": "linear", "T": 4}, **extra)
    model.residual_warmup.set_progress(6)  # layer 3 (0-based 2): alpha = 6 / 12 = 0.5
    block = model.decoder.layers[layer]
    residual = block.ffn_residual if kind == "ffn" else block.self_attn_residual
    return residual, float(residual.gate())


def test_table_1_placement() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 16), 5 * torch.randn(2, 3, 16)
    f = lambda h: y + h  # noqa: E731 - a branch that depends on its input

    res, a = _residual("preln")
    assert a == 0.5
    torch.testing.assert_close(res(x, f), x + a * f(res.norm(x)))
    res, a = _residual("postln")
    torch.testing.assert_close(res(x, f), res.norm(x + a * f(x)))
    res, a = _residual("sandwich")
    torch.testing.assert_close(res(x, f), x + a * res.norm_out(f(res.norm_in(x))))
    res, a = _residual("deepnorm")
    alpha_deepnorm = (2 * 4) ** 0.25
    assert res.alpha == pytest.approx(alpha_deepnorm)
    torch.testing.assert_close(res(x, f), res.norm(alpha_deepnorm * x + a * f(x)))
    res, a = _residual("lns")
    torch.testing.assert_close(res(x, f), x + a * f(res.norm(x) / math.sqrt(3)))
    res, a = _residual("branchnorm")  # at its own step 0: s = 0 -> LN(x) whatever alpha is
    torch.testing.assert_close(res(x, f), res.norm(x))


def test_config_errors_are_one_line() -> None:
    cases = [
        ({"schedule": "cosine"}, r"model\.residual_warmup\.schedule: 'cosine' is not one of linear, "),
        ({"schedule": "linear", "T": 0}, r"model\.residual_warmup\.T: must be >= 1"),
        ({"T": "long"}, r"model\.residual_warmup\.T: expected int, got 'long'"),
        ({"steps": 3}, r"model\.residual_warmup\.steps: unknown key; valid keys are: schedule="),
    ]
    for value, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            _cfg("preln", "decoder", value)
        assert "\n" not in str(info.value)


def test_off_by_default_and_described_when_on() -> None:
    assert _model("preln", "decoder").residual_warmup is None
    assert "residual_warmup" not in model_description(_cfg("preln", "decoder", None))
    description = model_description(_cfg("postln", "decoder", {"schedule": "linear", "T": 100}, depth=24))
    warmup = description["residual_warmup"]
    assert (warmup["schedule"], warmup["T"], warmup["step"]) == ("linear", 100, 0)
    assert warmup["decoder"]["all_alpha_1_from_step"] == 2400
    assert warmup["decoder"]["alpha_now"] == {"l1": 0.0, "l6": 0.0, "l12": 0.0, "l18": 0.0, "l24": 0.0}
    text = format_description(description)
    assert "residual warm-up (ProRes): schedule=linear, T=100" in text


def test_describe_cli_takes_the_override_without_plus(capsys) -> None:
    from normlab.describe import main

    args = ["model.norm=deepnorm", "model.residual_warmup.schedule=equal", "model.residual_warmup.T=50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "schedule=equal, T=50" in out and "all_alpha_1_from_step=50" in out


@pytest.mark.parametrize("arch", ARCHS)
def test_branchnorm_ramp_is_postln_with_the_equal_schedule(arch: str) -> None:
    """ProRes §4.3 footnote 3, the reading the ramp form implements: same numbers at every step."""
    ramp = _model("branchnorm", arch, seed=8, norm_args={"max_norm_step": 12})
    equal = _model("postln", arch, {"schedule": "equal", "T": 12}, seed=8)
    ids = torch.randint(0, V, (2, 7))
    for step in (0, 1, 5, 11, 12, 40):
        ramp.norm_strategy.set_progress(step)
        equal.residual_warmup.set_progress(step)
        assert torch.equal(_run(ramp, arch, ids), _run(equal, arch, ids)), step
