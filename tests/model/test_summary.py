import json

from mavil.config import ModelConfig
from mavil.model.summary import main, summarize

from ..conftest import CONFIGS

# timm's vit_base_patch16_224 without its head: 85,798,656 parameters, of which the 3 x 16 x 16
# image patch embedding holds 590,592 and the learned position table 197 x 768 = 151,296.
VIT_B16_WITHOUT_HEAD = 85_798_656
VIT_B16_PATCH_EMBED = 3 * 16 * 16 * 768 + 768
VIT_B16_POS_EMBED = 197 * 768


def test_visible_tokens_equal_the_papers():
    tokens = summarize(ModelConfig())["tokens"]
    assert (tokens["audio"]["visible_with_cls"], tokens["video"]["visible_with_cls"]) == (103, 158)
    tokens = summarize(ModelConfig(mask_ratio=0.7))["tokens"]
    assert (tokens["audio"]["visible"], tokens["video"]["visible"]) == (154, 235)


def test_encoders_are_vit_b16_with_their_own_patch_embedding():
    params = summarize(ModelConfig())["parameters"]
    # our positions are fixed sin-cos buffers, not parameters
    blocks_cls_norm = VIT_B16_WITHOUT_HEAD - VIT_B16_PATCH_EMBED - VIT_B16_POS_EMBED
    assert params["audio_encoder"] == blocks_cls_norm + (1 * 16 * 16 * 768 + 768)
    assert params["video_encoder"] == blocks_cls_norm + (3 * 2 * 16 * 16 * 768 + 768)
    assert params["total"] == params["encoders_and_fusion"] + params["decoders"]


def test_mbt_adds_only_the_bottleneck_tokens():
    vanilla = summarize(ModelConfig())["parameters"]["fusion"]
    mbt = summarize(ModelConfig(fusion="mbt"))["parameters"]["fusion"]
    assert mbt - vanilla == 4 * 768


def test_cli_prints_json(capsys):
    assert main(["--config", str(CONFIGS / "stage1.json"), "--json", "model.fusion=mbt"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fusion"] == "mbt" and summary["tokens"]["video"]["tokens"] == 784


def test_cli_refuses_a_bad_config(capsys):
    assert main(["--config", str(CONFIGS / "stage1.json"), "model.mask_ratio=2"]) == 2
    assert "model.mask_ratio = 2" in capsys.readouterr().err
