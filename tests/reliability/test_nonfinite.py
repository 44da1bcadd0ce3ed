"""Non-finite losses and gradients: the optimizer step is skipped on every rank, counted and logged, and
train.max_bad_steps of them in a row stop the run with `latest` on the last good checkpoint.

The poisoned run (two CPU ranks, ZeRO-2, two micro-batches per step, a checkpoint after every step) gets a NaN
loss on rank 1 at step 3, then on rank 0 at step 7 and rank 1 at step 8 with train.max_bad_steps=2. What "the
run with batch 3 skipped" must be is built from a clean run instead, independently of the skipping code: the
clean run's checkpoint before step 3 (weights, AdamW's moments and step count) joined with its checkpoint after
step 3 (data position, RNG states, step counters: the lr schedule and the masks go on where they were), resumed
to step 6. Both runs' step-6 checkpoints must be equal bit for bit, optimizer and RNG states included.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mavil.config import ConfigError
from mavil.engine import inject
from mavil.engine.checkpoint import LATEST, MANIFEST, manifest, tag_for
from mavil.engine.numerics import check_deepspeed

from ..conftest import REPO, tiny_config
from ..engine.launcher import command, launch, metrics
from .runs import Launch, checkpoint_files, differences, latest_step, load_checkpoint

OVERRIDES = ("train.micro_batch=4", "train.checkpoint_every=1")
POISONED, LAST_GOOD, STOPPED = 3, 6, 8
INJECT = f"nan_loss:step={POISONED}:rank=1;nan_loss:step=7:rank=0;nan_loss:step={STOPPED}:rank=1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nonfinite")


@pytest.fixture(scope="module")
def poisoned(workdir) -> Launch:
    run = Launch(workdir, "poisoned", *OVERRIDES, "train.max_steps=10", "train.max_bad_steps=2", inject=INJECT)
    run.wait()
    return run


@pytest.fixture(scope="module")
def clean(workdir) -> Path:
    return launch(workdir, "clean", *OVERRIDES, f"train.max_steps={POISONED}")


@pytest.fixture(scope="module")
def reference(workdir, clean) -> Path:
    """The clean run with optimizer step POISONED made a no-op, continued to LAST_GOOD."""
    without_batch(clean, workdir / "reference", POISONED)
    return launch(workdir, "reference", *OVERRIDES, f"train.max_steps={LAST_GOOD}")


def without_batch(clean: Path, out: Path, step: int) -> None:
    """out/checkpoints/<step>: `clean`'s weights and optimizer before `step`, its data position, RNG states and
    counters after it (one more skipped step), named by `latest`."""
    before, after = (clean / "checkpoints" / tag_for(s) for s in (step - 1, step))
    target = out / "checkpoints" / tag_for(step)
    shutil.copytree(before, target)
    for rng in after.glob("rng-rank*.pt"):
        shutil.copy(rng, target / rng.name)
    states = torch.load(after / "mp_rank_00_model_states.pt", weights_only=False)
    states["module"] = torch.load(before / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    states["skipped_steps"] += 1
    torch.save(states, target / "mp_rank_00_model_states.pt")
    (target / MANIFEST).write_text(json.dumps(manifest(target)))  # the files it holds now, or it is not trusted
    (out / "checkpoints" / LATEST).write_text(tag_for(step))


def adam_steps(run_dir: Path, step: int) -> set[float]:
    states = torch.load(checkpoint_files(run_dir, step)[1], weights_only=False)["optimizer_state_dict"]
    return {float(s["step"]) for s in states["base_optimizer_state"]["state"].values()}


def test_a_non_finite_loss_skips_exactly_that_step_on_every_rank(poisoned, clean):
    lines = metrics(poisoned.run_dir)
    assert [(line["step"], line["skipped_steps"]) for line in lines] == [(1, 0), (2, 0), (4, 1), (5, 1), (6, 1)]
    skipped = metrics(poisoned.run_dir, event="skipped_step")
    assert [(e["step"], e["reason"], e["skipped_steps"], e["in_a_row"]) for e in skipped] == [
        (3, "non-finite loss on rank 1", 1, 1),
        (7, "non-finite loss on rank 0", 2, 1),
        (8, "non-finite loss on rank 1", 3, 2),
    ]
    first = skipped[0]["losses"]  # each rank's loss parts, averaged over the step's two micro-batches
    assert first[1]["loss"] == "nan" and isinstance(first[0]["loss"], float)
    assert first[1]["loss_recon_audio"] == pytest.approx(first[0]["loss_recon_audio"], rel=0.5)  # parts still finite
    assert "step 3 skipped (non-finite loss on rank 1; 1 skipped so far, 1 in a row): rank 0: loss" in poisoned.output()
    for ours, theirs in zip(lines[:2], metrics(clean)):  # until the poison the two runs are one
        assert {k: v for k, v in ours.items() if k.startswith("loss")} == {
            k: v for k, v in theirs.items() if k.startswith("loss")
        }
    assert adam_steps(clean, POISONED) == {3.0} and adam_steps(poisoned.run_dir, LAST_GOOD) == {LAST_GOOD - 1.0}


def test_the_run_equals_the_run_without_the_poisoned_batch(poisoned, reference):
    assert differences(load_checkpoint(poisoned.run_dir, LAST_GOOD), load_checkpoint(reference, LAST_GOOD)) == []
    keep = ("step", "lr", "skipped_steps")
    ours = [line for line in metrics(poisoned.run_dir) if POISONED < line["step"] <= LAST_GOOD]
    theirs = metrics(reference)
    assert [line["step"] for line in theirs] == [4, 5, 6]
    assert [{k: v for k, v in line.items() if k.startswith("loss") or k in keep} for line in ours] == [
        {k: v for k, v in line.items() if k.startswith("loss") or k in keep} for line in theirs
    ]


def test_max_bad_steps_in_a_row_stop_the_run_on_its_last_good_checkpoint(poisoned):
    assert poisoned.returncode == 3, poisoned.output()[-3000:]
    assert (
        f"error: 2 optimizer steps in a row skipped for a non-finite loss or gradient (train.max_bad_steps = 2), "
        f"the last at step {STOPPED}: stopping without a checkpoint"
    ) in poisoned.output()
    checkpoints = poisoned.run_dir / "checkpoints"
    assert latest_step(poisoned.run_dir) == LAST_GOOD and all(
        p.is_file() for p in checkpoint_files(poisoned.run_dir, LAST_GOOD)
    )
    assert not any((checkpoints / tag_for(step)).exists() for step in range(LAST_GOOD + 1, STOPPED + 1))
    assert not (poisoned.run_dir / "model.safetensors").exists()


def test_zero_stage_1_and_2_skip_in_fp32_and_bf16(workdir):
    """DeepSpeed's own skipping, fed by loss_to_backward: NaN and inf losses, a NaN gradient, on one rank."""
    argv, env = command(workdir, "zero_skip")
    argv = [
        *argv[: argv.index("engine/pretrain.py")],
        "tests/reliability/zero_skip.py",
        "1:fp32",
        "2:fp32",
        "1:bf16",
        "2:bf16",
    ]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    oks = set(re.findall(r"ok stage \d \w+ rank \d", result.stdout))  # the ranks' lines may interleave
    assert result.returncode == 0 and len(oks) == 8, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"zero_optimization": {"stage": 0}}, "deepspeed.zero_optimization.stage = 0: must be 1 or 2"),
        ({"zero_optimization": {"stage": 3}}, "deepspeed.zero_optimization.stage = 3: must be 1 or 2"),
        (
            {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True, "check_grad_overflow": False}},
            "deepspeed.bf16.check_grad_overflow = false: must stay true",
        ),
        (
            {"zero_optimization": {"stage": 1, "compute_grad_norm": False}},
            "deepspeed.zero_optimization.compute_grad_norm = false: must stay true",
        ),
    ],
)
def test_a_deepspeed_section_that_would_apply_non_finite_steps_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_deepspeed(overrides, "run.json")
    check_deepspeed({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, "run.json")  # the paper's


def test_max_bad_steps_must_be_positive():
    with pytest.raises(ConfigError, match=r"train\.max_bad_steps = 0: must be > 0"):
        tiny_config("train.max_bad_steps=0")


@pytest.mark.parametrize(
    "text, message",
    [
        ("nan_loss", "needs step=S"),
        ("kill:step=3", "needs step=S and point=one of"),
        ("kill:point=nowhere:step=3", "point=one of"),
        ("nan_loss:step=x", "step must be a whole number"),
        ("explode:step=1", "unknown kind 'explode'"),
        ("nan_loss:step=1:micro=2", "expected step=..., rank=..."),
    ],
)
def test_a_malformed_injection_is_refused_naming_it(text, message):
    with pytest.raises(ValueError, match=f"MAVIL_INJECT: fault '{text}'.*{message}"):
        inject.parse(text)
