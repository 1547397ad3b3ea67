"""normlab: a Lightning + Hydra template for extremely deep Transformers with pluggable norm strategies."""

__version__ = "0.1.0"
