"""The DeepSpeed training loop that pre-training and fine-tuning share.

A subclass says what to train and on what: `make_plan` (the run plan's builder, `run.py`), `build_model`,
`param_groups`, `epoch_loader` and `losses(batch)`; this class does the rest. A trainer is made from its plan (the
training set's health opened first); the model and the DeepSpeed engine are built when `run` starts. The run
directory (train.output_dir) gets config.json, metrics.jsonl, checkpoints/ and, at the end, model.safetensors.
Relaunching the same command resumes from the newest complete checkpoint (`checkpoint`). Non-finite steps are
skipped (`numerics`); signals stop every rank after a checkpoint (`preempt`); `inject` holds the tests' fault hooks.
Exit statuses: 0 done, 2 refused (config, data, files, disk, run directory), 3 too many skipped steps, 4 stopped by
a signal after its checkpoint. The loop's rules (micro-batches per epoch, resume, locks): docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..cli import config_parser, refuse
from ..config import Config, ConfigError, load_config
from ..deps import MissingDependency
from ..model import save_weights
from ..model.vit import resolve_attention
from . import checkpoint, inject, runlock
from .launch import init_distributed, launched_world_size
from .metrics import Metrics, rewind
from .numerics import NonFiniteStop, StepGuard, loss_to_backward
from .preempt import STATUS as PREEMPTED_STATUS, Preempted, Preemption
from .run import Plan
from .schedule import lr_at, set_lr


class Trainer:
    tokens_per_sample = 0  # for tokens/s in the metrics; subclasses set it
    flops_per_sample = 0.0  # one training step's model FLOPs per clip, for model TFLOP/s; 0: not counted
    preemption: Preemption | None = None  # SIGTERM/SIGINT and the launcher's exit (`preempt`); main sets it

    def __init__(self, plan: Plan, rank: int, world: int, device: torch.device):
        self.plan, self.cfg, self.rank, self.world, self.device = plan, plan.cfg, rank, world, device
        self.run_dir = Path(self.cfg.train.output_dir)
        self.health = plan.train_set.open()  # only usable clips are read; refused above the ceiling
        if self.health.usable < self.cfg.train.global_batch:  # steps would be short
            raise ConfigError(
                f"{self.cfg.source}: train.global_batch = {self.cfg.train.global_batch}: the training set "
                f"{self.health.root} has {self.health.usable} usable clips, fewer than one global batch"
            )

    def start(self) -> None:
        """The run directory claimed (resumed, or discarded with train.restart), the model and engine built."""
        cfg, rank = self.cfg, self.rank
        self.resume_tag = checkpoint.resume_tag(self.run_dir, cfg.train.restart)  # refuses a run it cannot resume
        if cfg.train.restart and rank == 0:
            checkpoint.discard(self.run_dir)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = self.build_model()
        checkpoint.seed_rng(self.plan.seed(rank))  # masks and mixing differ per rank
        self.engine = self._deepspeed(model)
        inject.install(self)  # the reliability tests' faults around losses and backward; none without MAVIL_INJECT
        self.accumulation = self.engine.gradient_accumulation_steps()
        self.metrics = Metrics(
            self.run_dir / "metrics.jsonl", self.tokens_per_sample, self.device, self.flops_per_sample
        )
        self.guard = StepGuard(cfg.train.max_bad_steps, self.metrics, rank)
        self.checkpoint_owed = False  # a checkpoint fell due at a skipped step
        self.last_line: dict = {}
        if rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.warn_of_config_changes()
            (self.run_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    def warn_of_config_changes(self) -> None:
        """A relaunch that will resume a checkpoint under another config than the run's: say what changed (the run
        goes on: lengthening train.epochs or train.max_steps is a change users make on purpose)."""
        saved = self.run_dir / "config.json"
        if self.resume_tag is None or not saved.is_file():
            return
        changes = config_changes(json.loads(saved.read_text()), self.cfg.to_dict())
        if changes:
            print(
                f"warning: resuming {self.run_dir} under a config that differs from the one it was run with: "
                f"{'; '.join(changes)}",
                file=sys.stderr,
                flush=True,
            )

    # what a subclass provides
    @staticmethod
    def make_plan(cfg: Config, world: int) -> Plan:
        """The run plan (`run.py`): refuses (ConfigError, MissingDependency) what cannot run, before any work."""
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        raise NotImplementedError

    def epoch_loader(self, epoch: int):
        """This rank's part of `epoch`, the same on every relaunch: an iterable of batches with len() and
        full_batches (the batches of exactly train.micro_batch clips, first), as `Loader`."""
        raise NotImplementedError

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """{"loss": scalar to minimise, other named parts to log}."""
        raise NotImplementedError

    def finish(self) -> Path:
        """After the last epoch: the consolidated export."""
        return self.export()

    # the loop
    def _deepspeed(self, model: torch.nn.Module):
        import deepspeed

        optimizer = torch.optim.AdamW(self.param_groups(model), lr=0.0, betas=tuple(self.cfg.train.betas))
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.plan.deepspeed)
        if self.cfg.train.compile:  # in place (nn.Module.compile): state_dict keys and checkpoints stay as they are
            dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32
            resolve_attention(engine.module, self.device, dtype)
            engine.compile()  # the accelerator's backend (inductor); the attention backends resolved first, eagerly
        return engine

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32

    def micro_steps(self, loader) -> int:
        """Micro-batches every rank trains this epoch: whole micro-batches only (a rank's partial tail is left out),
        the fewest any rank has, rounded down to whole accumulation windows."""
        full = loader.full_batches
        count = torch.tensor([full], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        total = int(count) // self.accumulation * self.accumulation
        if total == 0:
            raise ConfigError(
                f"{full} whole micro-batches of {self.cfg.train.micro_batch} clips on a rank, fewer "
                f"than the {self.accumulation} accumulation steps of one optimizer step (train.global_batch too "
                f"large for the data)"
            )
        return total

    def run(self) -> Path:
        self.start()
        state = checkpoint.load(self.engine, self.run_dir, self.resume_tag) or {"epoch": 0, "micro_step": 0}
        self.rewind_logs(self.engine.global_steps)
        if self.engine.global_steps and self.rank == 0:
            print(
                f"resuming at step {self.engine.global_steps}: epoch {state['epoch']}, "
                f"micro-batch {state['micro_step']}"
            )
        if self.rank == 0:
            print(f"data: {self.health.root}: {self.data_tally()}", flush=True)
        if self.preemption is not None:
            self.preemption.armed = True  # from here a signal asks for a checkpoint at the next step's end
        for epoch in range(state["epoch"], self.cfg.train.epochs):
            if self.reached_max_steps() or self.train_epoch(
                epoch, state["micro_step"] if epoch == state["epoch"] else 0
            ):
                break
        return self.finish()

    def reached_max_steps(self) -> bool:
        return self.cfg.train.max_steps is not None and self.engine.global_steps >= self.cfg.train.max_steps

    def rewind_logs(self, step: int) -> None:
        """The logs cut back to the resumed `step` (0: a fresh start): a crash may have logged steps past it."""
        if self.rank == 0:
            rewind(self.metrics.path, lambda line: line.get("step", 0) <= step)
        rewind(self.run_dir / f"keys-rank{self.rank}.jsonl", lambda line: line["step"] < step)  # steps done before it

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
        self.end_of_epoch(epoch)
        return False

    def end_of_epoch(self, epoch: int) -> None:
        tally = self.data_tally()  # one metrics line per epoch: {"event": "data_health", "step", "epoch", "data_*"...}
        self.metrics.event("data_health", step=self.engine.global_steps, epoch=epoch + 1, **tally.fields())
        if self.rank == 0:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in self.last_line.items() if k.startswith("loss"))
            print(f"epoch {epoch}: step {self.engine.global_steps}, {parts}; data: {tally}", flush=True)

    def data_tally(self):
        """The training set's clips used, skipped and repaired per kind under this model's windows."""
        return self.health.tally(self.plan.windows)

    def train_micro_batch(self, batch: dict, epoch: int) -> None:
        if self.cfg.train.record_keys:
            with open(self.run_dir / f"keys-rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"epoch": epoch, "step": self.engine.global_steps, "keys": batch["key"]}) + "\n")
        losses = self.losses(batch)
        self.engine.backward(loss_to_backward(losses["loss"]))
        self.engine.step()
        self.guard.add(losses, len(batch["key"]))

    def after_optimizer_step(self, epoch: int, next_index: int, total: int, bar) -> bool:
        """Skipped steps, logging and checkpoints; -> True when train.max_steps is reached."""
        train, step, applied = self.cfg.train, self.engine.global_steps, self.engine.was_step_applied()
        epoch_done = next_index == total
        self.guard.close_step(applied, step, epoch + next_index / total, self.engine.skipped_steps)
        if (step % train.log_every == 0 or epoch_done) and self.metrics.micro_steps:  # none: all skipped
            self.last_line = self.metrics.flush(
                step=step,
                epoch=epoch + next_index / total,
                lr=self.engine.optimizer.param_groups[0]["lr"],
                skipped_steps=self.engine.skipped_steps,
            )
            bar.set_postfix(loss=f"{self.last_line['loss']:.4f}", clips_s=f"{self.last_line['samples_per_s']:.1f}")
            self.monitor(step)
        finished = self.reached_max_steps()
        self.checkpoint_owed |= (
            finished or epoch_done or (train.checkpoint_every > 0 and step % train.checkpoint_every == 0)
        )
        stop = self.preemption is not None and self.preemption.requested(self.device)  # agreed by every rank
        self.checkpoint_owed |= stop
        if self.checkpoint_owed and applied:
            self.save(epoch + 1, 0) if epoch_done else self.save(epoch, next_index)
            self.checkpoint_owed = False
        if stop and applied:  # after a skipped step the stop waits for the next applied one, and its checkpoint
            self.preemption.stopped()
            raise Preempted(
                f"stopped by {self.preemption.reason or 'a signal on another rank'} after step {step}: "
                f"checkpoint {self.run_dir / 'checkpoints' / checkpoint.tag_for(step)}; "
                f"relaunch the same command to resume"
            )
        return finished

    def monitor(self, step: int) -> None:
        """The metrics line to DeepSpeed's monitors (TensorBoard, W&B, CSV) where the config enables one."""
        if self.engine.monitor.enabled:
            events = [(f"Train/{name}", value, step) for name, value in self.last_line.items() if name != "step"]
            self.engine.monitor.write_events(events)

    def save(self, epoch: int, micro_step: int) -> None:
        checkpoint.save(self.engine, self.run_dir, {"epoch": epoch, "micro_step": micro_step})

    def export(self) -> Path:
        path = self.run_dir / "model.safetensors"
        inject.kill_point("export", self.engine.global_steps, self.rank)
        if self.rank == 0:
            save_weights(self.engine.module, path)
            print(f"exported {path}")
        dist.barrier()
        return path


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every value that differs between two config dicts, nested keys dotted; a key only one
    side has (a schema that grew since) shows as (absent) on the other."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, ABSENT), new.get(key, ABSENT)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += config_changes(before, after, f"{prefix}{key}.")
        elif before != after:
            changes.append(f"{prefix}{key}: {_shown(before)} -> {_shown(after)}")
    return changes


ABSENT = object()


def _shown(value) -> str:
    return "(absent)" if value is ABSENT else json.dumps(value)


def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    parser = config_parser(doc)
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    return parser.parse_args(argv)


def main(trainer_class: type[Trainer], argv: list[str] | None, doc: str) -> int:
    """The run plan (refused before any work when it cannot run: exit status 2), process group, then train."""
    args = parse_args(argv, doc)
    preemption = Preemption()  # from here a signal is one line, never a traceback
    try:
        plan = checked_plan(trainer_class, args.config, args.overrides)
        if int(os.environ.get("RANK", 0)) == 0:  # before the process group (its port) and before the run directory
            runlock.acquire(Path(plan.cfg.train.output_dir))
    except (ConfigError, MissingDependency) as err:
        return refuse(err)
    rank, world, device = init_distributed(plan.cfg.train.device)
    try:
        trainer = trainer_class(plan, rank, world, device)
        trainer.preemption = preemption
        trainer.run()
    except checkpoint.DiskFull as err:  # agreed by every rank (one line from rank 0), or a write that failed here
        return refuse(err, show=rank == 0 or err.local)
    except Preempted as err:
        if rank == 0:
            print(str(err), file=sys.stderr, flush=True)
        return PREEMPTED_STATUS
    except ConfigError as err:  # the data: too many unusable clips, fewer than one global batch
        return refuse(err, show=rank == 0)
    except NonFiniteStop as err:  # too many skipped steps in a row
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        runlock.release_unused()
    return 0


def checked_plan(trainer_class: type[Trainer], path: str, overrides: list[str]) -> Plan:
    """The run's plan from its config file and overrides, for the launcher's world size; raises ConfigError or
    MissingDependency naming the problem. Nothing is started or written yet."""
    return trainer_class.make_plan(load_config(path, overrides), launched_world_size())
