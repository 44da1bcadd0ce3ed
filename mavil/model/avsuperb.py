"""Our weights in the layout of AV-SUPERB's MAViL expert (roger-tseng/av-superb, upstream_models/mavil), and back.

The expert builds the authors' ViT-MM model and loads `torch.load(path)['model']`. It computes our fusion states only
for model.encoder_norm=False (vanilla fusion); `expert_problems` names every way a model would differ there.
`to_avsuperb` maps or deliberately drops every key of ours and checks every produced key and shape against
`expected_layout` (a misnamed key would fail silently under a non-strict load).
The key mapping: docs/model.md#av-superbs-mavil-expert.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import ModelConfig
from .classifier import Classifier
from .mavil import Backbone, MAViL

ENCODERS = {"audio_encoder": "", "video_encoder": "_v"}  # ours -> their suffix
BLOCK_TENSORS = (
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
)
# What the expert's constructor builds (vitmm_base_patch16, n_frm=8, 1024 x 128 audio, num_classes=527)
EXPERT_MODEL = {
    "encoder_dim": 768,
    "encoder_depth": 12,
    "encoder_heads": 12,
    "mlp_ratio": 4.0,
    "audio_frames": 1024,
    "audio_mel_bins": 128,
    "audio_patch": [16, 16],
    "video_frames": 8,
    "video_size": 224,
    "video_patch": [2, 16, 16],
}
EXPERT_CLASSES = 527


def _block_shapes(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    shapes = [
        (dim,),
        (dim,),
        (3 * dim, dim),
        (3 * dim,),
        (dim, dim),
        (dim,),
        (dim,),
        (dim,),
        (hidden, dim),
        (hidden,),
        (dim, hidden),
        (dim,),
    ]
    return {f"{prefix}.{name}": shape for name, shape in zip(BLOCK_TENSORS, shapes)}


def expected_layout(cfg: ModelConfig, fusion_depth: int, classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """Every key the expert's model holds and its shape, for a model of `cfg` with `fusion_depth` fusion blocks;
    with `classes`, the fine-tuned audio+video head too (fc_norm_av, head_av)."""
    dim, hidden = cfg.encoder_dim, int(cfg.encoder_dim * cfg.mlp_ratio)
    layout = {}
    for suffix, chans, patch, tokens in (
        ("", 1, cfg.audio_patch, cfg.audio_tokens),
        ("_v", 3, cfg.video_patch, cfg.video_tokens),
    ):
        layout.update(
            {
                f"patch_embed{suffix}.proj.weight": (dim, chans, *patch),
                f"patch_embed{suffix}.proj.bias": (dim,),
                f"cls_token{suffix}": (1, 1, dim),
                f"pos_embed{suffix}": (1, 1 + tokens, dim),
            }
        )
        for n in range(cfg.encoder_depth):
            layout.update(_block_shapes(f"blocks{suffix}.{n}", dim, hidden))
    for n in range(fusion_depth):
        layout.update(_block_shapes(f"blocks_av.{n}", dim, hidden))
    if classes is not None:
        layout.update(
            {
                "fc_norm_av.weight": (2 * dim,),
                "fc_norm_av.bias": (2 * dim,),
                "head_av.weight": (classes, 2 * dim),
                "head_av.bias": (classes,),
            }
        )
    return layout


def their_name(ours: str) -> str | None:
    """Our key (without "backbone.") -> the expert's, or None for a tensor deliberately left out; KeyError for a
    key no rule covers (the caller names it)."""
    head, _, rest = ours.partition(".")
    if head in ENCODERS:
        suffix = ENCODERS[head]
        if rest.startswith("patch_embed.proj."):
            return f"patch_embed{suffix}.{rest[len('patch_embed.') :]}"
        if rest == "cls_token":
            return f"cls_token{suffix}"
        if rest.startswith("transformer.blocks."):
            return f"blocks{suffix}.{rest[len('transformer.blocks.') :]}"
        if rest.startswith("transformer.norm."):
            return None  # the expert has no encoder final norm (expert_problems says so when there is one)
    elif head == "fusion":
        if rest.startswith("blocks."):
            return f"blocks_av.{rest[len('blocks.') :]}"
        if rest.startswith(("norm_audio.", "norm_video.")):
            return None  # ours normalise each modality for the decoders and targets; the expert's states are raw
    elif head in ("audio_decoder", "video_decoder"):
        return None  # pre-training only
    elif head in ("fc_norm", "head"):
        return f"{head}_av.{rest}"
    raise KeyError(ours)


def _parts(model: nn.Module) -> tuple[nn.Module, str, int | None]:
    """-> (the module holding audio_encoder/video_encoder/fusion, the state-dict prefix, classes or None)."""
    if isinstance(model, Classifier):
        if model.mode != "audio+video" or not model.vitmm:
            raise ValueError(
                f"a {model.mode} classifier{' with model.encoder_norm=true' * model.cfg.encoder_norm} "
                "has no counterpart in the expert: only an audio+video model fine-tuned with "
                "model.encoder_norm=false (or a pre-trained one) can be exported"
            )
        return model, "", model.head.out_features
    if isinstance(model, MAViL):
        return model.backbone, "backbone.", None
    if isinstance(model, Backbone):
        return model, "", None
    raise TypeError(f"cannot export a {type(model).__name__}: a MAViL, a Backbone or an audio+video Classifier")


def expert_problems(cfg: ModelConfig, classes: int | None = None) -> list[str]:
    """Why the expert would not compute this model's states (empty: it computes exactly ours)."""
    problems = []
    if cfg.encoder_norm:
        problems.append(
            "model.encoder_norm is true: the expert has no encoder final LayerNorm, so its fusion blocks "
            "would take un-normalised encoder outputs, not the normalised ones ours were trained on "
            "(train with model.encoder_norm=false for an exact export)"
        )
    differing = [
        f"{key}={getattr(cfg, key)} (expert: {value})"
        for key, value in EXPERT_MODEL.items()
        if getattr(cfg, key) != value
    ]
    if differing:
        problems.append(
            "the expert builds ViT-B/16 encoders over 1x1024x128 spectrograms and 3x8x224x224 clips: "
            + ", ".join(differing)
        )
    if classes is not None and classes != EXPERT_CLASSES:
        problems.append(f"the expert builds a {EXPERT_CLASSES}-class head_av; this model has {classes} classes")
    return problems


