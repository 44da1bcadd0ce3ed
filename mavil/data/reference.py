"""The reference loader: how the peers load data, and the oracle the DALI pipeline is tested against.

PyAV decodes each clip's frames (converted to RGB as DALI converts, see `yuv420_to_rgb`) and audio on the CPU,
`torchaudio.compliance.kaldi.fbank` computes
the features clip by clip, torch ops crop, flip and normalise, and a PyTorch DataLoader batches.
It produces the same batch contract as `pipeline.Loader` from the same shards and `LoaderSpec`, and
splits the clips over ranks as DALI's first epoch does (contiguous parts). It is the baseline of
`bench/data.py` and the oracle of the tests, not a production path.

Like the pipeline, it reads only the clips `mavil.data.health` finds usable, and repairs as DALI's decoder does:
audio of several channels is averaged, audio of another rate resampled with torchaudio (see `decode_audio`);
short clips are padded (audio) and looped (video) by the features below.
"""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..deps import require
from .health import DataHealth, ensure_health
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .pipeline import ClipIndex, LoaderSpec, make_batch, rank_part, window_layout
from .shards import VIDEO_EXTS, decode_meta

av, torchaudio = require("av"), require("torchaudio")  # missing ones are named with their pip install commands


def read_clips(root: Path, shard: dict):
    """Yields (video bytes, flac bytes, meta) for each clip of one tar shard, in file order."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(root / shard["tar"]) as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = tar.extractfile(info).read()
    for parts in members.values():
        video = next(parts[ext] for ext in VIDEO_EXTS if ext in parts)
        yield video, parts["flac"], decode_meta(parts["json"])


def decode_video(data: bytes) -> np.ndarray:
    """-> (n, H, W, 3) uint8 RGB, every frame, converted from YUV as DALI's decoder converts (below)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(video=0))
    if frames[0].format.name != "yuv420p":
        return np.stack([frame.to_ndarray(format="rgb24") for frame in frames])
    return yuv420_to_rgb(np.stack([frame.to_ndarray() for frame in frames]))


def yuv420_to_rgb(planar: np.ndarray) -> np.ndarray:
    """(n, 3H/2, W) yuv420p planes -> (n, H, W, 3) uint8: ITU-R BT.601 limited range, chroma upsampled bilinearly
    (centred). DALI's video decoder converts exactly so (measured: within 1 level); swscale's default rgb24
    conversion does not interpolate chroma and differs by up to ~100 levels at sharp colour edges."""
    height = planar.shape[1] * 2 // 3
    width = planar.shape[2]
    luma = torch.from_numpy(planar[:, :height]).double()
    chroma = torch.from_numpy(planar[:, height:]).double().reshape(len(planar), 2, height // 2, width // 2) - 128
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)  # (n, 2, H, W): Cb, Cr
    y, cb, cr = (luma - 16) * 255 / 219, chroma[:, 0] * 255 / 224, chroma[:, 1] * 255 / 224
    red, blue = y + 1.402 * cr, y + 1.772 * cb
    green = (y - 0.299 * red - 0.114 * blue) / 0.587
    return torch.stack([red, green, blue], dim=-1).round().clamp(0, 255).to(torch.uint8).numpy()


PCM_SCALE = {"s16": 32768.0, "s32": 2.0**31, "flt": 1.0, "dbl": 1.0}  # full scale per sample format
RESAMPLING = {"lowpass_filter_width": 16, "rolloff": 1.0}  # DALI's decoder at its default quality (see decode_audio)


def decode_audio(data: bytes, sample_rate: int = 16000) -> torch.Tensor:
    """-> (T,) float32 mono in [-1, 1] at `sample_rate`: channels averaged, another rate converted by torchaudio with
    DALI's kernel (a Hann-windowed sinc of 16 zero crossings cut off at the lower Nyquist frequency, what
    `fn.decoders.audio` uses at quality 50; measured within 6e-5 of DALI's samples on 8 kHz stereo)."""
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    rate, fmt = frames[0].sample_rate, frames[0].format.name.rstrip("p")
    samples = np.concatenate([channels_first(frame) for frame in frames], axis=1)  # (channels, T)
    mono = torch.from_numpy((samples.astype(np.float32) / PCM_SCALE[fmt]).mean(axis=0))
    return mono if rate == sample_rate else torchaudio.functional.resample(mono, rate, sample_rate, **RESAMPLING)


def channels_first(frame) -> np.ndarray:
    """A decoded audio frame -> (channels, n) samples, whether its format is planar or packed (interleaved)."""
    array = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    return array if frame.format.is_planar else array.reshape(-1, len(frame.layout.channels)).T


