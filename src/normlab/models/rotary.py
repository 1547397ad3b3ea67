"""Position encodings without parameters: rotary (RoPE, Su et al. 2021) and sinusoidal.

Both are computed from positions on the fly (no buffers), so a model built on the meta device needs
nothing re-initialised after materialisation, and incremental decoding only passes an offset.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rotary_cos_sin(
    positions: Tensor, head_dim: int, base: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin tables [T, d_h] for integer ``positions`` [T] (half-split rotation layout)."""
    inv_freq = 1.0 / (
        base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, T, d_h] by the position angles; an orthogonal map per pair of dims."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def sinusoidal(positions: Tensor, d_model: int, dtype: torch.dtype) -> Tensor:
    """Vaswani et al. 2017 sinusoidal table [T, d] for integer ``positions`` [T]."""
    half = d_model // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.to(torch.float32)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if d_model % 2:
        table = torch.cat([table, torch.zeros_like(table[:, :1])], dim=-1)
    return table.to(dtype)
