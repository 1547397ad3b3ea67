"""Typed model and optimiser configs, validated once with one-line errors.

Hydra composes plain YAML; :func:`validate_model_config` / :func:`validate_optim_config` turn the
``model`` and ``optim`` nodes into the dataclasses below (through the generic
:mod:`normlab.typed_config`) and refuse anything they do not understand (unknown key, wrong type,
a value outside a ``Literal``, an impossible combination) with a ``ConfigError`` that names the key
and the fix. The same message comes out whether the mistake was in a YAML file, a command-line
override or a checkpoint. The dataclass defaults are the one source of the defaults; the YAML files
repeat them for readability and ``tests/unit/test_config_defaults.py`` fails when they drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from normlab.errors import ConfigError
from normlab.models.warmup import WarmupSchedule
from normlab.norms import registry
from normlab.typed_config import plain, to_dataclass

Arch = Literal["decoder", "encoder", "encoder_decoder"]
Activation = Literal["gelu", "relu", "swiglu"]
NormLayer = Literal["auto", "layernorm", "rmsnorm"]
PosEncoding = Literal["rope", "sinusoidal", "none"]
LRSchedule = Literal["cosine", "inverse_sqrt", "linear", "constant"]

# Field metadata: which ModelConfig fields decide the function a network computes (so a checkpoint
# can only be loaded into a network whose values for these agree; see tasks/init_from.py).
ARCHITECTURE = {"architecture": True}


@dataclass(frozen=True)
class ResidualWarmupConfig:
    """``model.residual_warmup``: ProRes residual warm-up (normlab.models.warmup), on any strategy."""

    schedule: WarmupSchedule = WarmupSchedule.LINEAR  # linear | equal | stagewise-0 | ... (12 in all)
    T: int = 1000  # steps: layer l of linear ends its warm-up at T*l (equal: every layer at T)

    def validate(self) -> None:
        if self.T < 1:
            raise ConfigError(f"model.residual_warmup.T: must be >= 1 optimizer step, got {self.T}")


@dataclass
class ModelConfig:
    """The Transformer core. ``depth`` counts layers (blocks), as DeepNet does.

    Decoder-only and encoder-only stacks have ``depth`` layers. An encoder-decoder splits ``depth``
    evenly (1000 -> 500 + 500) unless ``encoder_depth`` or ``decoder_depth`` is given, in which case
    the other side gets the rest.
    """

    arch: Arch = field(default="decoder", metadata=ARCHITECTURE)
    norm: str = field(default="preln", metadata=ARCHITECTURE)  # a name in the norm registry
    norm_args: dict[str, Any] = field(default_factory=dict, metadata=ARCHITECTURE)  # strategy's Args
    depth: int = field(default=6, metadata=ARCHITECTURE)
    encoder_depth: int | None = field(default=None, metadata=ARCHITECTURE)
    decoder_depth: int | None = field(default=None, metadata=ARCHITECTURE)
    d_model: int = field(default=64, metadata=ARCHITECTURE)
    n_heads: int = field(default=4, metadata=ARCHITECTURE)
    d_ffn: int = field(default=256, metadata=ARCHITECTURE)
    activation: Activation = field(default="gelu", metadata=ARCHITECTURE)
    norm_layer: NormLayer = field(default="auto", metadata=ARCHITECTURE)  # every norm; auto: the paper's
    norm_eps: float = field(default=1e-5, metadata=ARCHITECTURE)
    pos_encoding: PosEncoding = field(default="rope", metadata=ARCHITECTURE)
    rope_base: float = field(default=10000.0, metadata=ARCHITECTURE)
    dropout: float = 0.0  # on every branch output (residual dropout) and the embedding
    attn_dropout: float = 0.0
    bias: bool = field(default=True, metadata=ARCHITECTURE)  # biases in the linear layers
    tie_embeddings: bool = field(default=True, metadata=ARCHITECTURE)  # head shares the embedding
    share_embeddings: bool = field(default=False, metadata=ARCHITECTURE)  # enc-dec: one embedding
    residual_warmup: ResidualWarmupConfig | None = None  # ProRes warm-up, e.g. {schedule: linear, T: 1000}
    init_from: str | None = None  # arch=encoder: start from this MLM checkpoint's encoder

    def stack_depths(self) -> tuple[int, int]:
        """(encoder layers N, decoder layers M); 0 for the side an architecture does not have."""
        if self.arch == "decoder":
            return 0, self.depth
        if self.arch == "encoder":
            return self.depth, 0
        enc, dec = self.encoder_depth, self.decoder_depth
        if enc is None and dec is None:
            return self.depth // 2, self.depth // 2
        if enc is None:
            return self.depth - dec, dec
        if dec is None:
            return enc, self.depth - enc
        return enc, dec

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def validate(self) -> None:
        """Cross-field and range checks (types and choices are checked by typed_config)."""
        for key in ("depth", "d_model", "n_heads", "d_ffn"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be >= 1, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model: {self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                "pick d_model = n_heads * head_dim"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.pos_encoding: rope needs an even head dim, got {self.head_dim}")
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}: must be in [0, 1), got {getattr(self, key)}")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ConfigError(f"model.norm_eps: must be > 0, got {self.norm_eps}")
        self._validate_depth_split()
        if self.share_embeddings and self.arch != "encoder_decoder":
            raise ConfigError(
                f"model.share_embeddings: only meaningful for arch=encoder_decoder (arch={self.arch}); "
                "remove it"
            )
        if self.init_from is not None and self.arch != "encoder":
            raise ConfigError(
                f"model.init_from: loads a masked-LM encoder, only for arch=encoder (arch={self.arch}); "
                "remove it"
            )
        registry.validate_args(self.norm, self.norm_args)  # unknown names list the registered ones
        if self.norm_layer == "auto":  # resolved here, so checkpoints and logs name the class used
            self.norm_layer = registry.get_strategy_class(self.norm).norm_layer

    def _validate_depth_split(self) -> None:
        if self.arch != "encoder_decoder":
            for key in ("encoder_depth", "decoder_depth"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"model.{key}: only used with arch=encoder_decoder (arch={self.arch}); "
                        "set model.depth instead"
                    )
            return
        if self.encoder_depth is None and self.decoder_depth is None and self.depth % 2:
            raise ConfigError(
                f"model.depth: {self.depth} does not split evenly into encoder and decoder; "
                "use an even depth or set model.encoder_depth"
            )
        enc, dec = self.stack_depths()
        if enc < 1 or dec < 1:
            raise ConfigError(
                f"model.encoder_depth/decoder_depth: got {enc} + {dec} layers from depth={self.depth}; "
                "each side needs >= 1 layer"
            )
        if enc + dec != self.depth:
            raise ConfigError(
                f"model.depth: {self.depth} != encoder_depth {enc} + decoder_depth {dec}; "
                f"set model.depth={enc + dec}"
            )


def architecture_keys() -> tuple[str, ...]:
    """ModelConfig fields that decide the network's parameters or the function it computes."""
    return tuple(f.name for f in fields(ModelConfig) if f.metadata.get("architecture"))


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a decay; gradient clipping is ``trainer.gradient_clip_val``."""

    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01  # applied to matrices only (dim >= 2), never to norms or biases
    warmup_steps: int = 100  # linear warm-up from 0; 0 disables it
    schedule: LRSchedule = "cosine"  # after warm-up
    min_lr_ratio: float = 0.1  # cosine/linear floor as a fraction of lr
    fused: bool = False  # torch's fused AdamW: the fastest step, not bit-identical to the loop (opt-in)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")


@dataclass(frozen=True)
class ComputeConfig:
    """``compute``: how a run uses the machine. None of it changes what the model computes (up to
    floating-point reassociation with ``compile_blocks``), so it is not saved with the model."""

    activation_checkpointing: Literal["none", "full", "selective"] = "none"  # recompute in backward
    compile_blocks: bool = False  # torch.compile each block once; identical blocks share the code
    threads: int | None = None  # torch intra-op threads (null: torch's default, all cores)
    flush_denormal: bool = True  # CPU: subnormal floats as zero (deep Post-LN backward underflows)
    freeze_gc: bool = True  # gc.freeze() what is alive at train start: full collections skip the model

    def validate(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"compute.threads: must be >= 1 (or null for all cores), got {self.threads}")


# keys that moved out of a group, with where they went (a one-line hint instead of "unknown key")
MOVED_KEYS = {"model.activation_checkpointing": "compute.activation_checkpointing (none | full | selective)"}


def validate_model_config(values: Any) -> ModelConfig:
    """Turn the ``model`` node into a :class:`ModelConfig`, refusing impossible combinations."""
    values = plain(values)
    for key in values or {}:
        if f"model.{key}" in MOVED_KEYS:
            raise ConfigError(f"model.{key}: moved to {MOVED_KEYS['model.' + key]}; set it there")
    return to_dataclass(ModelConfig, values, "model")


def validate_optim_config(values: Any) -> OptimConfig:
    return to_dataclass(OptimConfig, plain(values), "optim")


def validate_compute_config(values: Any) -> ComputeConfig:
    return to_dataclass(ComputeConfig, plain(values), "compute")
