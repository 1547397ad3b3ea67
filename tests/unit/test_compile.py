"""``compute.compile_blocks`` (opt-in): the first training steps' losses equal the plain path's within
a stated tolerance (compiled kernels fuse pointwise ops, so the last bits differ). The one compile
test of the suite, on a 3-block model (the cold compile is seconds; identical blocks share it)."""

from __future__ import annotations

import pytest
import torch

from normlab.compile import compile_blocks
from normlab.config import validate_model_config, validate_optim_config
from normlab.models.init import build_model, materialize
from normlab.optimizer import build_optimizer

pytestmark = pytest.mark.slow

CFG = {"norm": "deepnorm", "depth": 3, "d_model": 32, "n_heads": 4, "d_ffn": 64}
TOLERANCE = 1e-4  # absolute, on a cross-entropy of about log(50) = 3.9


def _losses(compiled: bool) -> list[float]:
    net = materialize(build_model(validate_model_config(CFG), 50), "cpu", seed=0)
    if compiled:
        compile_blocks(net)
    opt = build_optimizer(net, validate_optim_config({}))
    g = torch.Generator().manual_seed(3)
    out = []
    for _ in range(3):
        ids = torch.randint(0, 50, (2, 9), generator=g)
        loss = torch.nn.functional.cross_entropy(net(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(loss))
    return out


def test_compiled_blocks_train_like_the_plain_path() -> None:
    plain, compiled = _losses(False), _losses(True)
    assert all(abs(a - b) <= TOLERANCE for a, b in zip(plain, compiled, strict=True)), (plain, compiled)
