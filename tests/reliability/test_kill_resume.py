"""kill -9 of a rank at any moment, then the same command relaunched, ends where the uninterrupted run ends.

One uninterrupted reference run, then one chain of launches of the same command into one run directory,
each killed with SIGKILL at another point: from outside at a random moment (a random rank, a random fraction
of a step after step 2 is logged: mid-step or mid-checkpoint), mid-step (after the backward of a step's first
micro-batch, before the optimizer step), partway through a checkpoint's files, with every file written but
`latest` not yet replaced (at the epoch boundary), right after `latest` was replaced, and after the last
checkpoint before the export. A last relaunch finishes the run. The
final weights, the last checkpoint (weights, optimizer, RNG states, data position), every logged step and the
clips each rank saw must equal the reference's bit for bit: on the CPU the resume is exact.

Two CPU ranks, ZeRO-2, two micro-batches per optimizer step, a checkpoint after every step, 8 steps (two
epochs of 4). The kill steps, ranks and the outside delay are drawn from MAVIL_KILL_SEED (random when unset,
printed, and named in every failure message).
"""

from __future__ import annotations

import json
import os
import random

import pytest

from mavil.engine.checkpoint import prune, tag_for
from mavil.engine.metrics import rewind
from mavil.model import read_weights

from ..engine.launcher import launch, metrics
from .runs import Launch, checkpoint_files, differences, latest_step, load_checkpoint

STEPS = 8  # 64 clips over 2 ranks, 2 micro-batches of 4 per optimizer step: 4 steps per epoch
OVERRIDES = ("train.micro_batch=4", f"train.max_steps={STEPS}", "train.checkpoint_every=1", "train.record_keys=true")
EPOCH_END = 4


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("MAVIL_KILL_SEED", random.SystemRandom().randrange(2**31)))
    print(f"MAVIL_KILL_SEED={value}")
    return value


class Chain:
    """Launches of the same command into one run directory, each expected to die; checks what each leaves."""

    def __init__(self, workdir, seed: int):
        self.workdir, self.rng, self.note, self.count = workdir, random.Random(seed), f"MAVIL_KILL_SEED={seed}", 0
        self.run_dir = workdir / "chain"

    def start(self, inject: str = "") -> Launch:
        self.count += 1
        launch = Launch(self.workdir, "chain", *OVERRIDES, inject=inject, name=f"chain-{self.count}")
        launch.find_ranks()  # so that `wait` checks none of them outlives the launcher
        return launch

    def killed(self, launch: Launch, what: str) -> int:
        """Waits for a launch that must have died; -> the step `latest` names now (its checkpoint complete)."""
        rc = launch.wait()
        assert rc != 0, f"{self.note}: launch {self.count} ({what}) was not killed:\n{launch.output()[-2000:]}"
        assert "exported" not in launch.output(), f"{self.note}: launch {self.count} ({what}) finished its run"
        step = latest_step(self.run_dir)
        missing = [p.name for p in checkpoint_files(self.run_dir, step) if not p.is_file()] if step else []
        assert not missing, f"{self.note}: after {what}, latest names {tag_for(step)} without {missing}"
        return step

    def inject(self, point: str, step: int, rank: int) -> int:
        launch = self.start(f"kill:point={point}:step={step}:rank={rank}")
        return self.killed(launch, f"kill at {point} of step {step} on rank {rank}")

    def outside(self, step: int) -> int:
        rank, fraction = self.rng.randrange(2), self.rng.random()
        launch = self.start()
        launch.kill_rank_in_step(step, fraction, rank)
        return self.killed(launch, f"SIGKILL of rank {rank} {fraction:.2f} of a step after step {step} was logged")


def test_sigkill_anywhere_then_relaunch_reaches_the_uninterrupted_run(tmp_path, seed):
    reference = launch(tmp_path, "reference", *OVERRIDES)
    chain = Chain(tmp_path, seed)
    rng, note, run_dir = chain.rng, chain.note, chain.run_dir

    resumed = chain.outside(step=2)  # in step 3, or in step 2's checkpoint
    assert resumed in (1, 2, 3), note

    mid_step = rng.randint(resumed + 1, EPOCH_END)
    assert chain.inject("backward", mid_step, rng.randrange(2)) == mid_step - 1, note

    files_step = rng.randint(mid_step, EPOCH_END)
    assert chain.inject("checkpoint_files", files_step, rng.randrange(2)) == files_step - 1, note
    partial = run_dir / "checkpoints" / tag_for(files_step)
    assert partial.is_dir() and not all(p.is_file() for p in checkpoint_files(run_dir, files_step)), note

    assert chain.inject("checkpoint_written", EPOCH_END, 0) == EPOCH_END - 1, note  # the epoch's last checkpoint
    assert all(p.is_file() for p in checkpoint_files(run_dir, EPOCH_END)), note  # complete, yet not `latest`

    latest_at = rng.randint(EPOCH_END, EPOCH_END + 1)
    assert chain.inject("latest", latest_at, 0) == latest_at, note

    assert chain.inject("export", STEPS, 0) == STEPS, note
    assert not (run_dir / "model.safetensors").exists(), note

    final = chain.start()
    assert final.wait() == 0, f"{note}: the last relaunch failed:\n{final.output()[-3000:]}"

    assert_same_run(run_dir, reference, note)


def assert_same_run(run_dir, reference, note: str) -> None:
    ours, theirs = read_weights(run_dir / "model.safetensors")[0], read_weights(reference / "model.safetensors")[0]
    assert ours.keys() == theirs.keys(), note
    assert [name for name in ours if not ours[name].equal(theirs[name])] == [], note
    assert differences(load_checkpoint(run_dir, STEPS), load_checkpoint(reference, STEPS)) == [], note
    logged = ("step", "epoch", "lr", "skipped_steps")
    ours, theirs = metrics(run_dir), metrics(reference)
    assert [line["step"] for line in ours] == list(range(1, STEPS + 1)), note  # each step once: the logs rewound
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in a.items() if k.startswith("loss") or k in logged} == {
            k: v for k, v in b.items() if k.startswith("loss") or k in logged
        }, note
    for rank in (0, 1):  # the same clips in the same order: the data position resumed exactly
        keys = [(run / f"keys-rank{rank}.jsonl").read_text().splitlines() for run in (run_dir, reference)]
        assert [json.loads(line) for line in keys[0]] == [json.loads(line) for line in keys[1]], note


def test_prune_keeps_latest_and_its_predecessor_whatever_the_file_times(tmp_path):
    for step in (1, 2, 3, 5):  # 5: a partial write of a crashed run, newer than `latest`
        (tmp_path / tag_for(step)).mkdir()
    (tmp_path / "notes").mkdir()
    for age, step in enumerate((3, 2, 1)):  # the predecessor and `latest` look oldest by modification time
        os.utime(tmp_path / tag_for(step), (1e9 - age, 1e9 - age))
    prune(tmp_path, tag_for(3), keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", tag_for(2), tag_for(3), tag_for(5)]


def test_rewind_drops_steps_past_the_checkpoint_and_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 2.0}, {"event": "data_health", "step": 1}, {"step": 2, "loss": 1.5}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 3, "lo')
    rewind(path, lambda line: line["step"] <= 1)
    assert [json.loads(text) for text in path.read_text().splitlines()] == lines[:2]
