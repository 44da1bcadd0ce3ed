"""Stopping a run cleanly: SIGTERM (what SLURM and Kubernetes send before they kill a job) and SIGINT (Ctrl-C).

A signal on any rank asks every rank to stop: each finishes its optimizer step, the ranks agree (`requested`), write
a checkpoint and exit with status `STATUS` (4); relaunching resumes there. A second signal more than `REPEAT_S`
seconds later exits at once without a checkpoint. A rank whose launcher dies stops likewise, and exits outright
after `ORPHAN_GRACE_S`. Details: docs/training.md#stopping-signals-and-a-dead-launcher.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

STATUS = 4  # exit status of a run stopped by a signal after its checkpoint
REPEAT_S = 2.0
ORPHAN_GRACE_S = 120.0
POLL_S = 0.5
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """Raised by the loop once the stop checkpoint is written; main prints it and exits with STATUS."""


class Preemption:
    """The stop request of this rank: set by a signal or by the launcher's death, agreed over ranks by `requested`."""

    def __init__(self):
        self.reason: str | None = None
        self.first_at = 0.0
        self.armed = False  # training started: a signal asks for a checkpoint; before, it exits at once
        self.done = False  # the stop checkpoint is written: further signals are ignored while the rank exits
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        watched = launcher_processes()
        if watched:
            threading.Thread(target=self._watch, args=(watched,), daemon=True, name="launcher-watch").start()

    def _on_signal(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.done:
            return
        if not self.armed:
            if os.environ.get("RANK", "0") == "0":  # the others are stopped by the launcher because rank 0 was
                print(f"error: stopped by {name} before training started; nothing to save", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        if self.reason is None:
            self.reason, self.first_at = name, time.monotonic()
        elif time.monotonic() - self.first_at > REPEAT_S:
            print(f"error: a second {name}: exiting at once, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)

    def _watch(self, watched: list) -> None:
        while True:
            gone = [p for p in watched if not alive(p)]
            if gone:
                break
            time.sleep(POLL_S)
        if self.reason is None:
            self.reason, self.first_at = f"the launcher's exit (process {gone[0].pid})", time.monotonic()
        time.sleep(ORPHAN_GRACE_S)
        if not self.done:
            print(
                f"error: the launcher is gone and the run did not stop within {ORPHAN_GRACE_S:.0f} s: exiting",
                file=sys.stderr,
                flush=True,
            )
            os._exit(STATUS)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it at the same optimizer step)."""
        flag = torch.tensor([1.0 if self.reason is not None else 0.0], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def stopped(self) -> None:
        self.done = True


def launcher_processes() -> list:
    """The processes whose exit must stop this rank: under a launcher (RANK set) the parent, and the grandparent
    where it is the `deepspeed` command (its SIGTERM does not reach the ranks: the launcher it started lives on)."""
    if "RANK" not in os.environ:
        return []
    import psutil

    try:
        parent = psutil.Process(os.getppid())
        watched = [parent]
        grandparent = parent.parent()
        if grandparent is not None and any(os.path.basename(arg) == "deepspeed" for arg in grandparent.cmdline()[:2]):
            watched.append(grandparent)
    except psutil.Error:
        return []
    return watched


def alive(process) -> bool:
    """A process still running; an exited one its parent has not reaped yet (a zombie) counts as gone."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
