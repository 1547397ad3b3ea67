"""Admin's original profiling initialisation (docs/norms.md §6 and §8 check 11): the recursion
omega_1 = 1, omega_{i+1} = sqrt(Var[omega_i x_i] + Var[f_i(x_i)]) per stack, recomputed here
sublayer by sublayer; its unit-variance form omega_{i+1}^2 ~ omega_i^2 + Var[f_i] (+-5%); a forward
before profiling refused in one line; the values kept by a checkpoint and by an in-place copy
(``model.init_from``); the learnable vector; in all three architectures."""

from __future__ import annotations

import math

import pytest
import torch

from normlab.config import validate_model_config
from normlab.errors import ConfigError
from normlab.models.init import build_model, materialize
from normlab.norms.admin import ProfiledOmegaResidual
from tests.model_helpers import forward

ARCHS = ["decoder", "encoder", "encoder_decoder"]
V = 50


def _model(arch: str = "decoder", depth: int = 6, seed: int = 0, **args):
    cfg = validate_model_config(
        {
            "arch": arch,
            "norm": "admin",
            "depth": depth,
            "d_model": 32,
            "n_heads": 4,
            "d_ffn": 64,
            "norm_args": {"output_change_scale": "profiling", **args},
        }
    )
    return materialize(build_model(cfg, vocab_size=V), "cpu", seed=seed)


def _ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (4, 12), generator=torch.Generator().manual_seed(seed))


def _profile(model, arch: str, ids: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        model.norm_strategy.profile(lambda: forward(model, arch, ids))


def _residuals(model) -> list[ProfiledOmegaResidual]:
    return [m for m in model.modules() if isinstance(m, ProfiledOmegaResidual)]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_recursion_recomputed_sublayer_by_sublayer(arch: str) -> None:
    """After profiling, a second eval pass with hooks sees, for each residual in forward order:
    omega of the stack's first sublayer = 1, and the next one's omega = sqrt(Var[omega x] + Var[f(x)])."""
    model, ids = _model(arch), _ids()
    _profile(model, arch, ids)
    seen: list[tuple[str, float, float]] = []  # (stack, omega, sqrt(Var[omega x] + Var[f(x)]))

    def hook(module, args):
        x, branch = args
        skip, term = module.omega * x, branch(x)
        seen.append(
            (
                module.stack,
                float(module.omega),
                math.sqrt(float(skip.var(unbiased=False) + term.var(unbiased=False))),
            )
        )

    handles = [r.register_forward_pre_hook(hook) for r in _residuals(model)]
    with torch.no_grad():
        forward(model, arch, ids)
    for h in handles:
        h.remove()
    assert len(seen) == len(_residuals(model))
    for stack in {s for s, _, _ in seen}:
        walk = [(omega, nxt) for s, omega, nxt in seen if s == stack]
        assert walk[0][0] == 1.0
        for (_, expected), (omega, _) in zip(walk, walk[1:], strict=False):
            assert omega == pytest.approx(expected, rel=1e-5)
        assert walk[-1][0] > 1.0  # the branches added variance


def test_unit_variance_form_of_norms_md_check_11() -> None:
    """With LN outputs (gamma = 1) and a unit-variance embedding as inputs, omega_{i+1}^2 ~ omega_i^2
    + Var[f_i] (+-5%): the paper's omega_i^2 = 1 + sum_{j<i} Var[f_j]."""
    model, ids = _model("decoder", depth=8), _ids()
    _profile(model, "decoder", ids)
    branch_var: list[float] = []

    def hook(module, args):
        x, branch = args
        branch_var.append(float(branch(x).var(unbiased=False)))

    residuals = _residuals(model)
    handles = [r.register_forward_pre_hook(hook) for r in residuals]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    omegas = [float(r.omega) for r in residuals]
    for i in range(len(omegas) - 1):
        assert omegas[i + 1] ** 2 == pytest.approx(omegas[i] ** 2 + branch_var[i], rel=0.05)


def test_a_forward_before_profiling_is_refused_in_one_line() -> None:
    model = _model()
    assert model.norm_strategy.needs_profile()
    with pytest.raises(
        ConfigError, match=r"^model.norm_args.output_change_scale=profiling: omega has not"
    ) as err:
        model(_ids())
    assert "\n" not in str(err.value)


def test_a_checkpoint_and_an_in_place_copy_keep_the_profile() -> None:
    """load_state_dict (a checkpoint) and dest.copy_ (model.init_from) both carry omega and the
    profiled flag: the copy needs no profiling and computes the same outputs."""
    model, ids = _model(seed=0), _ids()
    _profile(model, "decoder", ids)
    with torch.no_grad():
        expected = model(ids)
    loaded = _model(seed=5)
    loaded.load_state_dict(model.state_dict())
    copied = _model(seed=5)
    with torch.no_grad():
        for name, dest in copied.state_dict(keep_vars=True).items():
            dest.copy_(model.state_dict()[name])
    for other in (loaded, copied):
        other.eval()
        assert not other.norm_strategy.needs_profile()
        with torch.no_grad():
            assert torch.equal(other(ids), expected)
    assert model.norm_strategy.profiled_values()["decoder"][0] == 1.0


def test_learnable_vector_is_filled_with_the_profiled_value() -> None:
    model = _model(as_parameter=True)
    _profile(model, "decoder", _ids())
    for res in _residuals(model):
        assert isinstance(res.omega, torch.nn.Parameter) and res.omega.shape == (32,)
        assert torch.equal(res.omega.detach(), torch.full((32,), float(res.omega.detach()[0])))
    assert float(_residuals(model)[-1].omega[0]) > 1.0


def test_closed_form_admin_never_needs_a_profile() -> None:
    cfg = validate_model_config({"norm": "admin", "depth": 2, "d_model": 32, "n_heads": 4, "d_ffn": 64})
    model = materialize(build_model(cfg, vocab_size=V), "cpu", seed=0)
    assert not model.norm_strategy.needs_profile() and not _residuals(model)
    model(_ids())  # no profile needed


def test_a_residual_warm_up_is_refused_with_profiling() -> None:
    """At step 0 ProRes silences the branches the pass would measure (omega ~ 1): refused, one line."""
    cfg = validate_model_config(
        {
            "norm": "admin",
            "depth": 2,
            "d_model": 32,
            "n_heads": 4,
            "d_ffn": 64,
            "norm_args": {"output_change_scale": "profiling"},
            "residual_warmup": {"schedule": "linear", "T": 10},
        }
    )
    with pytest.raises(ConfigError, match=r"^model.residual_warmup: Admin's profiling pass") as err:
        build_model(cfg, vocab_size=V)
    assert "\n" not in str(err.value)


def test_loading_an_unprofiled_state_is_noticed() -> None:
    """A profiled model that loads an unprofiled state (a checkpoint saved before the pass) reads the
    flag again and refuses the forward instead of running with placeholder omegas."""
    model, ids = _model(), _ids()
    _profile(model, "decoder", ids)
    model(ids)
    model.load_state_dict(_model(seed=3).state_dict())
    with pytest.raises(ConfigError, match="omega has not been profiled"):
        model(ids)


def test_the_description_shows_the_profiled_values() -> None:
    model = _model()
    assert model.norm_strategy.describe()["decoder"]["omega"] == "profiled on the first training batch"
    _profile(model, "decoder", _ids())
    values = model.norm_strategy.profiled_values()["decoder"]
    described = model.norm_strategy.describe()["decoder"]["omega"]
    assert described == f"profiled: {values[0]:.4g} (first sublayer) ... {values[-1]:.4g} (last)"
