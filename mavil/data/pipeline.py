"""The DALI pipeline: shards -> batches in the contract of DESIGN.md, decoding on the GPU where there is one.

    loader = make_loader(root, spec, rank=0, world_size=1, seed=0)
    for batch in loader:   # {"audio": (B, 1, F, mel), "video": (B, 3, T, S, S), "label": (B, C), "key": [...]}

In DALI (CPU pipeline without CUDA; GPU decode and augmentation with it):
- `fn.readers.webdataset` over the usable clips of every shard (`mavil.data.health` leaves, for each shard
  with a broken clip, a DALI index of its usable clips only: DALI fails a whole batch on one bad sample), split
  per data-parallel rank (`shard_id`, `num_shards`). DALI's epoch semantics: the usable clips form one list;
  in each epoch every rank reads one contiguous 1/world part of it, the parts rotating across epochs (so
  together the ranks see every clip exactly once per epoch, disjointly), shuffled within a buffer of
  `shuffle_buffer` clips seeded by `seed`.
  The last batch of a rank is partial, never padded with repeats.
- video: decode every frame of the clip (stored at 2 fps), take `video_frames` consecutive frames from a random
  start where a whole window fits, [0, frames - video_frames] (in evaluation the centre window, or `eval_clips`
  uniformly spaced windows for multi-clip inference); a clip shorter than the window starts anywhere in it and
  loops cyclically to its beginning (App. B); training: random resized crop (area `crop_scale`, aspect 3/4..4/3) and a
  horizontal flip with `flip_prob`; evaluation: resize the short side and centre crop; ImageNet
  mean/std normalisation; layout C, T, H, W.
- audio: decode to 16 kHz mono float (other rates resampled, several channels averaged: the repairs the
  health check counts), in training scaled by a random gain of up to `gain_db` decibels either way (the
  paper's fine-tuning "magnitude augmentation"; 0 = off, as in pre-training), padded with zeros to the longest
  clip of the batch; the real length travels beside it.
After DALI, in PyTorch on the same device: in training each waveform rolled circularly over its real samples by
a random shift (the paper's "R", done on the waveform before the fbank as Audio-MAE does, so the zero padding of a
short clip stays at its end), the Kaldi-exact fbank of each clip (mean removed over its real samples,
`mavil.data.fbank`), cut or zero-padded to `audio_frames`, normalised as (x - mean) / (2 * std).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..deps import require
from .fbank import fbank, to_model_input
from .shards import decode_meta, index_members, read_index

if TYPE_CHECKING:  # the health check is imported where a loader starts: it loads PyAV, which this module does not need
    from .health import DataHealth

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoaderSpec:
    """What a loader produces; `from_config` fills it from a run config's model and data sections."""

    batch_size: int
    audio_frames: int = 1024
    mel_bins: int = 128
    video_frames: int = 8
    video_size: int = 224
    train: bool = True  # augmentation and shuffling on
    audio_mean: float = -4.2677
    audio_std: float = 4.5690
    sample_rate: int = 16000
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_prob: float = 0.5
    time_shift: bool = True
    num_threads: int = 2
    shuffle_buffer: int = 1024
    eval_clips: int = 1  # evaluation: this many uniformly spaced windows per video -> video (B, clips, 3, T, S, S)
    gain_db: float = 0.0  # training: each waveform scaled by 10^(u/20), u uniform in [-gain_db, gain_db]; 0: off

    @classmethod
    def from_config(cls, cfg, batch_size: int, train: bool = True) -> "LoaderSpec":
        m, d = cfg.model, cfg.data
        return cls(batch_size, m.audio_frames, m.audio_mel_bins, m.video_frames, m.video_size, train, d.audio_mean,
                   d.audio_std, d.sample_rate, tuple(d.crop_scale), d.flip_prob, d.time_shift, max(d.num_workers, 1))


class ClipIndex:
    """Where each clip's members lie in the shards, from (tar, DALI index) pairs, clips numbered in their order:
    random access for samplers, read straight from the memory-mapped tars. Given `DataHealth.usable_shards()`, it
    numbers the usable clips in manifest order, the numbering `Loader(clips=...)` takes."""

    def __init__(self, shards: list[tuple[Path, Path]]):
        self.members: list[dict[str, tuple[int, int, int]]] = []  # per clip: ext -> (shard, offset, size)
        self.tars = [np.memmap(tar, dtype=np.uint8, mode="r") for tar, _ in shards]
        for number, (_, index) in enumerate(shards):
            for line in read_index(index):
                self.members.append({ext: (number, offset, size)
                                     for ext, (offset, size, _) in index_members(line).items()})

    def __len__(self) -> int:
        return len(self.members)

    def read(self, clip: int, exts: tuple[str, ...]) -> np.ndarray:
        """The bytes of the first of `exts` the clip has, as a uint8 array."""
        ext = next(e for e in exts if e in self.members[clip])
        shard, offset, size = self.members[clip][ext]
        return np.array(self.tars[shard][offset:offset + size])

    def meta(self, clip: int) -> dict:
        return decode_meta(self.read(clip, ("json",)).tobytes())


