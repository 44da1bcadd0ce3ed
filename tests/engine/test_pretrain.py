"""engine/pretrain.py under the real `deepspeed` launcher: two CPU processes, ZeRO-2, the tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mavil.engine.pretrain import fingerprint
from mavil.model import load_teacher, read_weights
from mavil.model.flops import step_flops

from ..conftest import REPO, tiny_config
from .launcher import launch, metrics


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretrain")


@pytest.fixture(scope="module")
def stage1(workdir) -> Path:
    return launch(
        workdir,
        "stage1",
        "train.max_steps=8",
        "train.checkpoint_every=4",
        "train.record_keys=true",
        "deepspeed.csv_monitor.enabled=true",
        f"deepspeed.csv_monitor.output_path={workdir / 'monitor'}",
        "deepspeed.csv_monitor.job_name=tiny",
    )


def test_stage1_two_ranks_train_on_disjoint_data_and_the_loss_falls(stage1):
    lines = metrics(stage1)
    assert [line["step"] for line in lines] == list(range(1, 9))
    first, last = sum(line["loss"] for line in lines[:2]) / 2, sum(line["loss"] for line in lines[-2:]) / 2
    assert last < first, [line["loss"] for line in lines]
    per_clip = step_flops(tiny_config().model, 8)["step_per_sample"]  # model TFLOP/s from the exact count
    tflops = [pytest.approx(line["samples_per_s"] * per_clip / 1e12, rel=1e-9) for line in lines]
    assert [line["model_tflops"] for line in lines] == tflops
    keys = {
        rank: [json.loads(line) for line in (stage1 / f"keys-rank{rank}.jsonl").read_text().splitlines()]
        for rank in (0, 1)
    }
    for epoch in (0, 1):
        seen = [set(k for rec in keys[rank] if rec["epoch"] == epoch for k in rec["keys"]) for rank in (0, 1)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]  # disjoint per epoch
        assert len(seen[0] | seen[1]) == 64  # tiny set: 64 clips, 2 ranks x 4 batches of 8
    assert (stage1 / "checkpoints" / "latest").read_text() == "step00000008"
    monitored = {path.stem for path in (stage1.parent / "monitor").rglob("*.csv")}
    assert {"Train_loss", "Train_lr", "Train_samples_per_s"} <= monitored, monitored  # DeepSpeed's monitor
    state, model_cfg = read_weights(stage1 / "model.safetensors")
    assert model_cfg["stage"] == 1 and all(t.dtype == torch.float32 for t in state.values())


def test_stage2_trains_from_the_export_with_a_bit_identical_teacher(stage1, workdir):
    teacher_file = stage1 / "model.safetensors"
    before = fingerprint(load_teacher(teacher_file))
    run_dir = launch(
        workdir, "stage2", "train.max_steps=4", f"model.teacher={teacher_file}", config="configs/tiny/stage2.json"
    )
    record = json.loads((run_dir / "teacher.json").read_text())
    assert record["sha256_after_training"] == record["sha256_file"] == before
    assert fingerprint(load_teacher(teacher_file)) == before
    assert all("loss_recon_audio" in line for line in metrics(run_dir))
    _, model_cfg = read_weights(run_dir / "model.safetensors")
    assert model_cfg["stage"] == 2
    state, _ = read_weights(run_dir / "model.safetensors")
    assert not any(name.startswith("teacher") for name in state)


def test_resume_repeats_the_uninterrupted_run_bitwise(workdir):
    straight = launch(workdir, "straight", "train.max_steps=6", "train.checkpoint_every=0")
    interrupted = launch(workdir, "resumed", "train.max_steps=3", "train.checkpoint_every=0")
    launch(workdir, "resumed", "train.max_steps=6", "train.checkpoint_every=0")  # the same command, relaunched
    ours, theirs = metrics(interrupted), metrics(straight)
    # steps 5-6 cross into epoch 1: the data order resumes too
    assert [line["step"] for line in ours] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(ours, theirs):
        assert {k: v for k, v in a.items() if k.startswith("loss") or k in ("lr", "step")} == {
            k: v for k, v in b.items() if k.startswith("loss") or k in ("lr", "step")
        }


def test_export_cli_consolidates_the_checkpoint(stage1, tmp_path):
    out = tmp_path / "again.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "mavil.engine.export", str(stage1), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    exported, _ = read_weights(stage1 / "model.safetensors")
    again, _ = read_weights(out)
    assert exported.keys() == again.keys() and all(torch.equal(exported[k], again[k]) for k in exported)


def test_a_batch_that_cannot_split_is_refused_before_work(workdir):
    env = {**os.environ, "MAVIL_CACHE": str(workdir / "cache")}
    result = subprocess.run(
        [sys.executable, "engine/pretrain.py", "--config", "configs/tiny/stage1.json", "train.micro_batch=3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "train.micro_batch = 3: must divide global_batch=16" in result.stderr
