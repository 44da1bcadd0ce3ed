"""Fault injection for the reliability tests: poison a loss, or SIGKILL this process at a named point.

MAVIL_INJECT holds faults separated by ';', each `kind:key=value:key=value` (kinds nan_loss, kill, term,
term_launcher, disk_full; points backward, checkpoint_files, checkpoint_written, latest, export), e.g.
MAVIL_INJECT="nan_loss:step=3:rank=1;kill:point=latest:step=5". Without the variable every hook returns at once.
A malformed value raises ValueError naming the variable and the fault. The kinds and points, and which step a point
belongs to: docs/training.md#fault-injection-for-the-reliability-tests.
"""

from __future__ import annotations

import functools
import math
import os
import signal

import torch

VARIABLE = "MAVIL_INJECT"
POINTS = ("backward", "checkpoint_files", "checkpoint_written", "latest", "export")
KINDS = {
    "nan_loss": ("step", "rank"),
    "kill": ("point", "step", "rank"),
    "term": ("step", "rank"),
    "term_launcher": ("step", "rank"),
    "disk_full": ("step",),
}


@functools.cache
def faults() -> tuple[dict, ...]:
    """The parsed MAVIL_INJECT: one dict per fault, {"kind", "step", "rank"[, "point"]}."""
    text = os.environ.get(VARIABLE, "").strip()
    return tuple(parse(item) for item in text.split(";") if item.strip())


def parse(item: str) -> dict:
    kind, *pairs = item.strip().split(":")
    if kind not in KINDS:
        raise ValueError(f"{VARIABLE}: fault '{item}': unknown kind '{kind}' (known: {', '.join(KINDS)})")
    fault = {"kind": kind, "rank": 0}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in KINDS[kind]:
            raise ValueError(f"{VARIABLE}: fault '{item}': expected {', '.join(f'{k}=...' for k in KINDS[kind])}")
        if key != "point" and not value.isdigit():
            raise ValueError(f"{VARIABLE}: fault '{item}': {key} must be a whole number, got '{value}'")
        fault[key] = value if key == "point" else int(value)
    if "step" not in fault or (kind == "kill" and fault.get("point") not in POINTS):
        raise ValueError(
            f"{VARIABLE}: fault '{item}': needs step=S"
            + (f" and point=one of {', '.join(POINTS)}" if kind == "kill" else "")
        )
    return fault


def _matches(kind: str, step: int, rank: int, point: str | None = None) -> bool:
    return any(
        f["kind"] == kind and f["step"] == step and f["rank"] == rank and f.get("point") == point for f in faults()
    )


def install(trainer) -> None:
    """Wraps the trainer's `losses` and its engine's `backward` with the loop's faults (nothing without MAVIL_INJECT):
    nan_loss poisons the loss of a step's first micro-batch; kill at point backward, term and term_launcher fire
    after that micro-batch's backward. The loop itself calls no hook."""
    if not faults():
        return
    losses, backward = trainer.losses, trainer.engine.backward

    def first_micro_batch() -> tuple[bool, int]:  # -> (the step's first micro-batch?, the optimizer step it is in)
        return not trainer.guard.window, trainer.engine.global_steps + 1

    def poisoned_losses(batch):
        first, step = first_micro_batch()
        return poison_loss(losses(batch), step, trainer.rank) if first else losses(batch)

    def backward_then_faults(loss, *args, **kwargs):
        first, step = first_micro_batch()
        result = backward(loss, *args, **kwargs)
        if first:
            kill_point("backward", step, trainer.rank)
            signal_point(step, trainer.rank)
        return result

    trainer.losses, trainer.engine.backward = poisoned_losses, backward_then_faults


def poison_loss(losses: dict[str, torch.Tensor], step: int, rank: int) -> dict[str, torch.Tensor]:
    """`losses` with "loss" made NaN where a nan_loss fault names this step and rank (call it for the step's first
    micro-batch only). NaN is added, so the gradient stays finite: the case only a check of the loss catches."""
    if not _matches("nan_loss", step, rank):
        return losses
    return {**losses, "loss": losses["loss"] + math.nan}


def kill_point(point: str, step: int, rank: int) -> None:
    """SIGKILL of this process where a kill fault names this point, step and rank: no cleanup, no flush."""
    if _matches("kill", step, rank, point):
        os.kill(os.getpid(), signal.SIGKILL)


def signal_point(step: int, rank: int) -> None:
    """SIGTERM to this process (term) or to the `deepspeed` command that launched it (term_launcher) where a fault
    names this step and rank: called after the backward of a step's first micro-batch."""
    if _matches("term", step, rank):
        os.kill(os.getpid(), signal.SIGTERM)
    if _matches("term_launcher", step, rank):
        import psutil

        os.kill(psutil.Process(os.getppid()).ppid(), signal.SIGTERM)


def disk_full() -> bool:
    """Whether a disk_full fault is set: the free-space check then sees 0 bytes free."""
    return any(f["kind"] == "disk_full" for f in faults())
