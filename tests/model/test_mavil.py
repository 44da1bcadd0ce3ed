import math

import pytest
import torch

from mavil.config import ModelConfig
from mavil.engine.overfit import example_batch
from mavil.model import MAViL
from mavil.model.attention import attend, resolve_backend
from mavil.model.masking import random_masking
from mavil.model.patch import PatchEmbed, patchify, unpatchify
from mavil.model.positions import sincos_grid
from mavil.model.vit import Block

from ..conftest import tiny_config


def inputs(cfg, batch=2):
    m = cfg.model
    return (
        torch.randn(batch, 1, m.audio_frames, m.audio_mel_bins),
        torch.randn(batch, 3, m.video_frames, m.video_size, m.video_size),
    )


@pytest.mark.parametrize("fusion", ["vanilla", "mbt"])
def test_shapes_through_every_part(fusion):
    cfg = tiny_config(f"model.fusion={fusion}")
    m = cfg.model
    torch.manual_seed(0)
    model = MAViL(m)
    audio, video = inputs(cfg, batch=3)
    na, nv = m.audio_tokens, m.video_tokens  # 24 x 4 = 96 and 2 x 4 x 4 = 32
    assert (na, nv) == (96, 32)
    a_tokens, v_tokens = model.backbone.embed(audio, video)
    assert a_tokens.shape == (3, na, 64) and v_tokens.shape == (3, nv, 64)
    a_mask = random_masking(3, na, m.mask_ratio, "cpu", second_view=True)
    v_mask = random_masking(3, nv, m.mask_ratio, "cpu", second_view=True)
    ka, kv = a_mask.num_visible, v_mask.num_visible
    a_um, v_um = model.backbone.encode(a_tokens, v_tokens, a_mask.ids_keep, v_mask.ids_keep)
    assert a_um.shape == (3, 1 + ka, 64) and v_um.shape == (3, 1 + kv, 64)
    a_mm, v_mm = model.backbone.fusion(a_um, v_um)
    assert a_mm.shape == a_um.shape and v_mm.shape == v_um.shape
    a_pred = model.audio_decoder(a_mm, a_mask.ids_restore)
    v_pred = model.video_decoder(v_mm, v_mask.ids_restore)
    assert a_pred.shape == (3, na, 16 * 16) and v_pred.shape == (3, nv, 2 * 16 * 16 * 3)
    a_full, v_full = model.backbone.contextual_features(audio, video)
    assert a_full.shape == (3, na, 64) and v_full.shape == (3, nv, 64)
    out = model(audio, video)
    assert set(out) == {"loss", "loss_recon_audio", "loss_recon_video", "loss_inter", "loss_intra"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    expected = out["loss_recon_audio"] + out["loss_recon_video"] + 0.1 * out["loss_inter"] + 0.01 * out["loss_intra"]
    torch.testing.assert_close(out["loss"], expected)


def test_paper_sized_shapes_on_meta():
    cfg = ModelConfig()  # the paper's defaults: ViT-B, 1024 x 128 audio, 8 x 224 x 224 video
    with torch.device("meta"):
        model = MAViL(cfg)
        audio, video = torch.empty(2, 1, 1024, 128), torch.empty(2, 3, 8, 224, 224)
        a_tokens, v_tokens = model.backbone.embed(audio, video)
        assert a_tokens.shape == (2, 512, 768) and v_tokens.shape == (2, 784, 768)
        assert model.backbone.audio_encoder.patch_embed.grid == (64, 8)
        assert model.backbone.video_encoder.patch_embed.grid == (4, 14, 14)


def test_zero_weights_skip_their_losses():
    cfg = tiny_config("model.alpha=0", "model.beta=0")
    out = MAViL(cfg.model)(*inputs(cfg))
    assert set(out) == {"loss", "loss_recon_audio", "loss_recon_video"}


def test_wrong_input_shape_is_named():
    cfg = tiny_config()
    audio, video = inputs(cfg)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, 384, 64\), got \(2, 1, 100, 64\)"):
        MAViL(cfg.model)(audio[:, :, :100], video)


