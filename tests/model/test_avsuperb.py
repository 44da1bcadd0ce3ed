"""The AV-SUPERB export (mavil.model.avsuperb): the expert's keys and shapes, round trips, and its forward.

The table and `expert_forward` below are written from the structure of roger-tseng/av-superb's
upstream_models/mavil (models_vitmm.VisionTransformerMM on timm 0.4.5 blocks, expert.UpstreamExpert.forward):
[CLS] + patches + pos per modality, 12 blocks without a final norm, the two sequences concatenated (audio first,
each with its [CLS]) through blocks_av, pooled per modality without [CLS]; fc_norm_av on the last fused state.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mavil.model import MAViL
from mavil.model.avsuperb import expert_problems, from_avsuperb, to_avsuperb
from mavil.model.classifier import Classifier

from ..conftest import tiny_config

# ---- the expert's state dict for ViT-B (vitmm_base_patch16, n_frm=8, audio 1024 x 128, 527 classes), as data
D, HIDDEN = 768, 3072
BLOCK = {
    "norm1.weight": (D,),
    "norm1.bias": (D,),
    "attn.qkv.weight": (3 * D, D),
    "attn.qkv.bias": (3 * D,),
    "attn.proj.weight": (D, D),
    "attn.proj.bias": (D,),
    "norm2.weight": (D,),
    "norm2.bias": (D,),
    "mlp.fc1.weight": (HIDDEN, D),
    "mlp.fc1.bias": (HIDDEN,),
    "mlp.fc2.weight": (D, HIDDEN),
    "mlp.fc2.bias": (D,),
}
ENCODERS = {
    "cls_token": (1, 1, D),
    "pos_embed": (1, 513, D),
    "patch_embed.proj.weight": (D, 1, 16, 16),
    "patch_embed.proj.bias": (D,),
    "cls_token_v": (1, 1, D),
    "pos_embed_v": (1, 785, D),
    "patch_embed_v.proj.weight": (D, 3, 2, 16, 16),
    "patch_embed_v.proj.bias": (D,),
}
FINE_TUNED_HEAD = {
    "fc_norm_av.weight": (2 * D,),
    "fc_norm_av.bias": (2 * D,),
    "head_av.weight": (527, 2 * D),
    "head_av.bias": (527,),
}


def their_table(fusion_blocks: int, fine_tuned: bool) -> dict[str, tuple[int, ...]]:
    table = dict(ENCODERS)
    for prefix, count in (("blocks", 12), ("blocks_v", 12), ("blocks_av", fusion_blocks)):
        table.update({f"{prefix}.{n}.{name}": shape for n in range(count) for name, shape in BLOCK.items()})
    return {**table, **(FINE_TUNED_HEAD if fine_tuned else {})}


def vitb(*overrides: str):
    return tiny_config(
        *[
            f"model.{k}={v}"
            for k, v in (
                ("audio_frames", 1024),
                ("audio_mel_bins", 128),
                ("video_frames", 8),
                ("video_size", 224),
                ("encoder_dim", 768),
                ("encoder_depth", 12),
                ("encoder_heads", 12),
                ("decoder_dim", 32),
                ("decoder_depth", 1),
                ("decoder_heads", 2),
                ("encoder_norm", "false"),
            )
        ],
        *overrides,
    ).model


def test_vitb_export_has_exactly_the_experts_keys_and_shapes():
    cfg = vitb()
    state, dropped = to_avsuperb(MAViL(cfg))
    assert {k: tuple(v.shape) for k, v in state.items()} == their_table(2, fine_tuned=False)
    assert all(k.startswith(("backbone.fusion.norm_", "audio_decoder.", "video_decoder.")) for k in dropped)
    assert expert_problems(cfg) == []
    torch.manual_seed(0)
    classifier = Classifier(cfg, "audio+video", 527, fusion_depth=3)
    state, dropped = to_avsuperb(classifier)
    assert {k: tuple(v.shape) for k, v in state.items()} == their_table(3, fine_tuned=True) and dropped == []
    assert expert_problems(cfg, 527) == []


# ---- the expert's computation, from its code's structure, on plain tensors of its state dict
def _block(state, prefix, x, heads):
    batch, length, dim = x.shape
    h = F.layer_norm(x, (dim,), state[f"{prefix}.norm1.weight"], state[f"{prefix}.norm1.bias"], eps=1e-6)
    qkv = F.linear(h, state[f"{prefix}.attn.qkv.weight"], state[f"{prefix}.attn.qkv.bias"])
    q, k, v = qkv.reshape(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(dim=-1)
    x = x + F.linear(
        (attn @ v).transpose(1, 2).reshape(batch, length, dim),
        state[f"{prefix}.attn.proj.weight"],
        state[f"{prefix}.attn.proj.bias"],
    )
    h = F.layer_norm(x, (dim,), state[f"{prefix}.norm2.weight"], state[f"{prefix}.norm2.bias"], eps=1e-6)
    h = F.gelu(F.linear(h, state[f"{prefix}.mlp.fc1.weight"], state[f"{prefix}.mlp.fc1.bias"]))
    return x + F.linear(h, state[f"{prefix}.mlp.fc2.weight"], state[f"{prefix}.mlp.fc2.bias"])


def _encode(state, suffix, x, heads, block=_block):
    conv = F.conv2d if x.dim() == 4 else F.conv3d
    weight = state[f"patch_embed{suffix}.proj.weight"]
    x = conv(x, weight, state[f"patch_embed{suffix}.proj.bias"], stride=weight.shape[2:]).flatten(2).transpose(1, 2)
    pos = state[f"pos_embed{suffix}"]
    cls = (state[f"cls_token{suffix}"] + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x + pos[:, 1:]], dim=1)
    pooled, n = [], 0
    while f"blocks{suffix}.{n}.norm1.weight" in state:
        pooled.append(x[:, 1:].mean(dim=1))
        x, n = block(state, f"blocks{suffix}.{n}", x, heads), n + 1
    return x, pooled + [x[:, 1:].mean(dim=1)]


def expert_forward(state, audio, video, heads, block=_block):
    """-> (audio pooled states, video pooled states, fusion pooled states, head_av logits or None)."""
    a, a_pooled = _encode(state, "", audio, heads, block)
    v, v_pooled = _encode(state, "_v", video, heads, block)
    length, xv, fused, n = a.shape[1], torch.cat([a, v], dim=1), [], 0

    def pool(x):
        return torch.cat([x[:, 1:length].mean(dim=1), x[:, length + 1 :].mean(dim=1)], dim=-1)

    while f"blocks_av.{n}.norm1.weight" in state:
        fused.append(pool(xv))
        xv, n = block(state, f"blocks_av.{n}", xv, heads), n + 1
    last = pool(xv)
    if "fc_norm_av.weight" in state:
        last = F.layer_norm(last, (last.shape[-1],), state["fc_norm_av.weight"], state["fc_norm_av.bias"], eps=1e-6)
        return a_pooled, v_pooled, fused + [last], F.linear(last, state["head_av.weight"], state["head_av.bias"])
    return a_pooled, v_pooled, fused + [F.layer_norm(last, (last.shape[-1],), eps=1e-6)], None


def ours_pooled(backbone, audio, video):
    """Our backbone's states, pooled as the expert pools them."""
    a_states = backbone.audio_encoder.hidden_states(backbone.audio_encoder.embed(audio))
    v_states = backbone.video_encoder.hidden_states(backbone.video_encoder.embed(video))
    fused = backbone.fusion.hidden_states(a_states[-1], v_states[-1])
    length = a_states[-1].shape[1]
    pooled = [torch.cat([x[:, 1:length].mean(dim=1), x[:, length + 1 :].mean(dim=1)], dim=-1) for x in fused]
    pooled[-1] = F.layer_norm(pooled[-1], (pooled[-1].shape[-1],), eps=1e-6)
    return [x[:, 1:].mean(dim=1) for x in a_states], [x[:, 1:].mean(dim=1) for x in v_states], pooled


