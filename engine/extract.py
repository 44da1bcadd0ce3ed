"""Per-clip embeddings of a pre-training export, for linear probes, retrieval or AV-SUPERB-style studies.

    python -m mavil.engine.extract --weights MODEL.safetensors --data SHARDS --out emb.safetensors
    python -m mavil.engine.extract --weights MODEL.safetensors a.mp4 b.mkv --out emb.npz [--layers] [--device cpu]

Each clip gives `audio` and `video` (the encoders' mean patch token) and `fusion` (the fused audio and video means,
concatenated); --layers adds the same means at every block, as AV-SUPERB's expert returns them; `keys` holds the clip
keys or file paths in order. Inputs go through evaluation's preprocessing (a video file is first stored as `prepare`
stores a clip). The output layout: docs/model.md#embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..cli import refuse
from ..config import ConfigError, model_config_from_dict
from ..files import atomic_write
from ..data.pipeline import LoaderSpec, split_clips


class BadInput(ValueError):
    """An input that cannot be used: the message is one line naming it."""


def file_features(path: Path, spec: LoaderSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A video file -> audio (1, frames, mel bins) and video (3, T, S, S), or (clips, 3, T, S, S) when
    spec.eval_clips > 1: the clip `prepare` would store, through the reference loader's evaluation path."""
    from ..data.encode import encode_audio, encode_video
    from ..data.prepare import MAX_DURATION, Unusable, decode_clip
    from ..data.reference import audio_features, decode_audio, decode_video, video_features

    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        frames, waveform, _ = decode_clip(path, MAX_DURATION)
        video, audio = encode_video(frames), encode_audio(waveform)
    except Unusable as err:
        raise BadInput(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 -- whatever PyAV raises on a broken file: one line naming it
        raise BadInput(f"{path}: cannot decode: {type(err).__name__}: {err}") from None
    audio_in = audio_features(decode_audio(audio, spec.sample_rate), spec)
    video_in = video_features(decode_video(video), spec, np.random.default_rng(0))  # no randomness at train=False
    return audio_in, split_clips(video_in[None], spec)[0]


def load_backbone(path: Path):
    """A pre-training export -> (its Backbone, frozen, in eval mode; its model config)."""
    from ..model.weights import load_teacher, read_header

    shapes, raw = read_header(path)
    if not any(name.startswith("backbone.") for name in shapes):
        raise BadInput(f"{path}: not a pre-training export (no backbone.* tensors)")
    return load_teacher(path), model_config_from_dict({**raw, "stage": 1, "teacher": None})


def _pool_pair(x: torch.Tensor, audio_length: int) -> torch.Tensor:
    """(B, La + Lv, dim) joint sequence, each part [CLS] first -> (B, 2 * dim) audio mean || video mean."""
    return torch.cat([x[:, 1:audio_length].mean(dim=1), x[:, audio_length + 1 :].mean(dim=1)], dim=-1)


@torch.no_grad()
def embeddings(backbone, audio: torch.Tensor, video: torch.Tensor, layers: bool = False) -> dict[str, torch.Tensor]:
    """(B, 1, T, F) spectrograms, (B, 3, T, S, S) clips -> the named (B, ...) embeddings of the module docstring."""
    a_tokens, v_tokens = backbone.embed(audio, video)
    a_states = backbone.audio_encoder.hidden_states(a_tokens)  # depth + 1 of (B, 1 + Na, dim)
    v_states = backbone.video_encoder.hidden_states(v_tokens)
    a_um, v_um = a_states[-1], v_states[-1]
    a_mm, v_mm = backbone.fusion(a_um, v_um)
    out = {
        "audio": a_um[:, 1:].mean(dim=1),
        "video": v_um[:, 1:].mean(dim=1),
        "fusion": torch.cat([a_mm[:, 1:].mean(dim=1), v_mm[:, 1:].mean(dim=1)], dim=-1),
    }
    if layers:
        out["audio_layers"] = torch.stack([s[:, 1:].mean(dim=1) for s in a_states], dim=1)
        out["video_layers"] = torch.stack([s[:, 1:].mean(dim=1) for s in v_states], dim=1)
        if hasattr(backbone.fusion, "hidden_states"):  # vanilla fusion; MBT keeps its bottleneck apart
            fused = backbone.fusion.hidden_states(a_um, v_um)
            out["fusion_layers"] = torch.stack([_pool_pair(x, a_um.shape[1]) for x in fused], dim=1)
    return out


def batches_from_files(files: list[Path], spec: LoaderSpec):
    """Yields {"audio", "video", "key"} batches of spec.batch_size files."""
    for start in range(0, len(files), spec.batch_size):
        chunk = files[start : start + spec.batch_size]
        pairs = [file_features(path, spec) for path in chunk]
        yield {
            "audio": torch.stack([a for a, _ in pairs]),
            "video": torch.stack([v for _, v in pairs]),
            "key": [str(path) for path in chunk],
        }


def write(out: Path, tensors: dict[str, torch.Tensor], keys: list[str]) -> Path:
    """Writes the embeddings and keys: .safetensors (keys as JSON metadata) or .npz (keys as strings)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in tensors.items()}
        return atomic_write(out, lambda partial: save_file(tensors, str(partial), metadata={"keys": json.dumps(keys)}))

    def save_npz(partial: Path) -> None:
        with open(partial, "wb") as file:  # a file object: np.savez appends .npz to a path
            np.savez(file, keys=np.array(keys), **{k: v.numpy() for k, v in tensors.items()})

    return atomic_write(out, save_npz)


def extract(
    weights: Path,
    out: Path,
    data: Path | None = None,
    files: list[Path] | None = None,
    layers: bool = False,
    device: str = "cpu",
    batch_size: int = 8,
    workers: int = 0,
    audio_mean: float = LoaderSpec.audio_mean,
    audio_std: float = LoaderSpec.audio_std,
    progress: bool = True,
) -> Path:
    from tqdm import tqdm

    backbone, cfg = load_backbone(weights)
    backbone.to(device)
    spec = LoaderSpec(
        batch_size,
        cfg.audio_frames,
        cfg.audio_mel_bins,
        cfg.video_frames,
        cfg.video_size,
        train=False,
        audio_mean=audio_mean,
        audio_std=audio_std,
    )
    if files:
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise BadInput(f"{missing[0]}: no such file{more}")
        batches, total = batches_from_files(files, spec), -(-len(files) // batch_size)
    else:
        from ..data.reference import reference_loader

        if not (data / "manifest.json").is_file():
            raise BadInput(f"{data}: not a shard directory (no manifest.json)")
        loader = reference_loader(data, spec, num_workers=workers)
        batches, total = loader, None
    parts: dict[str, list[torch.Tensor]] = {}
    keys: list[str] = []
    for batch in tqdm(batches, total=total, desc="extract", unit="batch", disable=not progress, file=sys.stderr):
        found = embeddings(backbone, batch["audio"].to(device), batch["video"].to(device), layers)
        for name, value in found.items():
            parts.setdefault(name, []).append(value.float().cpu())
        keys += list(batch["key"])
    if not keys:
        raise BadInput(f"{data or 'the files'}: no usable clips")
    return write(out, {name: torch.cat(values) for name, values in parts.items()}, keys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mavil.engine.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, required=True, help="a pre-training export (model.safetensors)")
    parser.add_argument("--data", type=Path, help="a shard directory (mavil.data.prepare or the synthetic set)")
    parser.add_argument("files", nargs="*", type=Path, help="video files with sound (any container PyAV reads)")
    parser.add_argument("--out", type=Path, required=True, help="FILE.safetensors or FILE.npz")
    parser.add_argument("--layers", action="store_true", help="every block's pooled states too")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for --data")
    parser.add_argument("--audio-mean", type=float, default=LoaderSpec.audio_mean)
    parser.add_argument("--audio-std", type=float, default=LoaderSpec.audio_std)
    args = parser.parse_args(argv)
    if (args.data is None) == (not args.files):
        parser.error("give either --data SHARDS or video files")
    if args.batch < 1 or args.workers < 0:
        parser.error("--batch must be at least 1 and --workers at least 0")
    if args.out.suffix not in (".safetensors", ".npz"):
        parser.error("--out must end in .safetensors or .npz")
    if args.device == "cuda" and not torch.cuda.is_available():
        return refuse("--device cuda, but no CUDA device is available")
    try:
        out = extract(
            args.weights,
            args.out,
            args.data,
            args.files,
            args.layers,
            args.device,
            args.batch,
            args.workers,
            args.audio_mean,
            args.audio_std,
        )
    except (BadInput, ConfigError, ValueError, FileNotFoundError) as err:
        return refuse(err)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
