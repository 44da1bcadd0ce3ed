"""SIGTERM, as SLURM and Kubernetes send it before a kill: the run checkpoints, says so, exits with status 4, and
a relaunch ends where an uninterrupted run ends; the `deepspeed` command alone stopped leaves no rank training.

Two CPU ranks, ZeRO-2, two micro-batches per optimizer step, no periodic checkpoints (the one the signal makes is
the only one before the end), 4 steps. The signal comes from the engine's fault hook (`engine/inject.py`) at a
fixed point of a step (after the first micro-batch's backward), so the test does not race the tiny steps.
"""

from __future__ import annotations

import time

import psutil

from mavil.engine.preempt import STATUS

from ..engine.launcher import launch, metrics
from .runs import Launch, checkpoint_files, latest_step

STEPS = 4
OVERRIDES = ("train.micro_batch=4", f"train.max_steps={STEPS}", "train.checkpoint_every=0")


def test_sigterm_on_one_rank_checkpoints_and_the_relaunch_matches_an_uninterrupted_run(tmp_path):
    reference = launch(tmp_path, "reference", *OVERRIDES)
    stopped = Launch(tmp_path, "run", *OVERRIDES, inject="term:step=2:rank=1", name="stopped")
    stopped.find_ranks()
    assert stopped.wait() == STATUS, stopped.output()[-3000:]
    output = stopped.output()
    assert "Traceback" not in output, output[-3000:]
    assert latest_step(stopped.run_dir) == 2 and all(p.is_file() for p in checkpoint_files(stopped.run_dir, 2))
    assert "after step 2: checkpoint" in output and "relaunch the same command to resume" in output, output[-2000:]

    resumed = Launch(tmp_path, "run", *OVERRIDES, name="resumed")
    assert resumed.wait() == 0, resumed.output()[-3000:]
    assert "resuming at step 2" in resumed.output()
    ours, theirs = metrics(stopped.run_dir), metrics(reference)
    assert [line["step"] for line in ours] == list(range(1, STEPS + 1))
    parts = [
        [{k: v for k, v in line.items() if k.startswith("loss") or k in ("step", "lr")} for line in lines]
        for lines in (ours, theirs)
    ]
    assert parts[0] == parts[1]  # bit for bit: JSON floats round-trip exactly


def test_sigterm_to_the_launcher_alone_stops_every_rank(tmp_path):
    run = Launch(tmp_path, "run", "train.micro_batch=4", "train.checkpoint_every=0", inject="term_launcher:step=2")
    ranks = run.find_ranks()
    helpers = psutil.Process(run.proc.pid).children()  # deepspeed.launcher.launch, which the SIGTERM never reaches
    assert run.proc.wait(timeout=300) == -15
    started = time.monotonic()
    gone, alive = psutil.wait_procs(ranks + helpers, timeout=120)
    assert not alive, f"still running after the launcher was stopped: {alive}\n{run.output()[-2000:]}"
    assert time.monotonic() - started < 60
    step = latest_step(run.run_dir)
    assert 2 <= step < 40, run.output()[-2000:]  # stopped, checkpointed, well before its 40 steps
    assert all(p.is_file() for p in checkpoint_files(run.run_dir, step))
    assert "Traceback" not in run.output(), run.output()[-3000:]
