"""Encoders initialised from the ecosystem's checkpoints (model.video_init, model.audio_init).

MAE (ImageNet, for the video encoder, §4.2) and AudioMAE publish `{'model': state_dict}` .pth files with timm's ViT
key names; their patch embedding (a 2-D kernel inflated to the video tubelet), [CLS] token, blocks and final norm are
loaded, positions are compared but not loaded (ours are fixed), the rest is skipped. A shape or depth that does not
fit is refused with the key and both shapes; keys the file does not supply keep their initialisation and are
reported. The key mapping: docs/model.md#encoders-from-mae-checkpoints.
"""

from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig

ENCODERS = {"video_init": "video_encoder", "audio_init": "audio_encoder"}  # config key -> the encoder it initialises
POSITIONS = "pos_embed"
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
SOURCES = {
    "video_init": "the paper's video initialisation is MAE's self-supervised ImageNet ViT-B, mae_pretrain_vit_base.pth "
    "(https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth, listed in the README of "
    "github.com/facebookresearch/mae)",
    "audio_init": "AudioMAE's pre-trained ViT-B is listed in the README of github.com/facebookresearch/AudioMAE",
}


@dataclass
class InitReport:
    """What one checkpoint gave one encoder: our keys loaded, their keys skipped, our keys left as initialised."""

    path: str
    encoder: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # inflation, positions

    def __str__(self) -> str:
        lines = [
            f"{self.encoder} from {self.path}: {len(self.loaded)} tensors loaded; "
            f"skipped {_names(self.skipped)}; missing (kept as initialised) {_names(self.missing)}"
        ]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def _names(keys: list[str]) -> str:
    if not keys:
        return "none"
    groups = sorted({key.split(".")[0] if not key.startswith("blocks.") else "blocks" for key in keys})
    return f"{len(keys)} ({', '.join(groups)})"


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an MAE-layout .pth (`{'model': ...}` or a bare state dict); ValueError naming the file.
    mmap=True maps the tensors instead of reading them (pre-flight reads shapes only)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as err:
        if mmap and "mmap" in str(err):  # a legacy (pre-zip) file cannot be mapped: read it
            return read_checkpoint(path, mmap=False)
        raise ValueError(
            f"{path}: cannot read as a checkpoint with torch.load(weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: cannot read as a checkpoint with torch.load(weights_only=True): {err}") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not an MAE-layout checkpoint: expected {{'model': state dict}} or a state dict")
    return state


def _target(key: str) -> str | None:
    """Our encoder's key for one of theirs; None: not an encoder tensor (skipped)."""
    if key in ("cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        return key
    if key in ("norm.weight", "norm.bias"):
        return f"transformer.{key}"
    if _BLOCK.fullmatch(key):
        return f"transformer.{key}"
    return None


def plan(
    theirs: dict[str, torch.Tensor], ours: dict[str, torch.Size], path: str, encoder: str
) -> tuple[dict[str, tuple[str, bool]], InitReport]:
    """Matches a checkpoint's tensors (shapes only are read) with an encoder's state dict shapes.
    -> ({our key: (their key, inflate)}, report); ValueError for what cannot load."""
    report = InitReport(str(path), encoder)
    depth = 1 + max((int(m.group(1)) for k in theirs if (m := _BLOCK.fullmatch(k))), default=-1)
    our_depth = 1 + max(
        (int(m.group(1)) for k in ours if (m := re.fullmatch(r"transformer\.blocks\.(\d+)\..+", k))), default=-1
    )
    if depth == 0:
        raise ValueError(f"{path}: holds no blocks.N.* tensors: not a ViT encoder in MAE's layout")
    if depth != our_depth:
        raise ValueError(f"{path}: holds {depth} blocks, this model's {encoder} has {our_depth} (model.encoder_depth)")
    mapping = {}
    for key, tensor in theirs.items():
        target = _target(key)
        if target is None or target not in ours:
            report.skipped.append(key)
            continue
        shape, want = tuple(tensor.shape), tuple(ours[target])
        inflate = key == "patch_embed.proj.weight" and len(shape) == 4 and len(want) == 5
        fits = (shape[:2] == want[:2] and shape[2:] == want[3:]) if inflate else shape == want
        if not fits:
            raise ValueError(
                f"{path}: {key} {shape} does not fit {encoder}.{target} {want} "
                f"(set from this config's widths, patch sizes and channels)"
            )
        mapping[target] = (key, inflate)
        if inflate:
            report.notes.append(
                f"patch_embed.proj.weight {shape} inflated to {want}: repeated over the tubelet's "
                f"{want[2]} frames and divided by {want[2]}"
            )
    report.loaded = sorted(mapping)
    report.missing = sorted(k for k in ours if k not in mapping)
    return mapping, report


def compare_positions(theirs: dict[str, torch.Tensor], encoder: nn.Module, cfg_key: str) -> str:
    """A line on the checkpoint's pos_embed against this encoder's fixed table: the rows they share (the first
    time slot of a video grid) compared as values."""
    if POSITIONS not in theirs:
        return f"{POSITIONS}: none in the file"
    table, ours = theirs[POSITIONS].reshape(-1, theirs[POSITIONS].shape[-1]).float(), encoder.pos.float()
    if table.shape[1] != ours.shape[1] or table.shape[0] > ours.shape[0]:
        return f"{POSITIONS} {tuple(theirs[POSITIONS].shape)}: not comparable with this model's {tuple(ours.shape)}"
    diff = (table - ours[: table.shape[0]]).abs().max().item()
    scheme = "video_pos" if cfg_key == "video_init" else "audio_pos"
    verdict = (
        "matches this model's positions"
        if diff < 1e-4
        else f"differs from this model's positions (model.{scheme}): the loaded blocks were trained with other ones"
    )
    return f"{POSITIONS} (fixed here, not loaded) {verdict}: max |difference| {diff:.2e} over {table.shape[0]} rows"


def load_init(encoder: nn.Module, path: str | Path, cfg_key: str) -> InitReport:
    """Copies an MAE-layout checkpoint into `encoder` (a ModalityEncoder) in place. -> the report."""
    name = ENCODERS[cfg_key]
    theirs = read_checkpoint(path)
    ours = encoder.state_dict()
    mapping, report = plan(theirs, {k: v.shape for k, v in ours.items()}, str(path), name)
    with torch.no_grad():
        for target, (key, inflate) in mapping.items():
            value = theirs[key]
            if inflate:
                frames = ours[target].shape[2]
                value = value.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames
            ours[target].copy_(value)
    report.notes.append(compare_positions(theirs, encoder, cfg_key))
    return report


def check_init(cfg: ModelConfig, cfg_key: str, path: str | Path) -> InitReport:
    """Pre-flight: the checkpoint fits this config's encoder (shapes only; the tensors are mapped, not read, and
    the encoder is built on the meta device). ValueError naming key and shapes where it does not."""
    from .mavil import audio_encoder, video_encoder

    with torch.device("meta"):
        encoder = video_encoder(cfg) if cfg_key == "video_init" else audio_encoder(cfg)
    shapes = {k: v.shape for k, v in encoder.state_dict().items()}
    return plan(read_checkpoint(path, mmap=True), shapes, str(path), ENCODERS[cfg_key])[1]


def load_inits(module: nn.Module, cfg: ModelConfig) -> list[InitReport]:
    """model.video_init / model.audio_init into the encoders `module` holds (a Backbone or a Classifier)."""
    reports = []
    for cfg_key, name in ENCODERS.items():
        path = getattr(cfg, cfg_key)
        if path is not None and hasattr(module, name):
            reports.append(load_init(getattr(module, name), path, cfg_key))
    return reports
