"""normlab's AdamW (optimizer.build_optimizer): FlatAdamW on the CPU by default, bit-identical to the
plain per-parameter loop; fused is opt-in and close but not identical; weight decay on matrices only.
FlatAdamW's own edge cases are in test_flat_adamw.py."""

from __future__ import annotations

import pytest
import torch

from normlab.config import validate_model_config, validate_optim_config
from normlab.errors import ConfigError
from normlab.flat_adamw import FlatAdamW
from normlab.models.init import build_model, materialize
from normlab.optimizer import build_optimizer

CFG = {"norm": "deepnorm", "depth": 3, "d_model": 32, "n_heads": 4, "d_ffn": 64}


def _train(optimizer_factory, steps: int = 4) -> torch.Tensor:
    net = materialize(build_model(validate_model_config(CFG), 50), "cpu", seed=0)
    opt = optimizer_factory(net)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        ids = torch.randint(0, 50, (2, 9), generator=g)
        net(ids).float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _torch_adamw(net, **impl: bool) -> torch.optim.AdamW:
    """torch's AdamW over build_optimizer's groups and settings. Fresh group dicts: torch writes its
    defaults (foreach, fused) into the dicts it is given, so reusing another optimizer's groups would
    inherit that optimizer's kernel choice."""
    cfg = validate_optim_config({})
    groups = [
        {"params": g["params"], "weight_decay": g["weight_decay"]}
        for g in build_optimizer(net, cfg).param_groups
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)


def _loop(net):
    return _torch_adamw(net, foreach=False)


def test_default_is_flat_and_bit_identical_to_the_loop() -> None:
    net = materialize(build_model(validate_model_config(CFG), 50), "cpu", seed=0)
    opt = build_optimizer(net, validate_optim_config({}))
    assert isinstance(opt, FlatAdamW) and not opt.defaults.get("fused")
    decay, no_decay = opt.param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    default = _train(lambda n: build_optimizer(n, validate_optim_config({})))
    assert torch.equal(default, _train(_loop))


def test_fused_is_opt_in_and_close() -> None:
    fused = _train(lambda n: build_optimizer(n, validate_optim_config({"fused": True})))
    torch.testing.assert_close(fused, _train(_loop), atol=1e-5, rtol=1e-4)


def test_foreach_what_gpus_get_is_bit_identical_to_the_loop_on_the_cpu() -> None:
    assert torch.equal(_train(lambda net: _torch_adamw(net, foreach=True)), _train(_loop))


def test_a_training_step_does_not_import_lightning() -> None:
    """The model and its init import neither Lightning nor torch.distributed.tensor, and the optimizer
    does not import Lightning: a process that only trains steps, such as benchmarks/peers.py's normlab
    row, holds about 125 MB less for it (VmHWM, 2026-12-02). (torch's own Optimizer constructor
    loads torch._dynamo, and with it torch.distributed.tensor, for every implementation alike.)"""
    import subprocess
    import sys

    heavy = "sorted(m for m in ('lightning', 'torch.distributed.tensor') if m in sys.modules)"
    code = (
        "import sys, torch\n"
        "from normlab.config import validate_model_config, validate_optim_config\n"
        "from normlab.models.init import build_model, materialize\n"
        "from normlab.optimizer import build_optimizer\n"
        f"net = materialize(build_model(validate_model_config({CFG!r}), 50), 'cpu', seed=0)\n"
        f"print({heavy})\n"
        "build_optimizer(net, validate_optim_config({}))\n"
        "print('lightning' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "False"], out.stdout


def test_fused_on_sharded_parameters_is_refused_not_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under FSDP2 (DTensor parameters, stood in for here) optim.fused=true raises the one-line error
    instead of silently running the loop."""
    import normlab.optimizer as optimizer

    net = torch.nn.Linear(4, 4)
    monkeypatch.setattr(optimizer, "_has_dtensor", lambda params: True)
    with pytest.raises(ConfigError, match=r"^optim\.fused: torch's fused AdamW is not used under FSDP2"):
        build_optimizer(net, validate_optim_config({"fused": True}))
