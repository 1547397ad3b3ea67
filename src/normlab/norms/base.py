"""The norm-strategy interface: what a Transformer block asks, and nothing more.

A block never branches on strategy names. For each sublayer *site* (stack, layer, kind) it asks the
strategy built for its architecture (:class:`ArchSpec`):

1. ``residual(site)`` -> a module with ``forward(x, branch)`` that places the norms and combines the
   residual, e.g. Post-LN ``norm(x + f(x))``, Pre-LN ``x + f(norm(x))``, DeepNorm ``norm(a*x + f(x))``;
2. ``attention_options(site)`` / ``ffn_options(site)`` -> norms *inside* a sublayer (HybridNorm's
   per-head q/k/v norms, Sub-LN's norm before the output projection);
3. ``final_norm(stack)`` -> the norm on top of a stack, or ``None``;
4. ``init_spec(site, role)`` -> how a weight of a given role is initialised (DeepNorm's beta);
5. what changes with training (BranchNorm's schedule): a strategy that also subclasses
   :class:`normlab.progress.ProgressDriven` keeps it in buffers, set from the optimizer step;
6. ``describe()`` -> the resolved constants, for logs and ``python -m normlab.describe``.

A strategy is an ``nn.Module`` owned by the model root, so schedule buffers are checkpointed with
the weights. Residual modules keep a plain (unregistered) reference to it to read the progress.
Every residual module is a :class:`Residual`: it adds its branch term through ``gated()``, where
the model's ProRes residual warm-up (if configured) applies alpha(l, t).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Branch = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class ArchSpec:
    """Architecture facts the constants depend on: kind, encoder layers N, decoder layers M, and the
    residual dropout p (DeepScaleLM's init corrects for it)."""

    arch: str  # "decoder" | "encoder" | "encoder_decoder"
    encoder_depth: int  # N (0 for decoder-only)
    decoder_depth: int  # M (0 for encoder-only)
    dropout: float = 0.0  # residual dropout p (model.dropout), for inits that correct for it

    @property
    def stacks(self) -> tuple[str, ...]:
        return tuple(s for s, n in (("encoder", self.encoder_depth), ("decoder", self.decoder_depth)) if n)

    def depth(self, stack: str) -> int:
        return self.encoder_depth if stack == "encoder" else self.decoder_depth

    def sublayers_per_layer(self, stack: str) -> int:
        """2 (attention, FFN), or 3 for a decoder with cross-attention."""
        return 3 if (stack == "decoder" and self.arch == "encoder_decoder") else 2


@dataclass(frozen=True)
class Site:
    """One sublayer: which stack, which layer (0-based), which kind."""

    stack: str  # "encoder" | "decoder"
    layer: int
    kind: str  # "self_attn" | "cross_attn" | "ffn"


class Role(StrEnum):
    """What a weight does. Modules declare roles; init never matches parameter names."""

    Q = "q"
    K = "k"
    V = "v"
    OUT = "out"  # attention output projection W^O
    FFN_IN = "ffn_in"  # fc1 (both halves for SwiGLU)
    FFN_OUT = "ffn_out"  # fc2
    EMBEDDING = "embedding"
    HEAD = "head"  # an untied output projection / classifier
    BIAS = "bias"
    NORM_GAIN = "norm_gain"  # the gain of a norm that declares it (LNS gain_init); others reset to 1


@dataclass(frozen=True)
class InitSpec:
    """A distribution for one weight (or one role's rows of a fused weight).

    ``xavier_normal``: std = gain * sqrt(2 / (fan_in + fan_out)) over the role's own slice.
    ``normal`` / ``trunc_normal``: std as given (truncated at +-3 std).
    ``constant``: every entry equals ``value``.
    """

    dist: str = "xavier_normal"  # xavier_normal | xavier_uniform | normal | trunc_normal | zeros | constant
    gain: float = 1.0
    std: float | None = None
    value: float | None = None

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        out = torch.empty(shape)
        fan_out, fan_in = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)
        if self.dist == "zeros":
            return out.zero_()
        if self.dist == "constant":
            if self.value is None:
                raise ValueError("InitSpec(constant) needs value")
            return out.fill_(self.value)
        if self.dist == "xavier_normal":
            return out.normal_(0.0, self.gain * math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        if self.dist == "xavier_uniform":
            bound = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
            return out.uniform_(-bound, bound, generator=generator)
        if self.std is None:
            raise ValueError(f"InitSpec({self.dist}) needs std")
        if self.dist == "normal":
            return out.normal_(0.0, self.std, generator=generator)
        if self.dist == "trunc_normal":
            return nn.init.trunc_normal_(out, 0.0, self.std, -3 * self.std, 3 * self.std, generator=generator)
        raise ValueError(f"unknown init distribution {self.dist!r}")


@dataclass(frozen=True)
class AttentionOptions:
    """Norms inside attention. ``qkv_norm``: per-head norms over d_h on q, k and v (HybridNorm).
    ``sub_norm``: a norm over d on the attention output before W^O (Sub-LN / Magneto)."""

    qkv_norm: bool = False
    sub_norm: bool = False


@dataclass(frozen=True)
class FFNOptions:
    """``sub_norm``: a norm over d_ffn after the activation, before fc2 (Sub-LN / Magneto)."""

    sub_norm: bool = False


@dataclass(frozen=True)
class NoArgs:
    """Strategies without tunable arguments."""


class RMSNorm(nn.RMSNorm):
    """torch's RMSNorm (scale only, init 1); a named subclass so describe() can print it."""


def make_norm_factory(kind: str, eps: float) -> Callable[[int], nn.Module]:
    """``layernorm`` (gain + bias) or ``rmsnorm`` (gain only), both with gain 1 at init."""
    if kind == "layernorm":
        return lambda dim: nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return lambda dim: RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm layer {kind!r}")


class NormStrategy(nn.Module):
    """Base class: subclasses set ``name``, optionally ``Args`` (a dataclass), and answer the
    questions above. Defaults: no inner norms, no final norm, Xavier-normal init with gain 1,
    nothing scheduled."""

    name: ClassVar[str] = ""
    Args: ClassVar[type] = NoArgs
    norm_layer: ClassVar[str] = "layernorm"  # the norm class of the published setup (model.norm_layer=auto)

    def __init__(
        self,
        arch: ArchSpec,
        d_model: int,
        n_heads: int,
        make_norm: Callable[[int], nn.Module],
        args: Any = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.d_model = d_model
        self.n_heads = n_heads
        self.make_norm = make_norm
        self.args = args if args is not None else self.Args()

    # --- questions a block asks -------------------------------------------------------------
    def residual(self, site: Site) -> Residual:
        raise NotImplementedError

    def attention_options(self, site: Site) -> AttentionOptions:
        return AttentionOptions()

    def ffn_options(self, site: Site) -> FFNOptions:
        return FFNOptions()

    def final_norm(self, stack: str) -> nn.Module | None:
        return None

    def init_spec(self, site: Site | None, role: Role) -> InitSpec:
        """Default init: Xavier normal (gain 1) for matrices, zeros for biases. ``site`` is None
        for weights outside the blocks (embeddings, heads)."""
        if role is Role.BIAS:
            return InitSpec("zeros")
        if role is Role.NORM_GAIN:
            return InitSpec("constant", value=1.0)
        if role is Role.EMBEDDING:
            return InitSpec("normal", std=self.d_model**-0.5)
        return InitSpec("xavier_normal", gain=1.0)

    def reset_state(self) -> None:
        """Re-initialise buffers after meta-device materialisation (no-op by default)."""

    # --- reporting --------------------------------------------------------------------------
    def constants(self, stack: str) -> dict[str, Any]:
        """Resolved per-stack constants (alpha, beta, gamma, ...), for describe()."""
        return {}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "norm": self.name,
            "arch": self.arch.arch,
            "encoder_depth": self.arch.encoder_depth,
            "decoder_depth": self.arch.decoder_depth,
            "norm_class": type(self.make_norm(1)).__name__,  # what model.norm_layer resolved to
            "args": dataclasses.asdict(self.args),
        }
        for stack in self.arch.stacks:
            consts = {"final_norm": self.final_norm(stack) is not None}
            consts.update(self.constants(stack))
            out[stack] = consts
        return out

    def extra_repr(self) -> str:
        return f"name={self.name}, arch={self.arch}"


# --- residual building blocks shared by strategies ---------------------------------------------


def add_into(owned: Tensor, other: Tensor) -> Tensor:
    """``other + owned``, written into ``owned``'s memory when that memory may be reused.

    Why: a residual sum is a new block-wide tensor, and the term it consumes is freed right after;
    across a 1,000-layer forward those freed, exactly-sized holes are what glibc's aligned
    allocations cannot reuse, so the heap keeps growing while a large part of it sits free
    (``benchmarks/heap.py`` measures it; the README's levers table has the numbers). Adding in place
    allocates nothing. The sum is the same bit for bit (IEEE addition commutes; ``add_`` runs the
    same kernel as ``+``).

    ``owned`` must be a tensor the caller made in this forward and nobody else reads: a residual
    module's own ``alpha * x``, or a branch's output (branches end in a fresh tensor: a linear, the
    GELU + fc2 step, a norm, a product with a gate). Reused only when it is the sum's own shape and
    dtype (under autocast a branch's bf16 output is not: the sum is fp32), not a view (an in-place
    change would rewrite its base's history), not a leaf that requires grad, and not ``other``
    itself; otherwise ``other + owned`` as usual. Should a branch ever return a tensor its backward
    saved, autograd refuses the in-place change loudly at backward; the tests run every strategy in
    every architecture, with every residual module, against out-of-place sums bit for bit."""
    reusable = (
        owned is not other
        and owned.shape == other.shape
        and owned.dtype == other.dtype
        and not owned._is_view()
        and not (owned.is_leaf and owned.requires_grad)
    )
    return owned.add_(other) if reusable else other + owned


class Gate:
    """What multiplies a residual module's branch term: a callable returning a 0-d tensor.

    Implemented by :class:`normlab.models.warmup.LayerGate` (ProRes residual warm-up); the
    strategies never construct or inspect one."""

    def __call__(self) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Residual(nn.Module):
    """Base of every residual module a strategy returns from :meth:`NormStrategy.residual`.

    Contract: ``forward(x, branch)`` computes the sublayer once and adds its contribution to the
    stream through :meth:`gated`, *after* any branch-side norm and scale, e.g. Post-LN
    ``norm(x + gated(f(x)))``, Pre-LN ``x + gated(f(norm(x)))``, Sandwich
    ``x + gated(norm_out(f(norm_in(x))))``. That is where ProRes places its per-layer scalar
    alpha(l, t) (Table 1 of arXiv 2603.05369). Without a gate (the default) ``gated`` returns the
    term itself, so a strategy behaves exactly as before; with alpha = 1 the product is exact in
    IEEE arithmetic, so a finished warm-up is bit-identical to no warm-up. The block refuses a
    residual module that is not a ``Residual``, and ``tests/unit/test_residual_warmup.py`` checks,
    for every registered strategy, that alpha = 0 removes every branch (so no strategy can forget
    to call ``gated``).
    """

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "_gate", None)  # not a submodule: gates point into a shared module

    def attach_gate(self, gate: Gate) -> None:
        object.__setattr__(self, "_gate", gate)

    @property
    def gate(self) -> Gate | None:
        return self._gate

    def gated(self, term: Tensor) -> Tensor:
        gate = self._gate
        return term if gate is None else term * gate()

    def forward(self, x: Tensor, branch: Branch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class PostNormResidual(Residual):
    """``norm(alpha * x + f(x))``: Post-LN (alpha = 1), DeepNorm, Upscale/Foundation LN."""

    def __init__(self, norm: nn.Module, alpha: float = 1.0) -> None:
        super().__init__()
        self.norm = norm
        self.alpha = float(alpha)

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        if self.alpha == 1.0:
            return self.norm(add_into(self.gated(branch(x)), x))
        return self.norm(add_into(self.alpha * x, self.gated(branch(x))))

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.6g}"


class PreNormResidual(Residual):
    """``x + f(norm(x))``: Pre-LN."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return add_into(self.gated(branch(self.norm(x))), x)


class SandwichResidual(Residual):
    """``x + norm_out(f(norm_in(x)))``: Sandwich-LN / Peri-LN."""

    def __init__(self, norm_in: nn.Module, norm_out: nn.Module) -> None:
        super().__init__()
        self.norm_in = norm_in
        self.norm_out = norm_out

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return add_into(self.gated(self.norm_out(branch(self.norm_in(x)))), x)


class PlainResidual(Residual):
    """``x + f(x)``: no norm around the sublayer (e.g. HybridNorm attention)."""

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        return add_into(self.gated(branch(x)), x)


class NormedInputResidual(Residual):
    """``z + f(z)`` with ``z = norm(x)``: the residual starts from the normalised value
    (HybridNorm's FFN)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        z = self.norm(x)
        return add_into(self.gated(branch(z)), z)
