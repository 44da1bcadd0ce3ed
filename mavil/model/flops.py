"""Exact analytic FLOP count of one MAViL pre-training step, per part, from a ModelConfig and a batch size.

    python -m mavil.model.flops --config configs/stage1.json [--batch 64] [--json] [section.key=value ...]
    python -m mavil.model.flops --config configs/stage2.json       # stage 2: no teacher file needed for the count

Matrix products only, a multiply-add = 2 FLOPs, backward = 2 x forward (a trained part costs 3 x its forward), the
stage-2 teacher forward only (1 x). The convention and what runs per sample: docs/model.md#flop-counting.
"""

from __future__ import annotations

import json
import math
import sys

from ..cli import config_parser, refuse
from ..config import ConfigError, ModelConfig, load_config, num_visible

TRAINED, FORWARD_ONLY = 3, 1  # FLOPs per step as multiples of the forward: forward + 2 x forward backward; teacher
# The paper's run per stage (§4.2, App. B): 64 A100s, ~20 hours, 20 epochs of AudioSet-2M (~2M clips).
PAPER_RUN = {"gpus": 64, "hours": 20.0, "epochs": 20, "clips": 2_000_000, "gpu": "A100", "peak_tflops": 312.0}


def linear(rows: int, fan_in: int, fan_out: int) -> int:
    """A (rows, fan_in) x (fan_in, fan_out) matrix product."""
    return 2 * rows * fan_in * fan_out


def block(tokens: int, dim: int, mlp_ratio: float) -> dict[str, int]:
    """One ViT block on `tokens` tokens of width `dim`, one sample: its five matrix products."""
    hidden = int(dim * mlp_ratio)
    return {
        "qkv": linear(tokens, dim, 3 * dim),
        "scores": 2 * tokens * tokens * dim,  # q k^T: heads x (L, Dh) x (Dh, L), heads * Dh = dim
        "weighted_values": 2 * tokens * tokens * dim,  # softmax(.) v: heads x (L, L) x (L, Dh)
        "proj": linear(tokens, dim, dim),
        "mlp": linear(tokens, dim, hidden) + linear(tokens, hidden, dim),
    }


def blocks(depth: int, tokens: int, dim: int, mlp_ratio: float) -> int:
    return depth * sum(block(tokens, dim, mlp_ratio).values())


def fusion(cfg: ModelConfig, a_len: int, v_len: int) -> int:
    """The fusion layers on audio and video sequences of a_len and v_len tokens ([CLS] included), one sample."""
    dim, depth, ratio = cfg.encoder_dim, cfg.fusion_depth, cfg.mlp_ratio
    if cfg.fusion == "vanilla":
        return blocks(depth, a_len + v_len, dim, ratio)
    nb = cfg.bottleneck_tokens
    return blocks(depth, a_len + nb, dim, ratio) + blocks(depth, v_len + nb, dim, ratio)


def patch_values(cfg: ModelConfig) -> tuple[int, int]:
    """Input values per token: audio 1 x 16 x 16, video 3 x 2 x 16 x 16 (the raw targets' width too)."""
    return math.prod(cfg.audio_patch), 3 * math.prod(cfg.video_patch)


def backbone_parts(cfg: ModelConfig, a_len: int, v_len: int, prefix: str = "") -> dict[str, int]:
    """Patch embeddings, encoders on a_len / v_len tokens ([CLS] included) and fusion, one sample."""
    a_in, v_in = patch_values(cfg)
    enc = (cfg.encoder_depth, cfg.encoder_dim, cfg.mlp_ratio)
    return {
        f"{prefix}audio_patch_embed": linear(cfg.audio_tokens, a_in, cfg.encoder_dim),
        f"{prefix}video_patch_embed": linear(cfg.video_tokens, v_in, cfg.encoder_dim),
        f"{prefix}audio_encoder": blocks(enc[0], a_len, *enc[1:]),
        f"{prefix}video_encoder": blocks(enc[0], v_len, *enc[1:]),
        f"{prefix}fusion": fusion(cfg, a_len, v_len),
    }


def forward_parts(cfg: ModelConfig, batch: int, teacher: ModelConfig | None = None) -> dict[str, int]:
    """Forward FLOPs of each part for one batch. Stage 2: `teacher` is the teacher's architecture (default cfg's)."""
    na, nv = cfg.audio_tokens, cfg.video_tokens
    ka, kv = num_visible(na, cfg.mask_ratio), num_visible(nv, cfg.mask_ratio)
    per_sample = backbone_parts(cfg, 1 + ka, 1 + kv)
    if cfg.beta > 0:  # the second view, encoded again for the intra-modal loss
        per_sample["audio_encoder_second_view"] = per_sample["audio_encoder"]
        per_sample["video_encoder_second_view"] = per_sample["video_encoder"]
    a_out, v_out = patch_values(cfg) if cfg.stage == 1 else 2 * ((teacher or cfg).encoder_dim,)
    dec = (cfg.decoder_depth, cfg.decoder_dim, cfg.mlp_ratio)
    per_sample["audio_decoder"] = linear(1 + ka, cfg.encoder_dim, cfg.decoder_dim) + blocks(dec[0], 1 + na, *dec[1:])
    per_sample["video_decoder"] = linear(1 + kv, cfg.encoder_dim, cfg.decoder_dim) + blocks(dec[0], 1 + nv, *dec[1:])
    per_sample["audio_head"] = linear(na, cfg.decoder_dim, a_out)
    per_sample["video_head"] = linear(nv, cfg.decoder_dim, v_out)
    if cfg.stage == 2:
        per_sample.update(backbone_parts(teacher or cfg, 1 + na, 1 + nv, prefix="teacher_"))
    parts = {name: batch * flops for name, flops in per_sample.items()}
    nce_calls = (cfg.alpha > 0) + 2 * (cfg.beta > 0)
    if nce_calls:
        parts["contrastive"] = nce_calls * linear(batch, cfg.encoder_dim, batch)  # logits (B, B) per call
    return parts


