"""MAViL pre-training, stage 1 or stage 2 (the config's model.stage), with DeepSpeed ZeRO.

    deepspeed engine/pretrain.py --config configs/stage1.json [section.key=value ...]
    deepspeed --num_gpus 2 engine/pretrain.py --config configs/tiny/stage1.json      # two processes (CPUs too)
    python engine/pretrain.py --config configs/tiny/stage1.json                      # one process, no launcher

The run directory (train.output_dir) gets config.json, metrics.jsonl, checkpoints/ and, at the end,
model.safetensors (the consolidated fp32 model). Relaunching the same command resumes from the newest
complete checkpoint, data position included. One epoch is one pass of the DALI pipeline over each
rank's part of the clips. Every rank runs the same number of micro-batches per epoch, a whole number
of accumulation windows: the fewest any rank has, rounded down to a multiple of the accumulation
steps. That keeps the ranks' gradient exchanges paired and lets every epoch end on an optimizer step
(so a checkpoint never holds half-accumulated gradients); it leaves out at most one batch plus one
accumulation window's worth of a rank's clips per epoch, a different tail each epoch.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (the deepspeed launcher does): import as the package
    __package__ = "mavil.engine"
    import mavil.engine  # noqa: F401

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..config import Config, ConfigError, deepspeed_config, load_config
from ..data.pipeline import Loader, LoaderSpec
from ..data.shards import read_manifest
from ..model import build_model, load_teacher, save_weights
from . import checkpoint
from .launch import dataset_root, init_distributed
from .metrics import Metrics
from .optim import param_groups
from .schedule import lr_at, set_lr


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a run config (JSON)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    return parser.parse_args(argv)


class Pretrainer:
    def __init__(self, cfg: Config, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.run_dir = Path(cfg.train.output_dir)
        self.root = dataset_root(cfg.data, rank)
        self.clips = read_manifest(self.root)["clips"]
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = build_model(cfg.model)
        torch.manual_seed(cfg.train.seed * 1000 + rank)  # masks differ per rank
        self.engine = self._deepspeed(model)
        self.accumulation = self.engine.gradient_accumulation_steps()
        self.metrics = Metrics(self.run_dir / "metrics.jsonl", cfg.model.audio_tokens + cfg.model.video_tokens, device)
        self.last_line: dict = {}
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def _deepspeed(self, model: torch.nn.Module):
        import deepspeed

        ds_config = deepspeed_config(self.cfg, self.world)
        ds_config["zero_allow_untested_optimizer"] = True  # our AdamW with its parameter groups
        if self.device.type != "cuda":
            ds_config["bf16"] = {"enabled": False}  # fp32 on the CPU
        train = self.cfg.train
        optimizer = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=0.0, betas=tuple(train.betas))
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        return engine

    def epoch_loader(self, epoch: int) -> Loader:
        """This epoch's part of the clips: the parts rotate over ranks, the order and augmentation follow (seed, epoch)."""
        spec = LoaderSpec.from_config(self.cfg, self.cfg.train.micro_batch, train=True)
        return Loader(self.root, spec, rank=(self.rank + epoch) % self.world, world_size=self.world,
                      seed=self.cfg.train.seed * 1000 + epoch, device=self.device)

    def micro_steps(self, loader: Loader) -> int:
        count = torch.tensor([len(loader)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        total = int(count) // self.accumulation * self.accumulation
        if total == 0:
            raise ValueError(f"{self.root}: {len(loader)} micro-batches on a rank, fewer than the {self.accumulation} "
                             f"accumulation steps of one optimizer step (train.global_batch too large for the data)")
        return total

    def run(self) -> Path:
        state = checkpoint.load_latest(self.engine, self.run_dir) or {"epoch": 0, "micro_step": 0}
        if self.engine.global_steps and self.rank == 0:
            print(f"resuming at step {self.engine.global_steps}: epoch {state['epoch']}, micro-batch {state['micro_step']}")
        for epoch in range(state["epoch"], self.cfg.train.epochs):
            if self.train_epoch(epoch, state["micro_step"] if epoch == state["epoch"] else 0):
                break
        return self.export()

    def train_epoch(self, epoch: int, start: int) -> bool:
        """Trains micro-batches start.. of `epoch`; -> True when train.max_steps is reached."""
        loader = self.epoch_loader(epoch)
        total = self.micro_steps(loader)
        batches = iter(loader)
        for _ in range(start):  # resume: the same order, fast-forwarded
            next(batches)
        bar = tqdm(total=total, initial=start, desc=f"epoch {epoch}", disable=self.rank != 0, dynamic_ncols=True)
        for index in range(start, total):
            if index % self.accumulation == 0:  # a new accumulation window: the lr of this point of training
                set_lr(self.engine.optimizer, lr_at(epoch + index / total, self.cfg.train))
            self.train_micro_batch(next(batches), epoch)
            bar.update()
            if (index + 1) % self.accumulation == 0 and self.after_optimizer_step(epoch, index + 1, total, bar):
                bar.close()
                return True
        bar.close()
        if self.rank == 0:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in self.last_line.items() if k.startswith("loss"))
            print(f"epoch {epoch}: step {self.engine.global_steps}, {parts}", flush=True)
        return False

    def train_micro_batch(self, batch: dict, epoch: int) -> None:
        if self.cfg.train.record_keys:
            with open(self.run_dir / f"keys-rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": self.engine.global_steps, "keys": batch["key"]}) + "\n")
        dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        losses = self.engine(batch["audio"].to(dtype), batch["video"].to(dtype))
        self.engine.backward(losses["loss"])
        self.engine.step()
        self.metrics.add(losses, len(batch["key"]))

    def after_optimizer_step(self, epoch: int, next_index: int, total: int, bar) -> bool:
        """Logging and checkpoints; -> True when train.max_steps is reached."""
        train, step = self.cfg.train, self.engine.global_steps
        epoch_done = next_index == total
        if step % train.log_every == 0 or epoch_done:
            self.last_line = self.metrics.flush(step=step, epoch=epoch + next_index / total,
                                                lr=self.engine.optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{self.last_line['loss']:.4f}", clips_s=f"{self.last_line['samples_per_s']:.1f}")
            self.monitor(step)
        finished = train.max_steps is not None and step >= train.max_steps
        if finished or epoch_done or (train.checkpoint_every and step % train.checkpoint_every == 0):
            self.save(epoch + 1, 0) if epoch_done else self.save(epoch, next_index)
        return finished

    def monitor(self, step: int) -> None:
        """The metrics line to DeepSpeed's monitors (TensorBoard, W&B, CSV) where the config enables one."""
        if self.engine.monitor.enabled:
            events = [(f"Train/{name}", value, step) for name, value in self.last_line.items() if name != "step"]
            self.engine.monitor.write_events(events)

    def save(self, epoch: int, micro_step: int) -> None:
        checkpoint.save(self.engine, self.run_dir, f"step{self.engine.global_steps:08d}",
                        {"epoch": epoch, "micro_step": micro_step})

    def export(self) -> Path:
        path = self.run_dir / "model.safetensors"
        if self.rank == 0:
            save_weights(self.engine.module, path)
            print(f"exported {path}")
            self.check_teacher()
        dist.barrier()
        return path

    def check_teacher(self) -> None:
        """Stage 2: the teacher's weights at the end must be the file's, bit for bit; recorded in teacher.json."""
        teacher = self.engine.module.teacher
        if teacher is None:
            return
        record = {"file": self.cfg.model.teacher, "sha256_file": fingerprint(load_teacher(self.cfg.model.teacher)),
                  "sha256_after_training": fingerprint(teacher)}
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank, world, device = init_distributed()
    try:
        deepspeed_config(cfg, world)  # refuse a batch that cannot split over these ranks before any work
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    Pretrainer(cfg, rank, world, device).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
