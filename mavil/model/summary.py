"""Parameters per part and visible tokens per modality for a config.

    python -m mavil.model.summary --config configs/stage1.json [--json] [section.key=value ...]

The model is built on the meta device, so even ViT-B costs no memory or time.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from ..cli import config_parser, refuse
from ..config import ConfigError, ModelConfig, load_config, num_visible
from .mavil import MAViL

PAPER_PARAMETERS = {"encoders_and_fusion": 164_000_000, "decoders": 27_000_000}  # §4.2 and App. B


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summarize(cfg: ModelConfig) -> dict:
    with torch.device("meta"):
        model = MAViL(cfg)
    parts = {
        "audio_encoder": count(model.backbone.audio_encoder),
        "video_encoder": count(model.backbone.video_encoder),
        "fusion": count(model.backbone.fusion),
        "audio_decoder": count(model.audio_decoder),
        "video_decoder": count(model.video_decoder),
    }
    parts["encoders_and_fusion"] = parts["audio_encoder"] + parts["video_encoder"] + parts["fusion"]
    parts["decoders"] = parts["audio_decoder"] + parts["video_decoder"]
    parts["total"] = count(model)
    tokens = {
        name: {
            "tokens": n,
            "visible": num_visible(n, cfg.mask_ratio),
            "visible_with_cls": num_visible(n, cfg.mask_ratio) + 1,
        }
        for name, n in (("audio", cfg.audio_tokens), ("video", cfg.video_tokens))
    }
    return {
        "stage": cfg.stage,
        "fusion": cfg.fusion,
        "fusion_depth": cfg.fusion_depth,
        "mask_ratio": cfg.mask_ratio,
        "parameters": parts,
        "paper_parameters": PAPER_PARAMETERS,
        "tokens": tokens,
    }


def format_summary(summary: dict, source: str) -> str:
    params, paper = summary["parameters"], summary["paper_parameters"]
    lines = [
        f"MAViL stage {summary['stage']} ({source}): {summary['fusion']} fusion x{summary['fusion_depth']}, "
        f"mask ratio {summary['mask_ratio']}",
        f"{'part':<22}{'parameters':>14}{'paper':>10}",
    ]
    for name, value in params.items():
        paper_text = f"{paper[name] / 1e6:.0f}M" if name in paper else ""
        lines.append(f"{name.replace('_', ' '):<22}{value:>14,}{paper_text:>10}")
    for name, t in summary["tokens"].items():
        lines.append(f"{name} tokens: {t['tokens']}, visible {t['visible']} (+ [CLS] = {t['visible_with_cls']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        return refuse(err)
    summary = summarize(cfg.model)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
