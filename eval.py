"""Evaluate a checkpoint: ``python eval.py ckpt_path=logs/.../checkpoints/last.ckpt``.

Model, tokenizer and data settings come from the checkpoint; the test metrics are printed and
written as ``metrics.json`` into this run's directory. Logic: :func:`normlab.run.evaluate`.
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
from normlab.run import evaluate  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    register_resolvers()
    sys.argv[1:] = prepare_argv(sys.argv[1:], ROOT / "configs", "eval")
    main()