@pytest.mark.parametrize("chans, size, patch", [(1, (32, 48), (16, 16)), (3, (4, 32, 48), (2, 16, 16))])
def test_patchify_follows_the_patch_embedding_token_order(chans, size, patch):
    torch.manual_seed(0)
    x = torch.randn(2, chans, *size)
    embed = PatchEmbed(chans, size, patch, dim=5)
    tokens = patchify(x, patch)  # (B, N, prod(patch) * C), channels last
    # the conv is a matmul over each patch's values: rebuild it from patchify's layout
    weight = embed.proj.weight.flatten(2).transpose(1, 2).reshape(5, -1)  # (dim, prod(patch) * C), channels last
    torch.testing.assert_close(tokens @ weight.T + embed.proj.bias, embed(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(unpatchify(tokens, patch, chans, size), x)


def test_sincos_positions():
    table = sincos_grid(12, (4, 14, 14))
    assert table.shape == (1 + 784, 12) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(12))  # [CLS]
    assert len({tuple(row.tolist()) for row in table[1:]}) == 784  # every cell has its own code
    # row-major order: the last axis varies fastest, and its code sits in the last channel block
    torch.testing.assert_close(table[2, :8], table[1, :8])
    assert not torch.allclose(table[2, 8:], table[1, 8:])
    with pytest.raises(ValueError, match="even dim"):
        sincos_grid(7, (4, 4))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("batch, length, heads, head_dim", [(2, 33, 4, 16), (1, 103, 12, 64), (3, 7, 1, 8)])
def test_sdpa_equals_math(batch, length, heads, head_dim, dtype, tol):
    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, length, heads, head_dim, dtype=dtype) for _ in range(3))
    torch.testing.assert_close(attend(q, k, v, "sdpa"), attend(q, k, v, "math"), rtol=tol, atol=tol)
    manual = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q.float(), k.float()) / math.sqrt(head_dim), -1)
    expected = torch.einsum("bhlm,bmhd->blhd", manual, v.float()).to(dtype)
    torch.testing.assert_close(attend(q, k, v, "math"), expected, rtol=tol, atol=tol)


def test_block_gives_the_same_output_with_each_cpu_backend():
    torch.manual_seed(0)
    block = Block(64, 4)
    x = torch.randn(2, 17, 64)
    outputs = {}
    for backend in ("sdpa", "math"):
        block.attn.backend = backend
        outputs[backend] = block(x)
    torch.testing.assert_close(outputs["sdpa"], outputs["math"], rtol=1e-5, atol=1e-5)


def test_auto_picks_sdpa_on_cpu_and_explicit_xformers_fails_clearly(caplog):
    resolve_backend.cache_clear()
    with caplog.at_level("INFO", logger="mavil.model.attention"):
        assert resolve_backend("auto", "cpu", torch.float32, 16) == "sdpa"
    assert "auto -> sdpa" in caplog.text and "no kernels for cpu" in caplog.text
    with pytest.raises(RuntimeError, match="'xformers' cannot run"):
        resolve_backend("xformers", "cpu", torch.float32, 16)


@pytest.mark.gpu
def test_xformers_equals_math_on_cuda():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 103, 12, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    assert resolve_backend("auto", "cuda", torch.bfloat16, 64) in ("xformers", "sdpa")
    torch.testing.assert_close(attend(q, k, v, "auto"), attend(q, k, v, "math"), rtol=2e-2, atol=2e-2)


def test_reconstruct_returns_predictions_masks_and_targets_in_token_order():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = MAViL(cfg.model).eval()
    audio, video = inputs(cfg, batch=2)
    out = model.reconstruct(audio, video, mask_ratio=0.7)
    assert out["audio_pred"].shape == out["audio_target"].shape == (2, 96, 256)
    assert out["video_pred"].shape == out["video_target"].shape == (2, 32, 1536)
    assert out["audio_mask"].sum(1).eq(96 - 29).all()  # 70%: round(96 * 0.3) = 29 visible
    torch.testing.assert_close(out["audio_target"], patchify(audio, (16, 16)))


def test_same_seed_gives_the_same_loss():
    cfg = tiny_config()
    batch = example_batch(cfg.model, 4, 0)

    def loss_for(seed):
        torch.manual_seed(seed)
        return MAViL(cfg.model)(batch["audio"], batch["video"])["loss"]

    assert torch.equal(loss_for(7), loss_for(7))
    assert not torch.equal(loss_for(7), loss_for(8))