def audio_features(wave: torch.Tensor, spec: LoaderSpec) -> torch.Tensor:
    """(T,) waveform -> (1, audio_frames, mel) normalised fbank, as Audio-MAE's loader computes it."""
    fbank = torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean())[None],
        htk_compat=True,
        sample_frequency=spec.sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=spec.mel_bins,
        dither=0.0,
        frame_shift=10,
        frame_length=25,
    )
    fbank = F.pad(fbank, (0, 0, 0, max(spec.audio_frames - fbank.shape[0], 0)))[: spec.audio_frames]
    return ((fbank - spec.audio_mean) / (2 * spec.audio_std))[None]


def window_indices(count: int, spec: LoaderSpec, rng: np.random.Generator) -> np.ndarray:
    """Frame indices of the window(s), as the pipeline takes them: (clips * T,)."""
    clip_index, offset = window_layout(spec)
    slack = max(count - spec.video_frames, 0)
    if spec.train:  # where a whole window fits; anywhere in a clip shorter than it (then it loops)
        start = int(rng.integers(slack + 1 if count >= spec.video_frames else count))
    elif spec.eval_clips > 1:
        start = clip_index * slack // (spec.eval_clips - 1)
    else:
        start = slack // 2
    return (start + offset) % count


def crop_box(height: int, width: int, spec: LoaderSpec, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w): a random-resized-crop box in training (torchvision's rule), the centre square's otherwise."""
    if spec.train:
        for _ in range(10):
            area = height * width * rng.uniform(*spec.crop_scale)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def video_features(frames: np.ndarray, spec: LoaderSpec, rng: np.random.Generator) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (3, T, S, S) normalised float: window, crop, resize, flip."""
    clip = torch.from_numpy(frames[window_indices(len(frames), spec, rng)]).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    top, left, h, w = crop_box(clip.shape[2], clip.shape[3], spec, rng)
    clip = clip[:, :, top : top + h, left : left + w]
    if clip.shape[-2:] != (spec.video_size, spec.video_size):
        clip = F.interpolate(clip, size=(spec.video_size, spec.video_size), mode="bilinear", antialias=True)
    if spec.train and rng.random() < spec.flip_prob:
        clip = clip.flip(-1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return ((clip - mean) / std).permute(1, 0, 2, 3)


class ReferenceClips(torch.utils.data.IterableDataset):
    """One rank's contiguous part of the usable clips (DALI's first-epoch split), split again over DataLoader
    workers."""

    def __init__(
        self,
        root: str | Path,
        spec: LoaderSpec,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        health: DataHealth | None = None,
    ):
        self.root, self.spec, self.seed = Path(root), spec, seed
        self.health = health or ensure_health(self.root, progress=False)
        self.manifest = self.health.manifest
        part = rank_part(self.health.usable, rank, world_size)
        self.first, self.last = part.start, part.stop

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng([self.seed, self.first, worker])
        index = ClipIndex(self.health.usable_shards())  # made here: each worker maps the tars itself
        for clip in range(self.first + worker, self.last, workers):
            video, audio = index.read(clip, VIDEO_EXTS).tobytes(), index.read(clip, ("flac",)).tobytes()
            yield self.features(video, audio, index.meta(clip), rng)

    def features(self, video: bytes, audio: bytes, meta: dict, rng: np.random.Generator) -> dict:
        wave = decode_audio(audio, self.spec.sample_rate)
        if self.spec.train and self.spec.gain_db > 0:  # magnitude augmentation, as the pipeline's
            wave = wave * 10 ** (rng.uniform(-self.spec.gain_db, self.spec.gain_db) / 20)
        if self.spec.train and self.spec.time_shift:  # "R": the waveform rolled by a shift in [0, length) before the
            wave = torch.roll(wave, int(rng.integers(len(wave))))  # fbank, as Audio-MAE and the pipeline roll it
        return {
            "audio": audio_features(wave, self.spec),
            "video": video_features(decode_video(video), self.spec, rng),
            "meta": meta,
        }


def reference_loader(
    root: str | Path,
    spec: LoaderSpec,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    health: DataHealth | None = None,
) -> torch.utils.data.DataLoader:
    clips = ReferenceClips(root, spec, rank, world_size, seed, health)
    classes = len(clips.manifest["label_names"])

    def collate(items: list[dict]) -> dict:
        audio = torch.stack([item["audio"] for item in items])
        metas = [item["meta"] for item in items]
        return make_batch(audio, torch.stack([item["video"] for item in items]), metas, classes, spec)

    return torch.utils.data.DataLoader(clips, batch_size=spec.batch_size, num_workers=num_workers, collate_fn=collate)
