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
from ..files import atomic_write
from .mavil import MAViL, Backbone
from .pretrained import load_inits

CONFIG_KEY = "mavil.model_config"
BACKBONE_PREFIX = "backbone."
# The model-config keys that shape each part of a Backbone's tensors: a stored part fits when they agree. The position
# scheme shapes no tensor but is what the weights were trained with, so it must agree as well.
_ENCODER_KEYS = ("encoder_dim", "encoder_depth", "encoder_heads", "mlp_ratio")
PART_KEYS = {
    "audio_encoder": ("audio_patch", "audio_pos", *_ENCODER_KEYS),
    "video_encoder": ("video_patch", "video_pos", *_ENCODER_KEYS),
    "fusion": ("encoder_dim", "encoder_heads", "mlp_ratio", "fusion", "fusion_depth", "bottleneck_tokens"),
}
# The input sizes set only the token grid, whose fixed positions are rebuilt for any size: the weights load into a
# model of other lengths (fine-tuning ESC-50's 512 frames from a 1024-frame export). A teacher must match them too:
# its features are the student's per-token targets.
GRID_KEYS = {
    "audio_encoder": ("audio_frames", "audio_mel_bins"),
    "video_encoder": ("video_frames", "video_size"),
    "fusion": (),
}


def save_weights(model: MAViL, path: str | Path) -> Path:
    """Writes every parameter and persistent buffer as fp32, and the model config, to `path`; under a temporary
    name first, renamed when complete, so a crash mid-write never leaves a half-written file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().float().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = {CONFIG_KEY: json.dumps(dataclasses.asdict(model.cfg))}
    return atomic_write(path, lambda partial: save_file(state, str(partial), metadata=metadata))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (tensors by name, the stored model config as a dict); errors name the file."""
    return _read(path, lambda f, name: f.get_tensor(name))


def read_header(path: str | Path) -> tuple[dict[str, list[int]], dict]:
    """-> (tensor shapes by name, the stored model config as a dict), from the file's header alone: no tensor
    is read, so checking a ViT-B teacher costs milliseconds. A truncated file fails here already (the header
    says where every tensor ends). Errors as `read_weights`."""
    return _read(path, lambda f, name: list(f.get_slice(name).get_shape()))


def _read(path: str | Path, entry) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            entries = {name: entry(f, name) for name in f.keys()}
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: cannot read as a safetensors weights file: {err}") from None
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: not a MAViL weights file (no '{CONFIG_KEY}' in its metadata)")
    try:
        return entries, json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its '{CONFIG_KEY}' metadata is not valid JSON: {err}") from None


def load_teacher(path: str | Path) -> Backbone:
    """The encoders and fusion of a saved MAViL, frozen in eval mode: the stage-2 teacher."""
    state, raw_cfg = read_weights(path)
    teacher = Backbone(_backbone_config(path, raw_cfg))
    backbone_state = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    try:
        teacher.load_state_dict(backbone_state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the architecture in its own metadata: {err}") from None
    return teacher.requires_grad_(False).eval()


def _backbone_config(path: str | Path, raw_cfg: dict) -> ModelConfig:
    # Only the backbone matters to a reader, so the stored model's own stage and teacher do not.
    # Nor do the files its encoders were initialised from (they need not exist where the export is read), nor its
    # losses' grouping (an export from before model.contrastive_group may hold global_negatives = true).
    raw_cfg = {
        **raw_cfg,
        "stage": 1,
        "teacher": None,
        "video_init": None,
        "audio_init": None,
        "contrastive_group": None,
    }
    return model_config_from_dict(raw_cfg, source=f"{path} metadata")


def stored_architecture(path: str | Path, parts: tuple[str, ...]) -> ModelConfig:
    """The model config of the weights file `path`, checked from its header alone to hold tensors of each backbone
    part in `parts` ("audio_encoder", "video_encoder", "fusion"); ValueError (or ConfigError) naming the file."""
    shapes, raw_cfg = read_header(path)
    for part in parts:
        prefix = f"{BACKBONE_PREFIX}{part}."
        if not any(name.startswith(prefix) for name in shapes):
            raise ValueError(f"{path}: holds no {prefix}* tensors: not a pre-training export")
    return _backbone_config(path, raw_cfg)


def architecture_differences(
    stored: ModelConfig, wanted: ModelConfig, parts: tuple[str, ...], same_grid: bool = False
) -> list[tuple]:
    """(key, stored value, wanted value) for each model-config key that shapes `parts` and differs; with
    `same_grid` also the input sizes (a teacher's tokens must be the student's)."""
    keys = dict.fromkeys(key for part in parts for key in (*PART_KEYS[part], *(GRID_KEYS[part] if same_grid else ())))
    if "mbt" not in (stored.fusion, wanted.fusion):
        keys.pop("bottleneck_tokens", None)  # vanilla fusion has no bottleneck tokens
    return [
        (key, getattr(stored, key), getattr(wanted, key))
        for key in keys
        if getattr(stored, key) != getattr(wanted, key)
    ]


def build_model(cfg: ModelConfig) -> MAViL:
    """The pre-training model for `cfg`; in stage 2 with its teacher loaded from `cfg.teacher`; its encoders
    initialised from model.video_init / audio_init where set (the reports in `model.init_reports`)."""
    teacher = load_teacher(cfg.teacher) if cfg.stage == 2 else None
    model = MAViL(cfg, teacher)
    model.init_reports = load_inits(model.backbone, cfg)  # model.video_init / audio_init, where set
    return model
