"""bf16 on the CPU, as the GPU configs run it (DeepSpeed's bf16 mode runs on the CPU too).

- the stage-2 teacher under `deepspeed.initialize` with bf16: DeepSpeed 0.19.8 casts the module's parameters one
  by one (`p.data = p.data.to(bf16)`, not `module.bfloat16()`), so a teacher kept outside the module's parameters
  is not cast with them; it follows the student when DeepSpeed then moves the module to its device (`_apply`).
  Before that fix the first stage-2 forward crashed in the teacher's patch embedding (bf16 input, fp32 bias).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ..conftest import REPO

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
    result = subprocess.run([sys.executable, "-c", TEACHER_PROBE], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    reports = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines()
               if line.startswith(("INIT ", "STEP "))}
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
