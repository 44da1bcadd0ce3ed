"""The process pool that `prepare`, `synthetic` and `health` run their per-clip work in.

`map_in_order(fn, items, workers, desc)` yields fn(item) in the items' order, computed by spawned processes (fn and
the items must pickle) with only a few results ahead in memory; its workers end when the process that started them
is gone (`exit_with_parent`). `default_workers()` is the number of CPUs this process may run on. Imports neither
PyAV nor any other module of ours.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

IN_FLIGHT_PER_WORKER = 4  # clips submitted ahead of the one the writer waits for
PARENT_POLL = 1.0  # s: how often a pool worker checks that the run is still there


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def exit_with_parent(parent: int) -> None:
    """Runs in each pool worker: ends it once `parent` is gone (a SIGKILLed or OOM-killed run leaves no workers
    decoding for nobody)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def map_in_order(fn: Callable, items: Iterable, workers: int, desc: str, progress: bool = True) -> Iterator:
    """fn(item) for each item, in the items' order, computed by `workers` spawned processes (in this
    process when workers <= 1), with a progress bar on stderr. At most a few results wait in memory."""
    items = list(items)
    with tqdm(total=len(items), desc=desc, unit="clip", file=sys.stderr, disable=not progress) as bar:
        if workers <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=exit_with_parent, initargs=(os.getpid(),)
        ) as pool:
            pending = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    yield pending.popleft().result()
                    bar.update()
            while pending:
                yield pending.popleft().result()
                bar.update()
