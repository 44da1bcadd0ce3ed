"""One live launch per run directory: rank 0 holds an exclusive `flock` on RUN_DIR/run.lock for its whole life.

The lock is taken before the process group starts and before anything else in the run directory is read or
written, so a second launch into a directory in use is refused at once (`RunLocked`, one line naming the holder's
host, process id and start time, which the holder writes into the file) and changes nothing. The kernel drops the
lock when its holder exits, however it exits (kill -9 included): a stale file never blocks a relaunch.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ..config import ConfigError

LOCK = "run.lock"
_held: list = []  # (run directory, open lock file, created here) of this process, locked until it exits


class RunLocked(ConfigError):
    """The run directory is owned by another live launch."""


def acquire(run_dir: Path) -> None:
    """Takes the run directory's lock for the rest of this process's life; raises RunLocked when another holds it."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        try:
            who = json.loads(holder)
            named = f"host {who['host']}, pid {who['pid']}, started {who['started']}"
        except (ValueError, KeyError, TypeError):
            named = "a holder that has not written its name yet"
        raise RunLocked(
            f"{run_dir} is in use by another launch ({named}); wait for it to end or stop it, "
            f"or choose another train.output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        + "\n"
    )
    handle.flush()
    _held.append((run_dir, handle, created))


def release_unused() -> None:
    """Drops this process's locks, and removes a run directory it created that holds nothing but the lock: a launch
    refused before it wrote anything leaves no trace."""
    while _held:
        run_dir, handle, created = _held.pop()
        if created and [entry.name for entry in run_dir.iterdir()] == [LOCK]:
            (run_dir / LOCK).unlink()
            run_dir.rmdir()
        handle.close()