def _clip_source(index: ClipIndex, clips: list[int]):
    """DALI external source (per sample): the members of clips[i] for the i-th sample of the epoch."""
    def source(info):
        if info.idx_in_epoch >= len(clips):
            raise StopIteration
        clip = clips[info.idx_in_epoch]
        return index.read(clip, ("webm", "mp4")), index.read(clip, ("flac",)), index.read(clip, ("json",))
    return source


def _dali_pipeline(paths: list[str], index_paths: list[str], spec: LoaderSpec, shard_id: int, num_shards: int,
                   seed: int, device_id: int | None, source=None):
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device_id is not None

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=device_id, seed=seed)
    def pipeline():
        if source is None:
            video, audio, meta = fn.readers.webdataset(
                paths=paths, index_paths=index_paths, ext=["webm;mp4", "flac", "json"], name="reader",
                shard_id=shard_id, num_shards=num_shards, random_shuffle=spec.train,
                initial_fill=spec.shuffle_buffer, pad_last_batch=True, missing_component_behavior="error")
        else:
            video, audio, meta = fn.external_source(source=source, num_outputs=3, batch=False, dtype=types.UINT8)
        frames = fn.decoders.video(video, device="mixed" if on_gpu else "cpu")  # (n, H, W, 3) uint8
        clip = _window(fn, types, frames, spec)
        clip = _augment(fn, types, clip, spec)
        wave, _ = fn.decoders.audio(audio, dtype=types.FLOAT, downmix=True, sample_rate=spec.sample_rate)
        if spec.train and spec.gain_db > 0:
            wave = wave * _random_gain(spec.gain_db)
        length = wave.shape(dtype=types.INT32)[0]
        wave = fn.pad(wave.gpu() if on_gpu else wave, axes=[0])  # zeros to the batch's longest clip
        return clip, wave, length, meta

    return pipeline()


def _random_gain(gain_db: float):
    """A DALI node: per sample, the amplitude factor 10^(u/20) of a gain u uniform in [-gain_db, gain_db] dB."""
    from nvidia.dali import fn, math as dali_math

    decibels = fn.random.uniform(range=[-gain_db, gain_db])
    return dali_math.exp(decibels * (math.log(10) / 20))


