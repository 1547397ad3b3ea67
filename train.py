"""Train a model: ``python train.py [group=option] [key=value ...]``.

Examples::

    python train.py                                         # decoder-only LM on Tiny Shakespeare
    python train.py model.norm=branchnorm model.depth=1000  # the headline run
    python train.py -m model.norm=postln,preln,deepnorm model.depth=6,48

All logic lives in :func:`normlab.run.train`; this file only wires Hydra to it.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("NORMLAB_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from normlab.cli import one_line_errors, prepare_argv  # noqa: E402
from normlab.launch import register_resolvers  # noqa: E402
from normlab.run import train  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metrics.get("val/loss")  # the number a sweeper optimises


if __name__ == "__main__":
    register_resolvers()
    sys.argv[1:] = prepare_argv(sys.argv[1:], ROOT / "configs", "train")
    main()
