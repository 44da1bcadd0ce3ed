"""One live launch per run directory: a second launch into it is refused, naming the holder, and the first is
unharmed. The first launch's ranks are paused (SIGSTOP) after step 1 while the second starts, so the two overlap
however fast the machine; the second uses the same master port, which the lock must refuse before it is bound."""

from __future__ import annotations

import json
import subprocess

from ..conftest import REPO
from ..engine.launcher import command, metrics
from .runs import Launch


def test_a_second_launch_is_refused_and_the_first_finishes(tmp_path):
    overrides = ("train.micro_batch=4", "train.max_steps=4", "train.checkpoint_every=0")
    first = Launch(tmp_path, "run", *overrides, name="first")
    ranks = first.find_ranks()
    first.wait_for_step(1)
    for rank in ranks:
        rank.suspend()
    try:
        argv, env = command(tmp_path, "run", *overrides)
        second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        holder = json.loads((tmp_path / "run" / "run.lock").read_text())
    finally:
        for rank in ranks:
            rank.resume()
    output = second.stdout + second.stderr
    assert second.returncode == 2, output[-3000:]
    assert f"pid {holder['pid']}" in output and holder["host"] in output and "in use by another launch" in output
    assert "Traceback" not in output and "EADDRINUSE" not in output, output[-3000:]
    assert first.wait() == 0, first.output()[-3000:]
    assert [line["step"] for line in metrics(first.run_dir)] == [1, 2, 3, 4]