def _window(fn, types, frames, spec: LoaderSpec):
    """`video_frames` consecutive frames from a random start where a whole window fits (training), or from
    `eval_clips` uniformly spaced starts (evaluation; one clip: the centre window); a clip shorter than the window
    loops to its beginning: (clips * T, H, W, 3)."""
    count = frames.shape(dtype=types.INT32)[0]
    clip_index, offset = (types.Constant(a.astype(np.int32)) for a in window_layout(spec))
    if spec.train:  # uniform over the starts where a whole window fits; any frame of a clip shorter than it
        slack = count - spec.video_frames
        fits = fn.cast(slack >= 0, dtype=types.INT32)
        starts = fits * (slack + 1) + (1 - fits) * count  # how many starts there are to draw from
        start = fn.cast(fn.random.uniform(range=[0.0, 1.0]) * fn.cast(starts, dtype=types.FLOAT), dtype=types.INT32)
        start = start - fn.cast(start >= starts, dtype=types.INT32)  # float rounding up to the end: the last start
    else:
        slack = count - spec.video_frames
        slack = slack * fn.cast(slack > 0, dtype=types.INT32)  # 0 when the clip is shorter than the window
        start = (clip_index * slack) // max(spec.eval_clips - 1, 1) if spec.eval_clips > 1 else slack // 2
    order = start + offset
    order = order - (order // count) * count  # modulo: loop to the beginning
    return fn.sequence_rearrange(frames, new_order=order)


def window_layout(spec: LoaderSpec) -> tuple[np.ndarray, np.ndarray]:
    """For each output frame: which evaluation clip it belongs to, and its offset within that clip's window."""
    clips = 1 if spec.train else spec.eval_clips
    frame = np.arange(clips * spec.video_frames)
    return frame // spec.video_frames, frame % spec.video_frames


def _augment(fn, types, clip, spec: LoaderSpec):
    """(T, H, W, 3) uint8 -> (3, T, S, S) float, normalised."""
    size = [spec.video_size, spec.video_size]
    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    if spec.train:
        clip = fn.random_resized_crop(clip, size=size, random_area=list(spec.crop_scale), random_aspect_ratio=[3 / 4, 4 / 3])
        mirror = fn.random.coin_flip(probability=spec.flip_prob)
        return fn.crop_mirror_normalize(clip, dtype=types.FLOAT, output_layout="CFHW", mean=mean, std=std, mirror=mirror)
    clip = fn.resize(clip, resize_shorter=spec.video_size)
    return fn.crop_mirror_normalize(clip, dtype=types.FLOAT, output_layout="CFHW", crop=size, mean=mean, std=std)


class Loader:
    """Iterates batches of one rank's part of a shard directory, epoch after epoch (one `for` loop = one epoch).

    With `clips` (this rank's clip numbers for an epoch, numbering the usable clips in manifest order, e.g.
    weighted draws) the loader reads exactly those clips in that order instead, whole batches only (a partial last
    batch is left out). Only usable clips are read (`health`: the directory's `DataHealth`, checked here if None).
    """

    def __init__(self, root: str | Path, spec: LoaderSpec, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | str | None = None, clips: list[int] | None = None,
                 health: DataHealth | None = None):
        require("nvidia.dali.plugin.pytorch")  # a missing DALI is named with its pip requirement and install command
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from .health import ensure_health

        self.root, self.spec = Path(root), spec
        self.health = health or ensure_health(self.root, progress=False)
        self.label_names = self.health.manifest["label_names"]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        shards = self.health.usable_shards()
        if not shards:
            raise ValueError(f"{self.root}: no usable clip (see {self.health.report})")
        paths, index_paths = [str(tar) for tar, _ in shards], [str(index) for _, index in shards]
        outputs = ["video", "wave", "length", "meta"]
        if clips is None:
            pipe = _dali_pipeline(paths, index_paths, spec, rank, world_size, seed, device_id)
            self._iterator = DALIGenericIterator(pipe, outputs, reader_name="reader",
                                                 last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)
        else:
            clips = list(clips)[: len(clips) // spec.batch_size * spec.batch_size]
            source = _clip_source(ClipIndex(shards), clips)
            pipe = _dali_pipeline(paths, index_paths, spec, rank, world_size, seed, device_id, source)
            self._iterator = DALIGenericIterator(pipe, outputs, size=len(clips), auto_reset=True,
                                                 last_batch_policy=LastBatchPolicy.DROP)
        self._shift = torch.Generator().manual_seed(seed * 1000 + rank)

    def __len__(self) -> int:
        return len(self._iterator)

    def __iter__(self):
        for (outputs,) in self._iterator:
            yield self._finish(outputs)

    def _finish(self, outputs: dict) -> dict:
        metas = [decode_meta(row.cpu().numpy().tobytes()) for row in outputs["meta"]]
        wave = outputs["wave"].to(self.device)
        lengths = outputs["length"].to(self.device).reshape(-1)
        if self.spec.train and self.spec.time_shift:
            wave = roll_waves(wave, lengths, self._shift)
        audio = to_model_input(fbank(wave, lengths, sample_rate=self.spec.sample_rate, num_mel_bins=self.spec.mel_bins),
                               self.spec.audio_frames, self.spec.audio_mean, self.spec.audio_std)
        return {"audio": audio, "video": split_clips(outputs["video"].to(self.device), self.spec),
                "label": multi_hot(metas, len(self.label_names)), "key": [meta["key"] for meta in metas]}


def split_clips(video: torch.Tensor, spec: LoaderSpec) -> torch.Tensor:
    """(B, 3, clips * T, S, S) -> (B, clips, 3, T, S, S) for multi-clip evaluation; unchanged otherwise."""
    if spec.train or spec.eval_clips == 1:
        return video
    batch, chans, _, height, width = video.shape
    return video.reshape(batch, chans, spec.eval_clips, spec.video_frames, height, width).transpose(1, 2)


def roll_waves(wave: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) waveforms zero-padded after `lengths` (B,) real samples: each rolled circularly over its real samples
    by its own random shift in [0, length) (Audio-MAE's roll of the waveform, the paper's "R"); padding unchanged."""
    batch, samples = wave.shape
    lengths = lengths.to(wave.device).long().clamp_min(1)
    draws = torch.rand(batch, generator=generator, dtype=torch.float64).to(wave.device)
    shifts = torch.minimum((draws * lengths).long(), lengths - 1)  # (B,)
    position = torch.arange(samples, device=wave.device)[None, :]  # (1, T)
    source = torch.where(position < lengths[:, None], (position - shifts[:, None]) % lengths[:, None], position)
    return torch.gather(wave, 1, source)


def multi_hot(metas: list[dict], classes: int) -> torch.Tensor:
    """(B, classes) float: 1 at each clip's label indices."""
    label = torch.zeros(len(metas), classes)
    for row, meta in enumerate(metas):
        label[row, meta.get("labels", [])] = 1.0
    return label

