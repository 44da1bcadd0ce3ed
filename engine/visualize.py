"""Reconstruction figures as the paper's Figure 3 (App. A): what a stage-1 model makes of masked clips.

    python -m mavil.engine.visualize --run RUN_DIR [--out recon.png] [--mask-ratio 0.7] [--clips 4] [--seed 0]
    python -m mavil.engine.visualize --weights model.safetensors --config CONFIG [--data DIR] [--out recon.png]

Per clip three rows (original, masked input, reconstruction), each the video's frames and then the spectrogram, for
the first --clips of the evaluation loader over --data (default: the config's data). Stage-2 models are refused.
Display units and the norm_pix_loss rescaling: docs/training.md#reconstruction-figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..cli import refuse
from ..config import ConfigError, ModelConfig, load_config, model_config_from_dict, num_visible
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.pipeline import Loader
from ..kernels.masked_mse import norm_pix_stats
from ..model import MAViL, read_weights
from ..model.mavil import AUDIO_CHANNELS, VIDEO_CHANNELS
from ..model.patch import unpatchify
from .run import loader_spec, training_set

GREY = 0.5  # masked patches are RGB (0.5, 0.5, 0.5) in both modalities
SPECTROGRAM_COLOURS = "viridis"  # holds no grey, so masked patches stand out
ROWS = ("original", "masked", "reconstruction")
FRAME_INCHES = 1.15  # height of a row and width of a video frame
NORM_PIX_NOTE = "norm-pix: predicted patches rescaled with the original patches' mean and std"


@dataclass
class Panels:
    """One modality's three rows as images, float RGB in [0, 1]: video (B, T, H, W, 3), spectrograms (B, F, T, 3)
    (frequency first, drawn with the origin below). `hidden` (B, T, H, W) or (B, F, T): True on masked pixels."""

    original: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    hidden: np.ndarray

    @classmethod
    def build(cls, original: np.ndarray, reconstruction: np.ndarray, hidden: np.ndarray) -> "Panels":
        masked = np.where(hidden[..., None], np.float32(GREY), original)
        return cls(original, masked, reconstruction, hidden)

    def rows(self, clip: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.original[clip], self.masked[clip], self.reconstruction[clip]


# ---- from reconstruct()'s tokens to images -------------------------------------------------------------------


def rescaled_norm_pix(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, N, D) per-patch normalised predictions -> input units, with the mean and std of the target patch at the
    same position: the inverse of norm_pix_loss's normalisation (masked_mse's own statistics)."""
    mean, std = norm_pix_stats(target)
    return pred * std + mean


