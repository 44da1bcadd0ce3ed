"""Consolidate a run's newest DeepSpeed checkpoint into one fp32 model.safetensors.

    python -m mavil.engine.export RUN_DIR [--out PATH]
    python -m mavil.engine.export RUN_DIR --format av-superb [--out PATH] [--force]

For a run that stopped early, or any checkpoint (ZeRO stages 0-3, merged by DeepSpeed's zero_to_fp32); the model
config comes from RUN_DIR/config.json and is stored in the file's metadata. --format av-superb writes the .pth
AV-SUPERB's MAViL expert loads (mavil.model.avsuperb; default RUN_DIR/mavil_av_superb.pth): a pre-training run's
encoders and fusion, or an audio+video fine-tuning run's with fc_norm_av and head_av. A model the expert would not
compute the same (model.encoder_norm=true, not ViT-B, not 527 classes) is refused; --force writes it anyway.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import refuse
from ..config import ModelConfig
from ..files import atomic_write
from ..model import MAViL, save_weights
from .checkpoint import choose


def export(run_dir: Path, out: Path | None = None) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag, notes = choose(run_dir)  # verified against its manifest; a damaged newest one passed over, said so
    if tag is None:
        raise FileNotFoundError(f"{run_dir}: no intact checkpoint" + (f" ({'; '.join(notes)})" if notes else ""))
    if notes:
        print(f"warning: {'; '.join(notes)}: exporting {run_dir / 'checkpoints' / tag}", file=sys.stderr)
    # the run's own, already validated config; the student alone is rebuilt, so its teacher file is not needed
    model_cfg = ModelConfig(**json.loads((run_dir / "config.json").read_text())["model"])
    state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag)
    model = MAViL(model_cfg)
    model.load_state_dict(state)
    return save_weights(model, out or run_dir / "model.safetensors")


AV_SUPERB_FILE = "mavil_av_superb.pth"
MODEL_FILE = "model.safetensors"


def export_av_superb(run_dir: Path, out: Path | None = None, force: bool = False) -> tuple[Path, list[str]]:
    """The run's model as AV-SUPERB's MAViL expert loads it -> (the file, the differences written anyway with
    `force`). ValueError when the model has no counterpart there, or (without `force`) computes other states."""
    import torch

    from ..config import model_config_from_dict
    from ..model.avsuperb import expert_problems, to_avsuperb
    from ..model.weights import load_teacher, read_header

    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        weights = export(run_dir)  # a pre-training run that stopped early: consolidated first
    shapes, raw_cfg = read_header(weights)
    if "head.weight" in shapes:  # a fine-tuning run
        from .evaluate import load_run

        model, cfg = load_run(run_dir, torch.device("cpu"))
        model_cfg, classes = cfg.model, model.head.out_features
        state, _ = to_avsuperb(model)
    else:
        strays = [k for k in shapes if not k.startswith(("backbone.", "audio_decoder.", "video_decoder."))]
        if strays:
            raise ValueError(f"{weights}: tensors that are neither backbone nor decoder: {strays[:6]}")
        model_cfg, classes = model_config_from_dict({**raw_cfg, "stage": 1, "teacher": None}), None
        state, _ = to_avsuperb(load_teacher(weights), model_cfg)  # the decoders are left out
    problems = expert_problems(model_cfg, classes)
    if problems and not force:
        raise ValueError(
            "AV-SUPERB's expert would not compute this model's states: "
            + "; ".join(problems)
            + " (--force writes it anyway)"
        )
    out = out or run_dir / AV_SUPERB_FILE
    atomic_write(out, lambda partial: torch.save({"model": state}, partial))
    return out, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument(
        "--out", type=Path, help=f"default: RUN_DIR/model.safetensors (av-superb: RUN_DIR/{AV_SUPERB_FILE})"
    )
    parser.add_argument("--format", choices=("safetensors", "av-superb"), default="safetensors")
    parser.add_argument(
        "--force",
        action="store_true",
        help="av-superb: write a model the expert computes differently, printing each difference",
    )
    args = parser.parse_args(argv)
    try:
        if args.format == "av-superb":
            path, problems = export_av_superb(args.run_dir, args.out, args.force)
            for problem in problems:
                print(f"WARNING: {problem}", file=sys.stderr)
            print(f"exported {path} (AV-SUPERB MAViL expert layout)")
            return 0
        print(f"exported {export(args.run_dir, args.out)}")
    except (FileNotFoundError, ValueError) as err:
        return refuse(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
