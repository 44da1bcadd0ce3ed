"""Overfit one fixed batch with the real model, stage 1 then stage 2, and report the losses.

    python -m mavil.engine.overfit --stage1 configs/tiny/stage1.json --stage2 configs/tiny/stage2.json \
        [--steps 80] [--lr 2e-3] [--out runs/overfit] [section.key=value ...]

A sanity check of the whole model path on the CPU in seconds: stage 1 trains on raw targets and
is exported to a consolidated weights file; stage 2 loads that file as its frozen teacher and
trains a fresh student on its fusion features. Both losses must fall. The batch is smooth random
noise (see `example_batch`) of the configs' input shapes.
Overrides apply to both configs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..cli import refuse
from ..config import Config, ConfigError, ModelConfig, load_config
from ..model import build_model, save_weights
from .optim import param_groups


def example_batch(cfg: ModelConfig, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """{"audio": (B, 1, T, F), "video": (B, 3, T, H, W)}: smooth random inputs of unit variance, deterministic
    by seed. Each is noise on a grid 32x coarser than the input, interpolated up, so that a masked patch can
    be inferred from the visible ones around it, as in real spectrograms and frames."""
    gen = torch.Generator().manual_seed(seed)
    a_size = (cfg.audio_frames, cfg.audio_mel_bins)
    v_size = (cfg.video_frames, cfg.video_size, cfg.video_size)
    a_coarse = torch.randn(batch, 1, *[max(s // 32, 2) for s in a_size], generator=gen)
    v_coarse = torch.randn(batch, 3, *[max(s // 32, 2) for s in v_size], generator=gen)
    audio = F.interpolate(a_coarse, size=a_size, mode="bilinear", align_corners=True)
    video = F.interpolate(v_coarse, size=v_size, mode="trilinear", align_corners=True)
    return {"audio": audio / audio.std(), "video": video / video.std()}


def train_steps(model: torch.nn.Module, batch: dict, steps: int, lr: float, cfg: Config, desc: str) -> list[dict]:
    """`steps` AdamW steps (the paper's betas and weight decay) on one batch -> each step's loss parts."""
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=lr, betas=tuple(cfg.train.betas))
    history = []
    bar = tqdm(range(steps), desc=desc, file=sys.stdout, dynamic_ncols=True, disable=None)
    for _ in bar:
        losses = model(batch["audio"], batch["video"])
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
    return history


def overfit(stage1: Config, stage2: Config, steps: int, lr: float, out: Path) -> dict[str, list[dict]]:
    """Stage 1 on one batch, export, stage 2 with that export as teacher. -> per-step losses per stage."""
    torch.manual_seed(stage1.train.seed)
    batch = example_batch(stage1.model, stage1.train.micro_batch, stage1.train.seed)
    teacher_path = out / "stage1.safetensors"
    student = build_model(stage1.model)
    history = {"stage1": train_steps(student, batch, steps, lr, stage1, "stage 1")}
    save_weights(student, teacher_path)
    stage2.model.teacher = str(teacher_path)
    student = build_model(stage2.model)
    history["stage2"] = train_steps(student, batch, steps, lr, stage2, "stage 2")
    save_weights(student, out / "stage2.safetensors")
    return history


def load_configs(stage1_path: str | Path, stage2_path: str | Path, overrides: list[str] = ()) -> tuple[Config, Config]:
    """Both configs with `overrides`. Stage 2's teacher does not exist yet (overfit writes it), so its config
    is validated as stage 1 and switched to stage 2 after."""
    stage1 = load_config(stage1_path, overrides)
    stage2 = load_config(stage2_path, [*overrides, "model.stage=1", "model.teacher=null"])
    stage2.model.stage = 2
    return stage1, stage2


def report(history: dict[str, list[dict]]) -> str:
    lines = [f"{'stage':<8}{'loss part':<20}{'first':>10}{'last':>10}{'last/first':>12}"]
    for stage, steps in history.items():
        for name in steps[0]:
            first, last = steps[0][name], steps[-1][name]
            lines.append(f"{stage:<8}{name:<20}{first:>10.4f}{last:>10.4f}{last / first:>12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", default="configs/tiny/stage1.json", help="stage-1 config")
    parser.add_argument("--stage2", default="configs/tiny/stage2.json", help="stage-2 config (its teacher is replaced)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", type=Path, default=Path("runs/overfit"))
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied to both configs")
    args = parser.parse_args(argv)
    try:
        stage1, stage2 = load_configs(args.stage1, args.stage2, args.overrides)
    except ConfigError as err:
        return refuse(err)
    history = overfit(stage1, stage2, args.steps, args.lr, args.out)
    (args.out / "history.json").write_text(json.dumps(history, indent=1))
    print(report(history))
    print(f"outputs: {args.out}/stage1.safetensors, {args.out}/stage2.safetensors, {args.out}/history.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
