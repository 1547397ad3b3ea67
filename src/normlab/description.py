"""What a model computes, as numbers a researcher can check against the papers.

One dictionary per model: the norm strategy's resolved constants per stack (alpha, beta, gamma,
the schedule and its current value; :meth:`normlab.norms.base.NormStrategy.describe`) and, when
the ProRes residual warm-up is on, its schedule, length and current alpha(l, t) at a few layers.
Training prints it at start and logs it to TensorBoard; ``python -m normlab.describe`` prints it
without training; eval.py prints it for a checkpoint.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from normlab.models.transformer import build_residual_warmup
from normlab.norms.base import NormStrategy
from normlab.norms.registry import build_strategy


def model_description(model_cfg: Any) -> dict[str, Any]:
    """The description of the model ``model_cfg`` (a validated ModelConfig) builds, at step 0."""
    strategy = build_strategy(model_cfg)
    warmup = build_residual_warmup(model_cfg, strategy.arch)
    if warmup is not None:
        warmup.reset_state()
    return describe_parts(strategy, warmup)


def network_description(net: nn.Module) -> dict[str, Any]:
    """The description of a built network, with its schedules at their current step."""
    return describe_parts(net.norm_strategy, getattr(net, "residual_warmup", None))


def describe_parts(strategy: NormStrategy, warmup: Any) -> dict[str, Any]:
    out = strategy.describe()
    if warmup is not None:
        out["residual_warmup"] = warmup.describe()
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_description(description: dict[str, Any]) -> str:
    """The description as an aligned block, one stack per section."""
    lines = [
        f"norm strategy: {description['norm']}  (arch={description['arch']}, "
        f"N={description['encoder_depth']}, M={description['decoder_depth']})"
        + (f"  norm class: {description['norm_class']}" if "norm_class" in description else "")
    ]
    if description.get("args"):
        lines.append("  args: " + ", ".join(f"{k}={_fmt(v)}" for k, v in description["args"].items()))
    for stack in ("encoder", "decoder"):
        if stack in description:
            items = description[stack]
            lines.append(f"  {stack}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in items.items()))
    warmup = description.get("residual_warmup")
    if warmup:
        head = {k: v for k, v in warmup.items() if k not in ("encoder", "decoder")}
        lines.append("residual warm-up (ProRes): " + ", ".join(f"{k}={_fmt(v)}" for k, v in head.items()))
        for stack in ("encoder", "decoder"):
            if stack in warmup:
                items = warmup[stack]
                lines.append(f"  {stack}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in items.items()))
    return "\n".join(lines)
