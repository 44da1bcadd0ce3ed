"""Consolidate a run's newest DeepSpeed checkpoint into one fp32 model.safetensors.

    python -m mavil.engine.export RUN_DIR [--out PATH]

Pre-training exports by itself at the end; this is for a run that stopped early, or for any
checkpoint (ZeRO stages 0-3: DeepSpeed's own zero_to_fp32 merges the shards). The model config
comes from RUN_DIR/config.json and is stored in the file's metadata.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import ModelConfig
from ..model import MAViL, save_weights
from .checkpoint import latest_tag


def export(run_dir: Path, out: Path | None = None) -> Path:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = latest_tag(run_dir)
    if tag is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint (checkpoints/latest is missing)")
    # the run's own, already validated config; the student alone is rebuilt, so its teacher file is not needed
    model_cfg = ModelConfig(**json.loads((run_dir / "config.json").read_text())["model"])
    state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=tag)
    model = MAViL(model_cfg)
    model.load_state_dict(state)
    return save_weights(model, out or run_dir / "model.safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/model.safetensors")
    args = parser.parse_args(argv)
    try:
        print(f"exported {export(args.run_dir, args.out)}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
