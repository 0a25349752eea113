"""Stage 05, pre-training: the training loop, checkpoints with exact resume, and the parallel layouts.

    from tokenmill.pretrain import PretrainConfig
    from tokenmill.pretrain.stage import pretrain_stage   # imports torch

See docs/pretrain.md.
"""

from tokenmill.pretrain.config import PretrainConfig

__all__ = ["PretrainConfig"]
