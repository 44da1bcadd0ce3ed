"""bf16 on the CPU, as the GPU configs run it (DeepSpeed's bf16 mode runs on the CPU too).

- the stage-2 teacher under `deepspeed.initialize` with bf16: DeepSpeed 0.19.8 casts the module's parameters one
  by one (`p.data = p.data.to(bf16)`, not `module.bfloat16()`), so a teacher kept outside the module's parameters
  is not cast with them; it follows the student when DeepSpeed then moves the module to its device (`_apply`).
  Before that fix the first stage-2 forward crashed in the teacher's patch embedding (bf16 input, fp32 bias).
- the engine under the real `deepspeed` launcher with deepspeed.bf16.enabled=true on the tiny configs (two CPU
  ranks, ZeRO-2, train.device=cpu): stage 1 with a NaN loss injected on rank 1 at step 2, run straight to step 6
  and, as the same command, stopped after step 3 and relaunched: the step is skipped on both ranks (DeepSpeed's
  bf16 overflow check, fed by `loss_to_backward`) and the relaunched run equals the straight one bit for bit
  (checkpoint, metrics, clip order); stage 2 from the straight run's export (its teacher bf16, bit for bit the
  file's bf16 rounding at the end); audio+video fine-tuning from the stage-2 export, evaluated. Every logged
  loss finite, the module's checkpointed weights bf16. Five launches, about 2.5 minutes on two cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mavil.engine.checkpoint import tag_for

from ..conftest import REPO
from ..reliability.runs import Launch, differences, latest_step, load_checkpoint
from .launcher import launch, metrics

# One process, its own process group of one; prints what deepspeed.initialize left of the teacher, then one step.
TEACHER_PROBE = """
import dataclasses, json, os
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
import deepspeed, torch
from mavil.config import load_config
from mavil.model import MAViL, Backbone

deepspeed.init_distributed(dist_backend="gloo", verbose=False)
cfg = load_config("configs/tiny/stage1.json").model
torch.manual_seed(0)
teacher = Backbone(cfg).requires_grad_(False).eval()
model = MAViL(dataclasses.replace(cfg, stage=2, norm_pix_loss=False), teacher)
config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True}
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config=config)
teacher = engine.module.teacher
report = {"engine_device": str(engine.device), "bf16": engine.bfloat16_enabled(),
          "student": sorted({str(p.dtype) for p in engine.module.parameters()}),
          "teacher": sorted({str(p.dtype) for p in teacher.parameters()}),
          "teacher_devices": sorted({str(p.device) for p in teacher.parameters()}),
          "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
          "teacher_training": teacher.training}
