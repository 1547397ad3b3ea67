"""Print a model's resolved constants per stack, to check them against the paper.

    python -m normlab.describe model.norm=deepnorm model.depth=1000
    python -m normlab.describe model.norm=deepnorm model.arch=encoder_decoder model.depth=24
    python -m normlab.describe model.norm=preln model.residual_warmup.schedule=linear
    python -m normlab.describe --list
    python -m normlab.describe --json model.norm=deepnorm

Takes the same ``model.*`` overrides as ``train.py`` (and ``experiment=...``); prints the same block
that training prints at start and logs to TensorBoard.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from normlab.cli import open_node_overrides
from normlab.config import validate_model_config
from normlab.description import format_description, model_description
from normlab.errors import ConfigError
from normlab.launch import register_resolvers
from normlab.norms.registry import registered_names

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def describe(overrides: list[str]) -> dict:
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=open_node_overrides(overrides))
    except Exception as err:  # noqa: BLE001 - Hydra raises several types; the user needs one line
        raise ConfigError(" ".join(str(err).split())[:400]) from None
    finally:
        GlobalHydra.instance().clear()
    return model_description(validate_model_config(cfg.model))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(__doc__.strip())
        return 0
    if "--list" in args:
        print("\n".join(registered_names()))
        return 0
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    try:
        description = describe(args)
    except ConfigError as err:
        sys.stderr.write(f"normlab: error: {err}\n")
        return 2
    print(json.dumps(description, indent=2) if as_json else format_description(description))
    return 0


if __name__ == "__main__":
    sys.exit(main())
