"""``compute.compile_blocks``: ``torch.compile`` each Transformer block once.

Why per block: the blocks of a stack are identical modules, and torch.compile treats a module's
parameters as inputs (``inline_inbuilt_nn_modules``), so the graph compiled for the first block is
reused by all the others; the cold compile costs about the same at depth 100 and 1000. Compiling the
whole model instead retraces every block (minutes at depth 100). The compiled kernels fuse pointwise
ops, so the numbers change in the last bits: it is opt-in, and the first-step losses are tested
against the plain path within a tolerance (tests/unit/test_compile.py).
"""

from __future__ import annotations

from torch import nn

from normlab.models.transformer import transformer_stacks


def compile_blocks(net: nn.Module) -> nn.Module:
    """Compile every block of every stack of ``net`` in place; returns ``net``."""
    for stack in transformer_stacks(net):
        for block in stack.layers:
            block.compile(dynamic=False)
    return net