def step_flops(cfg: ModelConfig, batch: int, teacher: ModelConfig | None = None) -> dict:
    """One training step: per part its forward and its step FLOPs (3 x trained, 1 x teacher), and the totals.

    -> {"batch", "parts": {name: {"forward", "step"}}, "forward", "trained_forward", "teacher_forward",
        "step", "step_per_sample"}
    """
    parts = {
        name: {"forward": flops, "step": flops * (FORWARD_ONLY if name.startswith("teacher_") else TRAINED)}
        for name, flops in forward_parts(cfg, batch, teacher).items()
    }
    teacher_forward = sum(p["forward"] for name, p in parts.items() if name.startswith("teacher_"))
    forward = sum(p["forward"] for p in parts.values())
    step = sum(p["step"] for p in parts.values())
    return {
        "batch": batch,
        "parts": parts,
        "forward": forward,
        "trained_forward": forward - teacher_forward,
        "teacher_forward": teacher_forward,
        "step": step,
        "step_per_sample": step / batch,
    }


def paper_run(flops: dict) -> dict:
    """What one stage of the paper's run (PAPER_RUN) implies at these step FLOPs: compute, rate and MFU."""
    run = PAPER_RUN
    total = flops["step_per_sample"] * run["epochs"] * run["clips"]
    seconds = run["hours"] * 3600
    per_gpu = total / seconds / run["gpus"]
    return {
        **run,
        "stage_flops": total,
        "clips_per_s_per_gpu": run["epochs"] * run["clips"] / seconds / run["gpus"],
        "achieved_tflops_per_gpu": per_gpu / 1e12,
        "mfu": per_gpu / (run["peak_tflops"] * 1e12),
        "hours_at_full_peak": total / (run["gpus"] * run["peak_tflops"] * 1e12) / 3600,
    }


def paper_sized(cfg: ModelConfig) -> bool:
    """Whether cfg has the paper's inputs and network sizes (the defaults), so that PAPER_RUN applies."""
    fields = (
        "audio_frames",
        "audio_mel_bins",
        "audio_patch",
        "video_frames",
        "video_size",
        "video_patch",
        "encoder_dim",
        "encoder_depth",
        "decoder_dim",
        "decoder_depth",
        "fusion_depth",
        "mlp_ratio",
        "mask_ratio",
    )
    paper = ModelConfig()
    return all(getattr(cfg, name) == getattr(paper, name) for name in fields)


def format_table(cfg: ModelConfig, flops: dict, source: str) -> str:
    batch, step = flops["batch"], flops["step"]
    scale, unit = (1e9, "GFLOP") if step >= 1e10 else (1e6, "MFLOP")
    lines = [
        f"MAViL stage {cfg.stage} ({source}), batch {batch}: FLOPs of one training step "
        f"(multiply-add = 2; backward = 2 x forward; teacher forward only)",
        f"{'part':<30}{'forward ' + unit:>15}{'x':>3}{'step ' + unit:>14}{'share':>8}",
    ]
    for name, part in flops["parts"].items():
        times = part["step"] // part["forward"]
        lines.append(
            f"{name.replace('_', ' '):<30}{part['forward'] / scale:>15,.1f}{times:>3}"
            f"{part['step'] / scale:>14,.1f}{part['step'] / step:>8.1%}"
        )
    lines.append(f"{'total':<30}{flops['forward'] / scale:>15,.1f}{'':>3}{step / scale:>14,.1f}{1:>8.0%}")
    lines.append(
        f"per sample: {flops['step_per_sample'] / scale:,.1f} {unit} per step "
        f"({flops['trained_forward'] / batch / scale:,.1f} trained forward, "
        f"{flops['teacher_forward'] / batch / scale:,.1f} teacher forward)"
    )
    if paper_sized(cfg):
        run = paper_run(flops)
        lines.append(
            f"the paper's stage ({run['gpus']} {run['gpu']}s, ~{run['hours']:.0f} h, {run['epochs']} epochs "
            f"of {run['clips'] / 1e6:.0f}M clips): {run['stage_flops']:.2e} FLOPs, "
            f"{run['clips_per_s_per_gpu']:.1f} clips/s and {run['achieved_tflops_per_gpu']:.2f} TFLOP/s per GPU "
            f"= {run['mfu']:.1%} MFU of {run['peak_tflops']:.0f} TFLOP/s bf16; at full peak "
            f"{run['hours_at_full_peak']:.2f} h"
        )
    return "\n".join(lines)


def model_config(path: str, overrides: list[str]) -> ModelConfig:
    """The config's model section (a stage-2 count reads no teacher file: the teacher is taken to have the student's
    encoders and fusion)."""
    return load_config(path, overrides).model


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(__doc__)
    parser.add_argument("--batch", type=int, default=64, help="per-device batch (default 64)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        cfg = model_config(args.config, args.overrides)
    except ConfigError as err:
        return refuse(err)
    flops = step_flops(cfg, args.batch)
    if args.json and paper_sized(cfg):
        flops["paper_run"] = paper_run(flops)
    print(json.dumps(flops, indent=2) if args.json else format_table(cfg, flops, args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
