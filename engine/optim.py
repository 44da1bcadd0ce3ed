"""AdamW parameter groups as the paper trains: weight decay on weight matrices only.

No decay on biases and norms (1-D parameters) nor on learned tokens ([CLS], [MASK], MBT bottlenecks).
"""
from __future__ import annotations

from torch import nn

NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "bottleneck")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
