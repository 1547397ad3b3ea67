"""Small models for the strategy tests: one way to build them and one way to run them in each
architecture, shared by the test modules instead of a copy in each."""

from __future__ import annotations

import torch
from torch import nn

from normlab.config import ModelConfig, validate_model_config
from normlab.models.init import build_model, materialize


def tiny_config(norm: str, arch: str = "decoder", depth: int = 4, **extra) -> ModelConfig:
    """d_model 32, 4 heads, FFN 64 unless ``extra`` says otherwise."""
    values = {"arch": arch, "norm": norm, "depth": depth, "d_model": 32, "n_heads": 4, "d_ffn": 64}
    return validate_model_config({**values, **extra})


def tiny_model(
    norm: str, arch: str = "decoder", depth: int = 4, seed: int = 0, vocab: int = 50, **extra
) -> nn.Module:
    return materialize(
        build_model(tiny_config(norm, arch, depth, **extra), vocab_size=vocab), "cpu", seed=seed
    )


def forward(model: nn.Module, arch: str, ids: torch.Tensor) -> torch.Tensor:
    """The network's output for ``ids`` [B, T]: logits (decoder), hidden states (encoder), or the
    decoder's logits for the first 5 target tokens (encoder-decoder, the source is ``ids``)."""
    mask = torch.ones_like(ids, dtype=torch.bool)
    if arch == "decoder":
        return model(ids)
    if arch == "encoder":
        return model(ids, mask)
    return model(ids, mask, ids[:, :5])
