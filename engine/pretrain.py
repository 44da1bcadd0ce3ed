"""MAViL pre-training, stage 1 or stage 2 (the config's model.stage), with DeepSpeed ZeRO.

    deepspeed engine/pretrain.py --config configs/stage1.json [section.key=value ...]
    deepspeed --num_gpus 2 engine/pretrain.py --config configs/tiny/stage1.json      # two processes (CPUs too)
    python engine/pretrain.py --config configs/tiny/stage1.json                      # one process, no launcher

The loop, checkpoints, resume and logging are `trainer.Trainer`'s. One epoch is one pass of the DALI
pipeline over each rank's part of the clips; the parts rotate over ranks from epoch to epoch, and the
order and augmentation follow (seed, epoch). Stage 2 checks at the end that the frozen teacher's
weights are the file's, bit for bit (teacher.json).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

# absolute imports: the deepspeed launcher runs this file as a script
from mavil.data.pipeline import Loader, model_inputs
from mavil.engine.optim import param_groups
from mavil.engine.run import plan_pretraining
from mavil.engine.trainer import Trainer, main
from mavil.model import build_model, load_teacher
from mavil.model.contrastive import check_groups
from mavil.model.flops import step_flops


class Pretrainer(Trainer):
    make_plan = staticmethod(plan_pretraining)

    def __init__(self, plan, rank, world, device):
        super().__init__(plan, rank, world, device)
        model, micro_batch = self.cfg.model, self.cfg.train.micro_batch
        self.tokens_per_sample = model.audio_tokens + model.video_tokens
        self.flops_per_sample = step_flops(model, micro_batch)["step_per_sample"]  # teacher: same encoders

    def build_model(self) -> torch.nn.Module:
        model = build_model(self.cfg.model)
        model.micro_batch = self.cfg.train.micro_batch  # InfoNCE groups: every rank takes the same path
        check_groups(self.cfg.model.contrastive_group, model.micro_batch, self.world)
        if self.rank == 0:
            for report in model.init_reports:  # model.video_init / audio_init
                print(report)
        return model

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        return param_groups(model, self.cfg.train.weight_decay)

    def epoch_loader(self, epoch: int) -> Loader:
        """This epoch's part of the clips: the parts rotate over ranks, order and augmentation follow (seed, epoch)."""
        return Loader(
            self.health.root,
            self.plan.train_spec,
            rank=(self.rank + epoch) % self.world,
            world_size=self.world,
            seed=self.plan.seed(epoch),
            device=self.device,
            health=self.health,
        )

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        audio, video, _ = model_inputs(batch, self.dtype)
        return self.engine(audio, video)

    def finish(self) -> Path:
        path = self.export()
        if self.rank == 0:
            self.check_teacher()
        return path

    def check_teacher(self) -> None:
        """Stage 2: the teacher's weights at the end must be the file's, bit for bit, in the dtype the teacher runs in
        (the engine's: the file's fp32, or its bf16 rounding); recorded in teacher.json."""
        teacher = self.engine.module.teacher
        if teacher is None:
            return
        dtype = next(teacher.parameters()).dtype
        record = {
            "file": self.cfg.model.teacher,
            "dtype": str(dtype).removeprefix("torch."),
            "sha256_file": fingerprint(load_teacher(self.cfg.model.teacher).to(dtype)),
            "sha256_after_training": fingerprint(teacher),
        }
        (self.run_dir / "teacher.json").write_text(json.dumps(record, indent=1) + "\n")
        if record["sha256_file"] != record["sha256_after_training"]:
            raise RuntimeError(f"the frozen teacher changed during training: {record}")


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over every tensor of the state dict as fp32 bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main(Pretrainer, None, __doc__))
