"""Evaluate a checkpoint: ``python eval.py ckpt_path=logs/.../checkpoints/last.ckpt``.

Model, tokenizer and data settings come from the checkpoint; the test metrics are printed and
written as ``metrics.json`` into this run's directory. Logic: :func:`normlab.run.evaluate`.
"""

import os
from pathlib import Path

os.environ.setdefault("NORMLAB_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from normlab.distributed import register_resolvers  # noqa: E402
from normlab.run import evaluate  # noqa: E402
from normlab.utils import one_line_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    register_resolvers()
    main()
