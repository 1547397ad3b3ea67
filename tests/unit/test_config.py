"""Model/optimizer config validation: unknown keys, wrong types and impossible values fail with
one line that names the key; every config group option composes."""

from __future__ import annotations

import pytest

from normlab.config import validate_model_config, validate_optim_config
from normlab.errors import ConfigError
from normlab.norms import registered_names
from tests.conftest import CONFIG_DIR


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"deepnrom": True}, "model.deepnrom"),
        ({"depth": "abc"}, "model.depth"),
        ({"depth": 0}, "model.depth"),
        ({"d_model": 66, "n_heads": 4}, "model.d_model"),
        ({"norm": "nosuchnorm"}, "model.norm"),
        ({"activation": "tanh"}, "model.activation"),
        ({"dropout": 1.5}, "model.dropout"),
        ({"arch": "encoder_decoder", "depth": 7}, "model.depth"),
        ({"arch": "encoder_decoder", "depth": 8, "encoder_depth": 8}, "model.encoder_depth"),
        ({"arch": "decoder", "encoder_depth": 3}, "model.encoder_depth"),
        ({"arch": "decoder", "share_embeddings": True}, "model.share_embeddings"),
        ({"norm": "deepnorm", "norm_args": {"alhpa": 2.0}}, "model.norm_args.alhpa"),
        ({"norm": "deepnorm", "norm_args": {"alpha": "big"}}, "model.norm_args.alpha"),
        ({"norm": "preln", "norm_args": {"alpha": 1.0}}, "model.norm_args.alpha"),
    ],
)
def test_bad_model_config_names_the_key_in_one_line(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_model_config(values)
    message = str(err.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_unknown_norm_lists_every_registered_name() -> None:
    with pytest.raises(ConfigError) as err:
        validate_model_config({"norm": "brachnorm"})
    for name in registered_names():
        assert name in str(err.value)


def test_encoder_decoder_depth_split() -> None:
    assert validate_model_config({"arch": "encoder_decoder", "depth": 1000}).stack_depths() == (500, 500)
    cfg = validate_model_config({"arch": "encoder_decoder", "depth": 18, "encoder_depth": 12})
    assert cfg.stack_depths() == (12, 6)
    cfg = validate_model_config({"arch": "encoder_decoder", "depth": 9, "decoder_depth": 3})
    assert cfg.stack_depths() == (6, 3)
    assert validate_model_config({"arch": "decoder", "depth": 7}).stack_depths() == (0, 7)
    assert validate_model_config({"arch": "encoder", "depth": 7}).stack_depths() == (7, 0)


def test_ints_widen_to_float_but_not_bool_to_int() -> None:
    assert validate_model_config({"norm_eps": 1}).norm_eps == 1.0
    with pytest.raises(ConfigError, match="model.depth"):
        validate_model_config({"depth": True})


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"lr": -1.0}, "optim.lr"),
        ({"schedule": "exp"}, "optim.schedule"),
        ({"betas": [0.9]}, "optim.betas"),
        ({"lr_max": 1.0}, "optim.lr_max"),
    ],
)
def test_bad_optim_config(values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_optim_config(values)
    assert str(err.value).startswith(key)


def _group_options() -> list[tuple[str, str]]:
    skip = {"hydra", "local"}
    out = []
    for group in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in skip):
        for option in sorted(group.glob("*.yaml")):
            out.append((group.name, option.stem))
    return out


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_every_group_option_composes(group: str, option: str, make_cfg) -> None:
    """Each YAML in each group composes with train.yaml and yields a valid model/optim config."""
    overrides = [f"{group}={option}"]
    cfg = make_cfg("train", overrides)
    validate_model_config(cfg.model)
    validate_optim_config(cfg.optim)
    assert cfg.trainer._target_.endswith("Trainer")
    assert "_target_" in cfg.data and "_target_" in cfg.task


def test_eval_config_requires_a_checkpoint(make_cfg) -> None:
    from omegaconf import OmegaConf

    assert OmegaConf.is_missing(make_cfg("eval", []), "ckpt_path")


def test_a_moved_key_says_where_it_went() -> None:
    with pytest.raises(
        ConfigError, match=r"^model\.activation_checkpointing: moved to compute\.activation_checkpointing"
    ):
        validate_model_config({"activation_checkpointing": True})


@pytest.mark.parametrize("name", registered_names())
def test_norm_layer_auto_is_the_strategys_published_class(name: str) -> None:
    """model.norm_layer=auto (the default) resolves, when the config is validated, to the class the
    strategy declares for its paper's setup; an explicit class is kept."""
    from normlab.norms.registry import get_strategy_class

    assert validate_model_config({"norm": name}).norm_layer == get_strategy_class(name).norm_layer
    assert validate_model_config({"norm": name, "norm_layer": "layernorm"}).norm_layer == "layernorm"


def test_the_strategies_whose_code_uses_rmsnorm() -> None:
    """RMSNorm where the released code uses it (HybridNorm's OLMo config; Mix-LN, LNS and the MixLN
    repository's sandwich: LLaMA's LlamaRMSNorm); LayerNorm for the others, e.g. DeepNet, Admin."""
    rms = {n for n in registered_names() if validate_model_config({"norm": n}).norm_layer == "rmsnorm"}
    assert rms == {"hybridnorm", "hybridnorm_star", "mixln", "lns", "sandwich"}


def test_the_description_names_the_norm_class() -> None:
    """What train.py prints at start, eval.py for a checkpoint and python -m normlab.describe: the
    class every norm of the model is."""
    from normlab.description import format_description, model_description

    text = format_description(model_description(validate_model_config({"norm": "hybridnorm"})))
    assert text.splitlines()[0].endswith("norm class: RMSNorm")
    text = format_description(model_description(validate_model_config({"norm": "deepnorm"})))
    assert text.splitlines()[0].endswith("norm class: LayerNorm")