def to_avsuperb(model: nn.Module, cfg: ModelConfig | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A pre-training model (MAViL, or a Backbone with its `cfg`) or an audio+video Classifier -> (the expert's
    state dict, fp32 on the CPU; our keys deliberately left out). ValueError when a key of ours has no rule, when
    an expected key is not produced or has another shape, or for a fusion the expert does not have (MBT)."""
    owner, prefix, classes = _parts(model)
    cfg = cfg or model.cfg
    if not isinstance(model, Classifier) and cfg.fusion != "vanilla":
        raise ValueError(
            f"model.fusion={cfg.fusion}: the expert's blocks_av attend jointly (vanilla fusion); "
            "bottleneck fusion cannot be expressed in its layout"
        )
    state, dropped, unmapped = {}, [], []
    for key, tensor in model.state_dict().items():
        try:
            theirs = their_name(key.removeprefix(prefix))  # a MAViL's decoders lie outside its backbone
        except KeyError:
            unmapped.append(key)
            continue
        if theirs is None:
            dropped.append(key)
        else:
            state[theirs] = tensor.detach().float().cpu().clone()
    for name, suffix in ENCODERS.items():
        state[f"pos_embed{suffix}"] = getattr(owner, name).pos.detach().float().cpu()[None].clone()
    if unmapped:
        raise ValueError(f"no AV-SUPERB name for {len(unmapped)} of our tensors: {', '.join(unmapped[:6])}")
    fusion_depth = sum(1 for k in state if k.startswith("blocks_av.") and k.endswith(".norm1.weight"))
    expected = expected_layout(cfg, fusion_depth, classes)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if missing or extra or wrong:
        raise ValueError(f"AV-SUPERB layout not met: missing {missing[:6]}, unexpected {extra[:6]}, shapes {wrong[:6]}")
    return {k: state[k] for k in expected}, dropped


def from_avsuperb(state: dict[str, torch.Tensor], cfg: ModelConfig) -> Backbone | Classifier:
    """The expert's state dict -> our pre-trained Backbone (no head_av) or audio+video Classifier (head_av), for a
    model of `cfg`: every tensor of the file used, every one of ours filled but those the expert has no
    counterpart for (a Backbone's per-modality fusion norms stay at identity). The position tables must be
    ours (fixed sin-cos); ValueError naming what does not fit."""
    fusion_depth = sum(1 for k in state if k.startswith("blocks_av.") and k.endswith(".norm1.weight"))
    if "head_av.weight" in state:
        if cfg.encoder_norm:
            raise ValueError("a fine-tuned AV-SUPERB file needs model.encoder_norm=false (its layout)")
        model: nn.Module = Classifier(cfg, "audio+video", state["head_av.weight"].shape[0], fusion_depth)
        owner = model
    else:
        model = owner = Backbone(_with_fusion_depth(cfg, fusion_depth))
    ours = owner.state_dict()
    mapped, left = {}, []
    for key in ours:
        theirs = their_name(key)
        if theirs is None:
            left.append(key)
        elif theirs not in state:
            raise ValueError(f"the file has no {theirs} (for our {key})")
        else:
            mapped[key] = state[theirs]
    used = {their_name(k) for k in mapped} | {f"pos_embed{s}" for s in ENCODERS.values()}
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"tensors of the file with no place in our model: {unused[:6]}")
    for name, suffix in ENCODERS.items():
        table = state[f"pos_embed{suffix}"]
        pos = getattr(owner, name).pos
        if tuple(table.shape) != (1, *pos.shape) or not torch.allclose(table[0].float(), pos.float(), atol=1e-6):
            raise ValueError(f"pos_embed{suffix} is not our fixed sin-cos table for this config")
    try:
        owner.load_state_dict({**{k: ours[k] for k in left}, **mapped}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the file does not fit the model of this config: {err}") from None
    return model


def _with_fusion_depth(cfg: ModelConfig, depth: int) -> ModelConfig:
    return dataclasses.replace(cfg, fusion_depth=depth)