print("INIT " + json.dumps(report), flush=True)
audio = torch.randn(2, 1, cfg.audio_frames, cfg.audio_mel_bins).to(torch.bfloat16)
video = torch.randn(2, 3, cfg.video_frames, cfg.video_size, cfg.video_size).to(torch.bfloat16)
targets = engine.module.targets(audio, video)
report["targets"] = [str(t.dtype) for t in targets]
report["targets_require_grad"] = any(t.requires_grad for t in targets)
losses = engine(audio, video)
engine.backward(losses["loss"])
engine.step()
report["loss"] = float(losses["loss"])
report["teacher_grads"] = any(p.grad is not None for p in teacher.parameters())
print("STEP " + json.dumps(report), flush=True)
"""


def test_deepspeed_bf16_casts_the_stage2_teacher_with_the_student(tmp_path):
    from mavil.engine.launch import free_port

    env = {**os.environ, "PORT": str(free_port()), "MAVIL_CACHE": str(tmp_path / "cache")}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-c", TEACHER_PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout[-3000:] + result.stderr[-3000:]
    reports = {
        line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1])
        for line in result.stdout.splitlines()
        if line.startswith(("INIT ", "STEP "))
    }
    assert "INIT" in reports, output
    report = reports["INIT"]  # right after deepspeed.initialize
    assert report["bf16"] and report["student"] == ["torch.bfloat16"], report
    assert report["teacher"] == ["torch.bfloat16"], report  # no fp32 copy of the teacher's weights left
    assert report["teacher_devices"] == [report["engine_device"]], report
    assert not report["teacher_requires_grad"] and not report["teacher_training"], report
    assert result.returncode == 0 and "STEP" in reports, output
    report = reports["STEP"]  # after one forward, backward and step
    assert not report["teacher_grads"], report
    assert report["targets"] == ["torch.bfloat16"] * 2 and not report["targets_require_grad"]
    assert report["loss"] == report["loss"] and abs(report["loss"]) < float("inf")


BF16 = ("deepspeed.bf16.enabled=true", "train.device=cpu")
STEPS, POISONED, STOP = 6, 2, 3
STAGE1 = (*BF16, "train.checkpoint_every=2", "train.record_keys=true")
INJECT = f"nan_loss:step={POISONED}:rank=1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bf16")


def launched(launch: Launch) -> Launch:
    assert launch.wait() == 0, launch.output()[-3000:]
    return launch


@pytest.fixture(scope="module")
def straight(workdir) -> Path:
    return launched(Launch(workdir, "straight", *STAGE1, f"train.max_steps={STEPS}", inject=INJECT)).run_dir


@pytest.fixture(scope="module")
def stage2(workdir, straight) -> Path:
    return launch(
        workdir,
        "stage2",
        *BF16,
        "train.max_steps=3",
        f"model.teacher={straight / 'model.safetensors'}",
        config="configs/tiny/stage2.json",
    )


def assert_finite_bf16_run(run_dir: Path) -> list[dict]:
    """-> its metrics lines, every loss part finite; the newest checkpoint's module weights bf16."""
    lines = metrics(run_dir)
    assert lines and all(math.isfinite(v) for line in lines for k, v in line.items() if k.startswith("loss")), lines
    states = torch.load(
        run_dir / "checkpoints" / tag_for(latest_step(run_dir)) / "mp_rank_00_model_states.pt", weights_only=False
    )
    assert {t.dtype for t in states["module"].values()} == {torch.bfloat16}
    return lines


def kept(line: dict) -> dict:
    return {k: v for k, v in line.items() if k.startswith("loss") or k in ("step", "epoch", "lr", "skipped_steps")}


def test_stage1_in_bf16_skips_a_poisoned_step_and_resumes_exactly(straight, workdir):
    lines = assert_finite_bf16_run(straight)
    assert [line["step"] for line in lines] == [s for s in range(1, STEPS + 1) if s != POISONED]
    skipped = metrics(straight, event="skipped_step")
    assert [(e["step"], e["reason"], e["skipped_steps"]) for e in skipped] == [
        (POISONED, "non-finite loss on rank 1", 1)
    ]
    assert lines[-1]["skipped_steps"] == 1

    first = launched(Launch(workdir, "resumed", *STAGE1, f"train.max_steps={STOP}", inject=INJECT))
    assert latest_step(first.run_dir) == STOP
    again = launched(Launch(workdir, "resumed", *STAGE1, f"train.max_steps={STEPS}", inject=INJECT, name="resumed-2"))
    assert f"resuming at step {STOP}" in again.output()
    assert [kept(line) for line in metrics(again.run_dir)] == [kept(line) for line in lines]
    checkpoints = (load_checkpoint(run, STEPS, bf16=True) for run in (again.run_dir, straight))
    assert differences(*checkpoints) == []  # weights, fp32 master partitions, AdamW's state, RNG states
    for rank in (0, 1):  # the same clips in the same order
        ours, theirs = (run / f"keys-rank{rank}.jsonl" for run in (again.run_dir, straight))
        assert ours.read_text() == theirs.read_text()


def test_stage2_in_bf16_from_a_stage1_export(stage2):
    assert [line["step"] for line in assert_finite_bf16_run(stage2)] == [1, 2, 3]
    record = json.loads((stage2 / "teacher.json").read_text())
    assert record["dtype"] == "bfloat16" and record["sha256_after_training"] == record["sha256_file"]


def test_finetuning_in_bf16_from_the_stage2_export(stage2, workdir):
    run_dir = launch(
        workdir,
        "finetune",
        *BF16,
        "train.max_steps=2",
        "finetune.mode=audio+video",
        f"finetune.init={stage2 / 'model.safetensors'}",
        "finetune.eval_clips=2",
        "finetune.eval_synthetic_clips=16",
        config="configs/tiny/finetune.json",
    )
    assert [line["step"] for line in assert_finite_bf16_run(run_dir)] == [1, 2]
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["clips"] == 16 and all(math.isfinite(scores[k]) for k in ("mAP", "accuracy", "mAP_2clips"))
