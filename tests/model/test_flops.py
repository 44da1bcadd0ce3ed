"""The analytic FLOP count against hand counts and against torch's FlopCounterMode on the tiny model.

FlopCounterMode counts aten mm, addmm, bmm, baddbmm, convolution (and their backward) and the CUDA
flash / efficient / cuDNN attention kernels; it does not count the CPU's fused attention
(_scaled_dot_product_flash_attention_for_cpu) nor any elementwise op (softmax, LayerNorm, GELU). So
the measurements run the "math" attention backend, whose q k^T and softmax(.) v are bmm's it counts;
what it then counts is what mavil.model.flops counts, and the two agree to the FLOP.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mavil.model import MAViL, Backbone
from mavil.model.flops import block, forward_parts, main, step_flops
from mavil.model.vit import Block

from ..conftest import CONFIGS, tiny_config


def hand_count(tokens: int, dim: int, heads: int, hidden: int) -> int:
    """One transformer layer, one sample, written out: multiply-add = 2 FLOPs."""
    head_dim = dim // heads
    qkv = 2 * tokens * dim * (3 * dim)  # x (L, D) @ W_qkv (D, 3D)
    scores = heads * 2 * tokens * head_dim * tokens  # per head q (L, Dh) @ k^T (Dh, L)
    weighted_values = heads * 2 * tokens * tokens * head_dim  # per head softmax (L, L) @ v (L, Dh)
    projection = 2 * tokens * dim * dim  # (L, D) @ W_proj (D, D)
    mlp = 2 * tokens * dim * hidden + 2 * tokens * hidden * dim  # fc1 (D, 4D), fc2 (4D, D)
    return qkv + scores + weighted_values + projection + mlp


def test_encoder_layer_matches_a_hand_count():
    # ViT-B encoder layer on the 102 visible audio tokens + [CLS]
    assert sum(block(103, 768, 4.0).values()) == pytest.approx(hand_count(103, 768, 12, 3072), rel=0.01)


def test_decoder_layer_matches_a_hand_count():
    # decoder layer on all 784 video tokens + [CLS], 512 wide, 16 heads
    assert sum(block(785, 512, 4.0).values()) == pytest.approx(hand_count(785, 512, 16, 2048), rel=0.01)


def measured(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_one_block_as_flop_counter_mode_counts_it():
    torch.manual_seed(0)
    layer = Block(64, 4, backend="math")
    x = torch.randn(3, 17, 64)
    assert measured(lambda: layer(x)) == 3 * sum(block(17, 64, 4.0).values())


def tiny_model(stage: int, fusion: str) -> MAViL:
    cfg = tiny_config("model.attention=math", f"model.fusion={fusion}").model
    torch.manual_seed(0)
    if stage == 1:
        return MAViL(cfg)
    return MAViL(dataclasses.replace(cfg, stage=2, norm_pix_loss=False), teacher=Backbone(cfg))


def tiny_inputs(cfg, batch: int):
    return (
        torch.randn(batch, 1, cfg.audio_frames, cfg.audio_mel_bins),
        torch.randn(batch, 3, cfg.video_frames, cfg.video_size, cfg.video_size),
    )


@pytest.mark.parametrize("stage,fusion", [(1, "vanilla"), (1, "mbt"), (2, "vanilla")])
def test_forward_total_equals_flop_counter_mode(stage, fusion):
    model = tiny_model(stage, fusion)
    audio, video = tiny_inputs(model.cfg, batch=5)
    counted = measured(lambda: model(audio, video))
    assert counted == step_flops(model.cfg, 5)["forward"]


@pytest.mark.parametrize("stage", [1, 2])
def test_step_convention_overcounts_only_the_patch_embeddings_input_gradient(stage):
    """backward = 2 x forward holds for every trained matmul but the patch embeddings, whose input needs no
    gradient (backward = 1 x forward); the teacher has no backward at all."""
    model = tiny_model(stage, "vanilla")
    audio, video = tiny_inputs(model.cfg, batch=4)
    counted = measured(lambda: model(audio, video)["loss"].backward())
    parts = forward_parts(model.cfg, 4)
    patch_embeds = parts["audio_patch_embed"] + parts["video_patch_embed"]
    assert counted == step_flops(model.cfg, 4)["step"] - patch_embeds


def test_second_view_and_teacher_parts_follow_the_config():
    cfg = tiny_config().model
    assert "audio_encoder_second_view" in forward_parts(cfg, 2)
    assert "audio_encoder_second_view" not in forward_parts(dataclasses.replace(cfg, beta=0.0), 2)
    stage2 = step_flops(dataclasses.replace(cfg, stage=2), 2)
    teacher = {name: part for name, part in stage2["parts"].items() if name.startswith("teacher_")}
    assert teacher and all(part["step"] == part["forward"] for part in teacher.values())
    assert stage2["teacher_forward"] == sum(part["forward"] for part in teacher.values())


def test_cli_counts_stage_2_without_a_teacher_file(capsys):
    assert main(["--config", str(CONFIGS / "stage2.json"), "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "teacher video encoder" in out and "the paper's stage" in out
