"""Numeric faults: an optimizer step whose loss or gradient is not finite is skipped, on every rank at once.

DeepSpeed's ZeRO 1/2 optimizer skips a step with non-finite gradients by itself (`check_deepspeed` refuses configs
where it would not); `loss_to_backward` turns a non-finite loss into NaN gradients so that its step is skipped too.
`StepGuard` records each skipped step as a "skipped_step" event in metrics.jsonl and raises `NonFiniteStop`
(exit status 3) after train.max_bad_steps of them in a row. Details: docs/training.md#numeric-faults-skipped-steps.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config import ConfigError
from .metrics import Metrics


class NonFiniteStop(RuntimeError):
    """train.max_bad_steps optimizer steps in a row were skipped: the run stops, its last checkpoint intact."""


def check_deepspeed(ds_config: dict, source: str) -> None:
    """Refuses a `deepspeed` section under which DeepSpeed would apply a step with non-finite gradients."""
    zero = ds_config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage not in (1, 2):
        raise ConfigError(
            f"{source}: deepspeed.zero_optimization.stage = {json.dumps(stage)}: must be 1 or 2 "
            "(ZeRO stage 1 and 2 skip an optimizer step whose gradients are not finite)"
        )
    bf16, fp16 = ds_config.get("bf16", {}).get("enabled", False), ds_config.get("fp16", {}).get("enabled", False)
    if bf16 and ds_config["bf16"].get("check_grad_overflow", True) is False:
        raise ConfigError(
            f"{source}: deepspeed.bf16.check_grad_overflow = false: must stay true "
            "(in bf16 it is how DeepSpeed finds non-finite gradients)"
        )
    if not (bf16 or fp16) and zero.get("compute_grad_norm", True) is False:
        raise ConfigError(
            f"{source}: deepspeed.zero_optimization.compute_grad_norm = false: must stay true "
            "(in fp32 the gradient norm is how DeepSpeed finds non-finite gradients)"
        )


def loss_to_backward(loss: torch.Tensor) -> torch.Tensor:
    """`loss` times 1 when it is finite, times NaN when not: a non-finite loss always gives NaN gradients."""
    return loss * torch.where(torch.isfinite(loss), 1.0, math.nan).to(loss.dtype)


class StepGuard:
    """One rank's view of the current optimizer step: its micro-batches' loss parts, and the skipped steps in a row."""

    def __init__(self, max_bad_steps: int, metrics: Metrics, rank: int):
        self.max_bad_steps, self.metrics, self.rank = max_bad_steps, metrics, rank
        self.window: list[tuple[dict[str, float], int]] = []  # (loss parts, samples) per micro-batch of the step
        self.in_a_row = 0

    def add(self, losses: dict[str, torch.Tensor], samples: int) -> None:
        self.window.append(({name: float(value.detach()) for name, value in losses.items()}, samples))

    def close_step(self, applied: bool, step: int, epoch: float, skipped_steps: int) -> None:
        """After DeepSpeed's step at an accumulation boundary (`applied`: engine.was_step_applied()): the step's
        loss parts to the metrics, or, for a skipped step, its record. Raises NonFiniteStop at train.max_bad_steps
        skipped steps in a row."""
        window, self.window = self.window, []
        if applied:
            if not all(math.isfinite(parts["loss"]) for parts, _ in window):
                raise RuntimeError(f"rank {self.rank}: DeepSpeed applied step {step} although its loss is not finite")
            self.in_a_row = 0
            for parts, samples in window:
                self.metrics.add(parts, samples)
            return
        self.in_a_row += 1
        self.record(window, step, epoch, skipped_steps)
        if self.in_a_row >= self.max_bad_steps:
            raise NonFiniteStop(
                f"{self.in_a_row} optimizer steps in a row skipped for a non-finite loss or gradient "
                f"(train.max_bad_steps = {self.max_bad_steps}), the last at step {step}: stopping "
                f"without a checkpoint, checkpoints/latest names the last good state "
                f'(the skipped steps are in {self.metrics.path}, "event": "skipped_step")'
            )

    def record(self, window: list[tuple[dict, int]], step: int, epoch: float, skipped_steps: int) -> None:
        """Every rank's loss parts of the skipped step -> stderr (rank 0) and an event line of metrics.jsonl."""
        means = {name: sum(parts[name] for parts, _ in window) / len(window) for name in window[0][0]}
        per_rank: list = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, means)
        bad = [rank for rank, parts in enumerate(per_rank) if not math.isfinite(parts["loss"])]
        reason = f"non-finite loss on rank {', '.join(map(str, bad))}" if bad else "non-finite gradient"
        self.metrics.event(
            "skipped_step",
            step=step,
            epoch=epoch,
            reason=reason,
            skipped_steps=skipped_steps,
            in_a_row=self.in_a_row,
            losses=[{name: json_number(value) for name, value in parts.items()} for parts in per_rank],
        )
        if self.rank == 0:
            parts_text = "; ".join(
                f"rank {rank}: " + ", ".join(f"{name} {value:.4g}" for name, value in parts.items())
                for rank, parts in enumerate(per_rank)
            )
            tqdm.write(
                f"step {step} skipped ({reason}; {skipped_steps} skipped so far, {self.in_a_row} in a row): "
                f"{parts_text}",
                file=sys.stderr,
            )  # below the progress bar, not inside it


def json_number(value: float) -> float | str:
    """Finite floats as they are; NaN and infinities as "nan", "inf", "-inf" (JSON has no such numbers)."""
    return value if math.isfinite(value) else str(value)
