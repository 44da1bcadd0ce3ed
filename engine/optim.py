"""AdamW parameter groups as the paper trains: weight decay on weight matrices only, optional lr factors.

No decay on biases and norms (1-D parameters) nor on learned tokens ([CLS], [MASK], MBT bottlenecks).
`lr_scales` maps a parameter-name prefix to a factor on the scheduled lr (fine-tuning audio+video trains
the video encoder at 0.5x); `schedule.set_lr` applies it through each group's "lr_scale".
"""

from __future__ import annotations

from torch import nn

NO_DECAY_SUFFIXES = ("cls_token", "mask_token", "bottleneck")


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    groups: dict[tuple[bool, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES))
        scale = next((s for prefix, s in (lr_scales or {}).items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, scale), []).append(param)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in sorted(groups.items())
    ]