def inputs(cfg, batch=2):
    torch.manual_seed(1)
    return (
        torch.randn(batch, 1, cfg.audio_frames, cfg.audio_mel_bins),
        torch.randn(batch, 3, cfg.video_frames, cfg.video_size, cfg.video_size),
    )


def _close(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, other in zip(ours, theirs):
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_pretrained_export_reproduces_our_states_in_the_experts_forward(tmp_path):
    cfg = tiny_config("model.encoder_norm=false").model
    torch.manual_seed(0)
    model = MAViL(cfg).eval()
    state, _ = to_avsuperb(model)
    torch.save({"model": state}, tmp_path / "mavil.pth")
    loaded = torch.load(tmp_path / "mavil.pth", weights_only=True)["model"]
    audio, video = inputs(cfg)
    theirs = expert_forward(loaded, audio, video, cfg.encoder_heads)
    for mine, other in zip(ours_pooled(model.backbone, audio, video), theirs[:3]):
        _close(mine, other)
    assert len(theirs[2]) == cfg.fusion_depth + 1 and theirs[3] is None
    back = from_avsuperb(loaded, cfg).eval()  # re-import: the same states (its fusion norms are not in the file)
    for mine, other in zip(ours_pooled(back, audio, video), ours_pooled(model.backbone, audio, video)):
        for a, b in zip(mine, other):
            assert torch.equal(a, b)


@torch.no_grad()
def test_finetuned_export_gives_the_same_logits_in_the_expert_and_after_reimport():
    cfg = tiny_config("model.encoder_norm=false").model
    torch.manual_seed(0)
    model = Classifier(cfg, "audio+video", 5).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    state, dropped = to_avsuperb(model)
    assert dropped == [] and state["head_av.weight"].shape == (5, 2 * cfg.encoder_dim)
    audio, video = inputs(cfg)
    logits = model.predict(audio, video)
    torch.testing.assert_close(expert_forward(state, audio, video, cfg.encoder_heads)[3], logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(from_avsuperb(state, cfg).eval().predict(audio, video), logits)


def timm_block(state, prefix, x, heads):
    """The expert's own block class: timm's ViT Block, loaded strictly from the exported names."""
    from functools import partial

    from timm.models.vision_transformer import Block

    dim = x.shape[-1]
    block = Block(
        dim,
        heads,
        mlp_ratio=state[f"{prefix}.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    )
    block.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})
    return block.eval()(x)


@torch.no_grad()
def test_timm_blocks_under_the_exported_names_give_our_logits():
    pytest.importorskip("timm")
    cfg = tiny_config("model.encoder_norm=false").model
    torch.manual_seed(0)
    model = Classifier(cfg, "audio+video", 5).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    state, _ = to_avsuperb(model)
    audio, video = inputs(cfg)
    logits = expert_forward(state, audio, video, cfg.encoder_heads, block=timm_block)[3]
    torch.testing.assert_close(logits, model.predict(audio, video), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_with_the_encoder_norm_the_experts_states_differ_and_the_problem_is_named():
    cfg = tiny_config().model  # encoder_norm true: the default
    torch.manual_seed(0)
    model = MAViL(cfg).eval()
    state, dropped = to_avsuperb(model)
    assert "backbone.audio_encoder.transformer.norm.weight" in dropped
    audio, video = inputs(cfg)
    theirs = expert_forward(state, audio, video, cfg.encoder_heads)[2]
    mine = ours_pooled(model.backbone, audio, video)[2]
    assert not torch.allclose(theirs[-1], mine[-1], atol=1e-3)
    assert any("encoder_norm" in p for p in expert_problems(cfg))
    assert any("ViT-B" in p for p in expert_problems(cfg))
    with pytest.raises(ValueError, match="encoder_norm=true"):
        to_avsuperb(Classifier(cfg, "audio+video", 3))
    with pytest.raises(ValueError, match="audio classifier"):
        to_avsuperb(Classifier(tiny_config("model.encoder_norm=false").model, "audio", 3))
    with pytest.raises(ValueError, match="bottleneck"):
        to_avsuperb(MAViL(tiny_config("model.fusion=mbt").model))


def test_no_key_is_silently_absent_or_unmapped(monkeypatch):
    cfg = tiny_config("model.encoder_norm=false").model
    model = MAViL(cfg)
    model.backbone.extra = torch.nn.Linear(2, 2)  # a tensor of ours with no rule
    with pytest.raises(ValueError, match="no AV-SUPERB name for 2 of our tensors: backbone.extra.weight"):
        to_avsuperb(model)
    del model.backbone.extra
    import mavil.model.avsuperb as avsuperb

    real = avsuperb.their_name
    monkeypatch.setattr(avsuperb, "their_name", lambda k: None if k == "video_encoder.cls_token" else real(k))
    with pytest.raises(ValueError, match=r"missing \['cls_token_v'\]"):
        to_avsuperb(model)
    monkeypatch.setattr(avsuperb, "their_name", real)
    state, _ = to_avsuperb(model)
    state["pos_embed"] = torch.zeros_like(state["pos_embed"])  # what a non-strict load would leave
    with pytest.raises(ValueError, match="pos_embed is not our fixed sin-cos"):
        from_avsuperb(state, cfg)
    state.pop("pos_embed")
    state["blocks_av.0.stray"] = torch.zeros(1)
    with pytest.raises(ValueError):
        from_avsuperb(state, cfg)


def test_fine_tuning_without_the_encoder_norm_keeps_the_paper_heads_working():
    cfg = tiny_config("model.encoder_norm=false").model
    audio, video = inputs(cfg)
    assert math.isfinite(MAViL(cfg)(audio, video)["loss"].item())
    for mode in ("audio", "video", "audio+video"):
        model = Classifier(cfg, mode, 4)
        assert model.predict(audio, video).shape == (2, 4)
        assert not any(".transformer.norm." in k for k in model.state_dict())
