"""Typed model and optimiser configs, validated once with one-line errors.

Hydra composes plain YAML; this module turns the ``model`` and ``optim`` nodes into dataclasses and
refuses anything it does not understand (unknown key, wrong type, impossible value) with a
``ConfigError`` that names the key and the fix. Validation lives here, not in Hydra's schema
machinery, so that every mistake produces the same one-line message whether it came from a YAML
file, a command-line override or a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError

ARCHS = ("decoder", "encoder", "encoder_decoder")
ACTIVATIONS = ("gelu", "relu", "swiglu")
NORM_LAYERS = ("layernorm", "rmsnorm")
POS_ENCODINGS = ("rope", "sinusoidal", "none")
SCHEDULES = ("cosine", "inverse_sqrt", "linear", "constant")


@dataclass
class ModelConfig:
    """The Transformer core. ``depth`` counts layers (blocks), as DeepNet does.

    Decoder-only and encoder-only stacks have ``depth`` layers. An encoder-decoder splits ``depth``
    evenly (1000 -> 500 + 500) unless ``encoder_depth`` or ``decoder_depth`` is given, in which case
    the other side gets the rest.
    """

    arch: str = "decoder"  # decoder | encoder | encoder_decoder
    norm: str = "preln"  # a name in the norm registry (python -m normlab.describe lists them)
    norm_args: dict[str, Any] = field(default_factory=dict)  # validated by the strategy's Args
    depth: int = 6
    encoder_depth: int | None = None
    decoder_depth: int | None = None
    d_model: int = 64
    n_heads: int = 4
    d_ffn: int = 256
    activation: str = "gelu"  # gelu | relu | swiglu
    norm_layer: str = "layernorm"  # layernorm | rmsnorm: the class every strategy's norms use
    norm_eps: float = 1e-5
    pos_encoding: str = "rope"  # rope | sinusoidal | none
    rope_base: float = 10000.0
    dropout: float = 0.0  # on every branch output (residual dropout) and the embedding
    attn_dropout: float = 0.0
    bias: bool = True  # biases in the linear layers
    tie_embeddings: bool = True  # output projection shares the (target) token embedding
    share_embeddings: bool = False  # encoder_decoder only: source and target share one embedding
    activation_checkpointing: bool = False  # recompute each block in backward (memory for time)
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


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a decay; gradient clipping is ``trainer.gradient_clip_val``."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01  # applied to matrices only (dim >= 2), never to norms or biases
    warmup_steps: int = 100  # linear warm-up from 0; 0 disables it
    schedule: str = "cosine"  # cosine | inverse_sqrt | linear | constant (after warm-up)
    min_lr_ratio: float = 0.1  # cosine/linear floor as a fraction of lr
    fused: bool = False  # torch's fused AdamW (3x faster optimizer step at depth 1000 on CPU)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def to_dataclass(schema: type, values: Any, prefix: str) -> Any:
    """Validate ``values`` (dict/DictConfig) against dataclass ``schema``; one-line ConfigError."""
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if dataclasses.is_dataclass(values):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(f"{n}={_default_repr(f)}" for n, f in fields.items())
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key; valid keys are: {valid}")
    hints = get_type_hints(schema)
    out = {}
    for name, value in values.items():
        out[name] = _coerce(value, hints[name], f"{prefix}.{name}")
    return schema(**out)


def _default_repr(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "<required>"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Accept a value only if it already has the declared type (ints may widen to float)."""
    origin = getattr(tp, "__origin__", None)
    args = getattr(tp, "__args__", ())
    if tp is Any:
        return value
    # Optional[X] / X | None
    if args and type(None) in args and origin is not list and origin is not dict:
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(options)}")


def validate_model_config(values: Any) -> ModelConfig:
    """Turn the ``model`` node into a :class:`ModelConfig`, refusing impossible combinations."""
    if isinstance(values, ModelConfig):
        values = dataclasses.asdict(values)
    cfg: ModelConfig = to_dataclass(ModelConfig, values, "model")
    _choice("model.arch", cfg.arch, ARCHS)
    _choice("model.activation", cfg.activation, ACTIVATIONS)
    _choice("model.norm_layer", cfg.norm_layer, NORM_LAYERS)
    _choice("model.pos_encoding", cfg.pos_encoding, POS_ENCODINGS)
    for key in ("depth", "d_model", "n_heads", "d_ffn"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"model.{key}: must be >= 1, got {getattr(cfg, key)}")
    if cfg.d_model % cfg.n_heads:
        raise ConfigError(
            f"model.d_model: {cfg.d_model} is not divisible by model.n_heads={cfg.n_heads}; "
            "pick d_model = n_heads * head_dim"
        )
    if cfg.pos_encoding == "rope" and cfg.head_dim % 2:
        raise ConfigError(f"model.pos_encoding: rope needs an even head dim, got {cfg.head_dim}")
    for key in ("dropout", "attn_dropout"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"model.{key}: must be in [0, 1), got {getattr(cfg, key)}")
    if not (cfg.norm_eps > 0 and math.isfinite(cfg.norm_eps)):
        raise ConfigError(f"model.norm_eps: must be > 0, got {cfg.norm_eps}")
    _validate_depth_split(cfg)
    if cfg.share_embeddings and cfg.arch != "encoder_decoder":
        raise ConfigError(
            f"model.share_embeddings: only meaningful for arch=encoder_decoder (arch={cfg.arch}); remove it"
        )
    if cfg.init_from is not None and cfg.arch != "encoder":
        raise ConfigError(
            f"model.init_from: loads a masked-LM encoder, only for arch=encoder (arch={cfg.arch}); remove it"
        )
    from normlab.norms import registry  # late import: the registry imports this module

    registry.get_strategy_class(cfg.norm)  # unknown names fail here, listing the registered ones
    registry.validate_args(cfg.norm, cfg.norm_args)
    return cfg


def _validate_depth_split(cfg: ModelConfig) -> None:
    if cfg.arch != "encoder_decoder":
        for key in ("encoder_depth", "decoder_depth"):
            if getattr(cfg, key) is not None:
                raise ConfigError(
                    f"model.{key}: only used with arch=encoder_decoder (arch={cfg.arch}); "
                    "set model.depth instead"
                )
        return
    if cfg.encoder_depth is None and cfg.decoder_depth is None and cfg.depth % 2:
        raise ConfigError(
            f"model.depth: {cfg.depth} does not split evenly into encoder and decoder; "
            "use an even depth or set model.encoder_depth"
        )
    enc, dec = cfg.stack_depths()
    if enc < 1 or dec < 1:
        raise ConfigError(
            f"model.encoder_depth/decoder_depth: got {enc} + {dec} layers from depth={cfg.depth}; "
            "each side needs >= 1 layer"
        )
    if enc + dec != cfg.depth:
        raise ConfigError(
            f"model.depth: {cfg.depth} != encoder_depth {enc} + decoder_depth {dec}; "
            f"set model.depth={enc + dec}"
        )


def validate_optim_config(values: Any) -> OptimConfig:
    cfg: OptimConfig = to_dataclass(OptimConfig, values, "optim")
    _choice("optim.schedule", cfg.schedule, SCHEDULES)
    if cfg.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.lr}")
    if cfg.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps: must be >= 0, got {cfg.warmup_steps}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"optim.betas: expected two numbers in [0, 1), got {cfg.betas}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise ConfigError(f"optim.min_lr_ratio: must be in [0, 1], got {cfg.min_lr_ratio}")
    return cfg
