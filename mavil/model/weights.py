"""Consolidated weights files: one fp32 .safetensors per model, its `model` config in the metadata.

Such a file is what stage 2 loads as its teacher, what fine-tuning starts from and what a release
ships. The engine's sharded DeepSpeed checkpoints are for resuming; this is for everything else.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import ModelConfig, model_config_from_dict
from .mavil import MAViL, Backbone

CONFIG_KEY = "mavil.model_config"
BACKBONE_PREFIX = "backbone."


def save_weights(model: MAViL, path: str | Path) -> Path:
    """Writes every parameter and persistent buffer as fp32, and the model config, to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().float().cpu().contiguous() for name, t in model.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(dataclasses.asdict(model.cfg))})
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors by name, the stored model config as a dict); errors name the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: cannot read as a safetensors weights file: {err}") from None
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a MAViL weights file (no '{CONFIG_KEY}' in its metadata)")
    return state, json.loads(metadata[CONFIG_KEY])


def load_teacher(path: str | Path) -> Backbone:
    """The encoders and fusion of a saved MAViL, frozen in eval mode: the stage-2 teacher."""
    state, raw_cfg = read_weights(path)
    # Only the backbone is rebuilt, so the stored model's own stage and teacher do not matter.
    cfg = model_config_from_dict({**raw_cfg, "stage": 1, "teacher": None}, source=f"{path} metadata")
    teacher = Backbone(cfg)
    backbone_state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    try:
        teacher.load_state_dict(backbone_state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the architecture in its own metadata: {err}") from None
    return teacher.requires_grad_(False).eval()


def build_model(cfg: ModelConfig) -> MAViL:
    """The pre-training model for `cfg`; in stage 2 with its teacher loaded from `cfg.teacher`."""
    teacher = load_teacher(cfg.teacher) if cfg.stage == 2 else None
    return MAViL(cfg, teacher)
