"""The learning-rate schedule of the paper (Table 10, MAE's recipe), as a pure function of progress.

lr_eff = lr_base * global_batch / 256; linear warm-up from 0 over `warmup_epochs`, then a
half-cycle cosine from lr_eff down to `min_lr` at the end of `epochs`. Progress is measured in
epochs as a float (optimizer steps done / steps per epoch), so the lr changes every iteration and
depends on nothing but the step: resuming from a checkpoint gives the same lr without any state.
"""

from __future__ import annotations

import math

from ..config import TrainConfig


def lr_at(epoch: float, train: TrainConfig) -> float:
    if epoch < train.warmup_epochs:
        return train.lr * epoch / train.warmup_epochs
    progress = (epoch - train.warmup_epochs) / max(train.epochs - train.warmup_epochs, 1e-12)
    return train.min_lr + (train.lr - train.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