def restored_inputs(
    pred: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    patch: tuple[int, ...],
    chans: int,
    size: tuple[int, ...],
    norm_pix: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One modality's reconstruct() outputs, pred and target (B, N, D), mask (B, N) -> in input layout: the original
    (B, C, *size), the reconstruction (predictions at hidden tokens, the original at visible ones) (B, C, *size)
    and the hidden pixels (B, *size) bool."""
    pred, target = pred.float(), target.float()
    predicted = rescaled_norm_pix(pred, target) if norm_pix else pred
    hidden_tokens = mask.bool()[..., None]  # (B, N, 1)
    filled = torch.where(hidden_tokens, predicted, target)
    hidden = unpatchify(hidden_tokens.expand_as(target).float(), patch, chans, size)[:, 0] > 0.5
    return unpatchify(target, patch, chans, size), unpatchify(filled, patch, chans, size), hidden


def video_rgb(video: torch.Tensor) -> np.ndarray:
    """(B, 3, T, H, W) ImageNet-normalised -> (B, T, H, W, 3) RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (video * std + mean).clamp(0.0, 1.0).permute(0, 2, 3, 4, 1).numpy()


def spectrogram_rgb(audio: torch.Tensor, low: float, high: float) -> np.ndarray:
    """(B, 1, T, F) spectrograms -> (B, F, T, 3) colours of the values' place in [low, high]."""
    values = ((audio[:, 0].transpose(1, 2) - low) / max(high - low, 1e-6)).clamp(0.0, 1.0)  # (B, F, T)
    return colormaps[SPECTROGRAM_COLOURS](values.numpy())[..., :3].astype(np.float32)


def reconstruction_panels(outputs: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, Panels]:
    """MAViL.reconstruct()'s outputs (stage 1, any device) -> {"audio": Panels, "video": Panels}."""
    out = {name: value.detach().cpu() for name, value in outputs.items()}
    audio_size, video_size = (cfg.audio_frames, cfg.audio_mel_bins), (cfg.video_frames, cfg.video_size, cfg.video_size)
    a_orig, a_rec, a_hidden = restored_inputs(
        out["audio_pred"],
        out["audio_mask"],
        out["audio_target"],
        tuple(cfg.audio_patch),
        AUDIO_CHANNELS,
        audio_size,
        cfg.norm_pix_loss,
    )
    v_orig, v_rec, v_hidden = restored_inputs(
        out["video_pred"],
        out["video_mask"],
        out["video_target"],
        tuple(cfg.video_patch),
        VIDEO_CHANNELS,
        video_size,
        cfg.norm_pix_loss,
    )
    low, high = float(a_orig.min()), float(a_orig.max())
    audio = Panels.build(
        spectrogram_rgb(a_orig, low, high), spectrogram_rgb(a_rec, low, high), a_hidden.transpose(1, 2).numpy()
    )
    video = Panels.build(video_rgb(v_orig), video_rgb(v_rec), v_hidden.numpy())
    return {"audio": audio, "video": video}


# ---- drawing -----------------------------------------------------------------------------------------------


def draw(panels: dict[str, Panels], keys: list[str], title: str) -> Figure:
    """A figure of 3 rows per clip, each row T video frames and one spectrogram: clips * 3 * (T + 1) axes."""
    video, audio = panels["video"], panels["audio"]
    clips, frames = video.original.shape[:2]
    mel_bins, audio_frames = audio.original.shape[1:3]
    spectrogram_width = min(max(audio_frames / mel_bins, 1.0), 4.0)  # in frame widths
    margins = {"left": 0.9, "right": 0.35, "bottom": 0.35, "top": 1.0}  # inches
    fig = Figure(
        figsize=(
            FRAME_INCHES * (frames + spectrogram_width) + margins["left"] + margins["right"],
            FRAME_INCHES * 3 * clips + margins["bottom"] + margins["top"],
        )
    )
    width, height = fig.get_size_inches()
    grid = fig.add_gridspec(
        3 * clips,
        frames + 1,
        width_ratios=[1.0] * frames + [spectrogram_width],
        left=margins["left"] / width,
        right=1 - margins["right"] / width,
        bottom=margins["bottom"] / height,
        top=1 - margins["top"] / height,
        wspace=0.04,
        hspace=0.08,
    )
    for clip in range(clips):
        for row, (name, clip_frames, spectrogram) in enumerate(zip(ROWS, video.rows(clip), audio.rows(clip))):
            line = 3 * clip + row
            for t in range(frames):
                ax = _bare(fig.add_subplot(grid[line, t]))
                ax.imshow(clip_frames[t], interpolation="nearest")
                if t == 0:
                    ax.set_ylabel(f"{keys[clip]}\n{name}" if row == 0 else name, fontsize=7)
                if line == 0:
                    ax.set_title(f"frame {t}", fontsize=7)
            ax = _bare(fig.add_subplot(grid[line, frames]))
            ax.imshow(spectrogram, origin="lower", aspect="auto", interpolation="nearest")
            ax.yaxis.set_label_position("right")
            ax.set_ylabel("mel bin", fontsize=6)
            if line == 0:
                ax.set_title("spectrogram, (log-mel − mean) / (2·std)", fontsize=7)
            if line == 3 * clips - 1:
                ax.set_xlabel("time (10-ms frames) →", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return fig


def _bare(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def caption(name: str, mask_ratio: float, norm_pix: bool) -> str:
    lines = [
        name,
        f"per clip: original / masked input ({mask_ratio:.0%} of patches hidden, grey) / "
        "reconstruction (predictions at masked patches, visible patches pasted back)",
    ]
    return "\n".join(lines + [NORM_PIX_NOTE] if norm_pix else lines)


# ---- model and data ----------------------------------------------------------------------------------------


def load_stage1_model(path: str | Path) -> MAViL:
    """The MAViL saved in a weights file, in eval mode; a stage-2 model is refused (it predicts features, not
    inputs)."""
    state, raw_cfg = read_weights(path)
    stage = raw_cfg.get("stage", 1)
    if stage != 1:
        raise ValueError(
            f"{path}: a stage-{stage} model predicts its teacher's fusion features, not spectrograms and "
            f"pixels; only stage-1 models reconstruct their inputs (its teacher is one: {raw_cfg.get('teacher')})"
        )
    model = MAViL(model_config_from_dict(raw_cfg, source=f"{path} metadata"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the architecture in its own metadata: {err}") from None
    return model.eval()


def first_batch(root: Path, cfg, clips: int, seed: int, device: torch.device) -> dict:
    """The first `clips` clips of `root` through the evaluation loader (no augmentation, centre window)."""
    loader = Loader(root, loader_spec(cfg, clips, False), seed=seed, device=device)
    return next(iter(loader))


def figure_for(model: MAViL, batch: dict, mask_ratio: float, name: str) -> Figure:
    """One masked pass over the batch -> the drawn figure."""
    outputs = model.reconstruct(batch["audio"], batch["video"], mask_ratio)
    panels = reconstruction_panels(outputs, model.cfg)
    return draw(panels, batch["key"], caption(name, mask_ratio, model.cfg.norm_pix_loss))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mavil.engine.visualize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a run directory: its model.safetensors and config.json")
    source.add_argument("--weights", type=Path, help="a consolidated weights file (with --config)")
    parser.add_argument("--config", type=Path, help="the run config whose data section to use (with --weights)")
    parser.add_argument("--data", type=Path, help="a shard directory (default: the config's data)")
    parser.add_argument("--out", type=Path, default=Path("recon.png"), help="the PNG to write (default recon.png)")
    parser.add_argument("--mask-ratio", type=float, default=0.7, help="fraction of tokens hidden (the paper's 0.7)")
    parser.add_argument("--clips", type=int, default=4, help="clips to show (3 rows each)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the masks")
    args = parser.parse_args(argv)
    if args.weights is not None and args.config is None:
        parser.error("--weights needs --config (the run config naming the data)")
    if args.clips < 1:
        parser.error("--clips must be >= 1")
    return args


def run(args: argparse.Namespace, device: torch.device) -> Path:
    weights, config = (
        (args.run / "model.safetensors", args.run / "config.json") if args.run else (args.weights, args.config)
    )
    model = load_stage1_model(weights)
    for tokens in (model.cfg.audio_tokens, model.cfg.video_tokens):
        if not 0.0 < args.mask_ratio < 1.0 or not 1 <= num_visible(tokens, args.mask_ratio) < tokens:
            raise ValueError(
                f"--mask-ratio {args.mask_ratio}: must leave some of {tokens} tokens visible and some hidden"
            )
    cfg = dataclasses.replace(load_config(config), model=model.cfg)  # the loader makes the inputs this model takes
    batch = first_batch(args.data or training_set(cfg).path(), cfg, args.clips, args.seed, device)
    torch.manual_seed(args.seed)
    fig = figure_for(model.to(device), batch, args.mask_ratio, name=str(args.run or weights))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    return args.out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    except (ConfigError, ValueError, FileNotFoundError) as err:
        return refuse(err)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
