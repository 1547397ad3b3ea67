"""One place for each default: the dataclass. The YAML files repeat the defaults so that a user
reading them sees the values; this test fails the moment a YAML value and the code's default
disagree, or a YAML key has no field (or a field no YAML key), for every typed config group."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from omegaconf import OmegaConf

from normlab.callbacks.stability import StabilityMonitor
from normlab.config import ComputeConfig, ModelConfig, OptimConfig
from normlab.data.lm import LMDataConfig
from normlab.data.mlm import MLMDataConfig
from normlab.data.pairs import PairsDataConfig
from normlab.data.translation import TranslationDataConfig
from normlab.tasks.base import NoTaskArgs
from normlab.tasks.classify import ClassifyConfig
from normlab.tasks.translate import TranslateConfig
from normlab.trainer_config import FSDPArgs
from normlab.typed_config import defaults_of
from tests.conftest import CONFIG_DIR

# (YAML file, node inside it or None, the dataclass that types it)
TYPED = [
    ("model/decoder.yaml", None, ModelConfig),
    ("optim/adamw.yaml", None, OptimConfig),
    ("compute/default.yaml", None, ComputeConfig),
    ("data/tinyshakespeare.yaml", None, LMDataConfig),
    ("data/mlm_corpus.yaml", None, MLMDataConfig),
    ("data/mrpc.yaml", None, PairsDataConfig),
    ("data/multi30k.yaml", None, TranslationDataConfig),
    ("task/translate.yaml", None, TranslateConfig),
    ("task/classify.yaml", None, ClassifyConfig),
    ("task/lm.yaml", None, NoTaskArgs),
    ("task/mlm.yaml", None, NoTaskArgs),
    ("trainer/fsdp.yaml", "strategy", FSDPArgs),
]
# keys whose YAML value is a run-time link, not a default (paths, the run seed, a checkpoint)
LINKED = {"data_dir", "seed", "tokenizer_from"}
OPTIONAL_IN_YAML = {"tokenizer_json"}  # set by eval.py from a checkpoint, never written by hand


def _yaml(path: str, node: str | None) -> dict[str, Any]:
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / path), resolve=False)
    values = values.get(node, {}) if node else values
    return {k: v for k, v in values.items() if k not in ("defaults", "_target_")}


@pytest.mark.parametrize(("path", "node", "schema"), TYPED, ids=[t[0] for t in TYPED])
def test_yaml_repeats_the_code_defaults(path: str, node: str | None, schema: type) -> None:
    yaml, code = _yaml(path, node), defaults_of(schema)
    assert set(yaml) - set(code) == set(), f"{path}: keys without a field"
    assert set(code) - set(yaml) - OPTIONAL_IN_YAML == set(), f"{path}: fields the YAML does not show"
    for key, value in yaml.items():
        if key in LINKED and isinstance(value, str) and value.startswith("${"):
            continue
        expected = code[key]
        if isinstance(expected, tuple):
            expected = list(expected)
        assert value == expected, f"{path}: {key} = {value!r} in YAML but {expected!r} in {schema.__name__}"


def test_stability_monitor_yaml_matches_its_signature() -> None:
    yaml = _yaml("callbacks/stability_monitor.yaml", "stability_monitor")
    params = inspect.signature(StabilityMonitor.__init__).parameters
    defaults = {n: list(p.default) if isinstance(p.default, tuple) else p.default for n, p in params.items()}
    defaults.pop("self")
    assert set(yaml) == set(defaults)
    assert all(yaml[k] == defaults[k] for k in yaml), (yaml, defaults)


def test_every_field_has_a_comment_in_the_model_yaml() -> None:
    """Every key of model/decoder.yaml that is not self-explanatory carries a comment."""
    text = (CONFIG_DIR / "model/decoder.yaml").read_text()
    plain_names = {"d_model", "n_heads", "d_ffn", "rope_base", "norm_eps", "bias", "attn_dropout"}
    for field in dataclasses.fields(ModelConfig):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"{field.name}:"))
        assert field.name in plain_names or "#" in line, line
