"""The DALI pipeline: shards -> batches in the contract of DESIGN.md, decoding on the GPU where there is one.

    loader = Loader(root, LoaderSpec(batch_size=8), rank=0, world_size=1, seed=0)
    for batch in loader:   # Batch: {"audio": (B, 1, F, mel), "video": (B, 3, T, S, S), "label": (B, C), "key": [...]}

DALI reads the usable clips of every shard (`mavil.data.health`), each rank a disjoint part per epoch, shuffled in a
seeded buffer, the last batch partial; it decodes and augments video (window, crop, flip; centre in evaluation) and
decodes audio; then, in PyTorch on the same device, the waveform roll ("R"), the Kaldi-exact fbank
(`mavil.data.fbank`) and the normalisation. Details: docs/data.md#the-dali-pipeline.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch

from ..constants import AUDIOSET_MEAN, AUDIOSET_STD, IMAGENET_MEAN, IMAGENET_STD
from ..deps import require
from ..seeds import seed_for
from .fbank import fbank, to_model_input
from .health import DataHealth, ensure_health
from .shards import decode_meta, index_members, read_index

VIDEO_EXTS = ("webm", "mp4")  # as shards.VIDEO_EXTS, in the reader's order
PLACE_BYTES = 4096  # a sample's place in its tar ("path:offset:name") as the order-only pipeline pads it
PLACE = re.compile(r'"([^"]+):(\d+):([^":]+)"')  # how DALI's errors name the sample they failed on
PREFETCH = 2  # DALI's iterator runs this many batches ahead: an error may surface a batch or two early


@dataclass
class LoaderSpec:
    """What a loader produces (plain values; a run's is built by its plan, `mavil.engine.run.loader_spec`)."""

    batch_size: int
    audio_frames: int = 1024
    mel_bins: int = 128
    video_frames: int = 8
    video_size: int = 224
    train: bool = True  # augmentation and shuffling on
    audio_mean: float = AUDIOSET_MEAN
    audio_std: float = AUDIOSET_STD
    sample_rate: int = 16000
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_prob: float = 0.5
    time_shift: bool = True
    num_threads: int = 2
    shuffle_buffer: int = 1024
    eval_clips: int = 1  # evaluation: this many uniformly spaced windows per video -> video (B, clips, 3, T, S, S)
    gain_db: float = 0.0  # training: each waveform scaled by 10^(u/20), u uniform in [-gain_db, gain_db]; 0: off


class ClipIndex:
    """Where each clip's members lie in the shards, from (tar, DALI index) pairs, clips numbered in their order:
    random access for samplers, read straight from the memory-mapped tars. Given `DataHealth.usable_shards()`, it
    numbers the usable clips in manifest order, the numbering `Loader(clips=...)` takes."""

    def __init__(self, shards: list[tuple[Path, Path]]):
        self.members: list[dict[str, tuple[int, int, int]]] = []  # per clip: ext -> (shard, offset, size)
        self.tars = [np.memmap(tar, dtype=np.uint8, mode="r") for tar, _ in shards]
        for number, (_, index) in enumerate(shards):
            for line in read_index(index):
                self.members.append(
                    {ext: (number, offset, size) for ext, (offset, size, _) in index_members(line).items()}
                )

    def __len__(self) -> int:
        return len(self.members)

    def read(self, clip: int, exts: tuple[str, ...]) -> np.ndarray:
        """The bytes of the first of `exts` the clip has, as a uint8 array."""
        ext = next(e for e in exts if e in self.members[clip])
        shard, offset, size = self.members[clip][ext]
        return np.array(self.tars[shard][offset : offset + size])

    def meta(self, clip: int) -> dict:
        return decode_meta(self.read(clip, ("json",)).tobytes())


def _batch_source(index: ClipIndex, batches: list[list[int]]):
    """DALI external source (per batch): the members of the clips of each batch in turn, then StopIteration."""
    for batch in batches:
        yield tuple([index.read(clip, exts) for clip in batch] for exts in (VIDEO_EXTS, ("flac",), ("json",)))


def _dali_pipeline(
    paths: list[str],
    index_paths: list[str],
    spec: LoaderSpec,
    shard_id: int,
    num_shards: int,
    seed: int,
    device_id: int | None,
    source=None,
    order_only: bool = False,
):
    """The loader's pipeline: from the webdataset reader, or from `source` (per batch); `order_only`: the reader
    alone, reading the .json members only and giving each sample's place ("tar:offset:name", zero-padded to
    PLACE_BYTES): the very order of the full pipeline's reader (same seed, split and shuffle), without decoding."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device_id is not None

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=device_id, seed=seed)
    def pipeline():
        if order_only:
            meta = fn.readers.webdataset(
                paths=paths,
                index_paths=index_paths,
                ext=["json"],
                name="reader",
                shard_id=shard_id,
                num_shards=num_shards,
                random_shuffle=spec.train,
                initial_fill=spec.shuffle_buffer,
                pad_last_batch=True,
            )
            return fn.pad(fn.get_property(meta, key="source_info"), axes=[0], shape=[PLACE_BYTES])
        if source is None:
            video, audio, meta = fn.readers.webdataset(
                paths=paths,
                index_paths=index_paths,
                ext=["webm;mp4", "flac", "json"],
                name="reader",
                shard_id=shard_id,
                num_shards=num_shards,
                random_shuffle=spec.train,
                initial_fill=spec.shuffle_buffer,
                pad_last_batch=True,
                missing_component_behavior="error",
            )
        else:
            video, audio, meta = fn.external_source(source=source, num_outputs=3, batch=True, dtype=types.UINT8)
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
        clip = fn.random_resized_crop(
            clip, size=size, random_area=list(spec.crop_scale), random_aspect_ratio=[3 / 4, 4 / 3]
        )
        mirror = fn.random.coin_flip(probability=spec.flip_prob)
        return fn.crop_mirror_normalize(
            clip, dtype=types.FLOAT, output_layout="CFHW", mean=mean, std=std, mirror=mirror
        )
    clip = fn.resize(clip, resize_shorter=spec.video_size)
    return fn.crop_mirror_normalize(clip, dtype=types.FLOAT, output_layout="CFHW", crop=size, mean=mean, std=std)


class Loader:
    """Iterates batches of one rank's part of a shard directory, epoch after epoch (one `for` loop = one epoch).

    With `clips` (this rank's clip numbers for an epoch, numbering the usable clips in manifest order, e.g.
    weighted draws) the loader reads exactly those clips in that order instead, whole batches only (a partial last
    batch is left out). Only usable clips are read (`health`: the directory's `DataHealth`, checked here if None).

    A clip that DALI fails on although the health check accepted it is dropped from its batch (`DataHealth.drop`)
    and from later epochs; the batch count holds. `len(loader)` is the same on every rank (DALI's count for the
    largest part); a rank with a smaller part yields one batch fewer rather than DALI's empty one. `full_batches`:
    the batches of exactly spec.batch_size clips, the ones a trainer steps on.
    Details: docs/data_health.md, "A clip that only DALI refuses".
    """

    def __init__(
        self,
        root: str | Path,
        spec: LoaderSpec,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str | None = None,
        clips: list[int] | None = None,
        health: DataHealth | None = None,
    ):
        require("nvidia.dali.plugin.pytorch")  # a missing DALI is named with its pip requirement and install command
        self.root, self.spec = Path(root), spec
        self.health = health or ensure_health(self.root, progress=False)
        self.label_names = self.health.manifest["label_names"]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._device_id = (self.device.index or 0) if self.device.type == "cuda" else None
        self._rank, self._world, self._seed = rank, world_size, seed
        shards = self.health.reader_shards()
        self._reader_clips = self.health.usable - len(self.health.dropped_in_run())  # the clips those shards list
        if not shards:
            raise ValueError(f"{self.root}: no usable clip (see {self.health.report})")
        self._paths, self._index_paths = [str(tar) for tar, _ in shards], [str(index) for _, index in shards]
        self._index: ClipIndex | None = None  # made on first need: it maps every tar and parses every index line
        self._places: dict[tuple[str, int], int] | None = None  # (tar, member offset) -> clip number
        self._order = None  # after a reader failure: the order-only reader's epochs (lists of batches of clips)
        self._epochs, self._rebuilds, self._failure = 0, 0, None
        self._iterator, self._batches = None, None
        if clips is None:
            try:
                self._iterator = self._reader_iterator()
                self._length = len(self._iterator)
            except RuntimeError as error:  # the iterator decodes its first batch as it starts
                self._failure = error
                self._length = len(self._order_iterator())
        else:
            clips = list(clips)[: len(clips) // spec.batch_size * spec.batch_size]
            self._batches = [clips[i : i + spec.batch_size] for i in range(0, len(clips), spec.batch_size)]
            self._length = len(self._batches)
        self._shift = torch.Generator().manual_seed(seed_for(seed, rank))

    def __len__(self) -> int:
        return self._length

    @property
    def full_batches(self) -> int:
        """The batches of exactly spec.batch_size clips among the first `len(self)`: all of them, or all but a partial
        last one."""
        if self._batches is not None:
            return self._length
        return len(rank_part(self._reader_clips, self._rank, self._world)) // self.spec.batch_size

    def __iter__(self):
        if self._batches is not None:
            yield from self._decoded(self._batches)
            return
        epoch, done = self._epochs, 0
        self._epochs += 1
        while self._order is None and self._failure is None:
            try:
                (outputs,) = next(self._iterator)
            except StopIteration:  # the epoch's end (the iterator resets itself for the next)
                return
            except RuntimeError as error:  # DALI failed this batch (or one it prefetched)
                self._failure = error
                break
            if len(outputs["meta"]):  # DALI ends a rank whose part is shorter than another's with an empty batch
                yield self._finish(outputs)
            done += 1
        if self._order is None:  # the first failure: the order-only reader catches up to this epoch
            self._order = self._order_epochs()
            for _ in range(epoch):
                next(self._order)
        batches = next(self._order)[done:]
        if self._failure is not None:
            self._drop_named(self._failure, batches)
            self._failure, self._iterator = None, None  # DALI's pipeline is no longer valid after an error
        yield from self._decoded(batches)

    # the normal path and the order-only reader
    def _reader_iterator(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipe = _dali_pipeline(
            self._paths, self._index_paths, self.spec, self._rank, self._world, self._seed, self._device_id
        )
        return DALIGenericIterator(
            pipe,
            ["video", "wave", "length", "meta"],
            reader_name="reader",
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def _order_iterator(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        pipe = _dali_pipeline(
            self._paths, self._index_paths, self.spec, self._rank, self._world, self._seed, None, order_only=True
        )
        return DALIGenericIterator(
            pipe, ["place"], reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True
        )

    def _order_epochs(self):
        """Epoch after epoch: the reader's batches as lists of clip numbers."""
        iterator = self._order_iterator()
        while True:
            batches = [
                [self._place(row) for row in outputs["place"]] for (outputs,) in iterator if len(outputs["place"])
            ]
            clips = [[self._clip_at(tar, offset) for tar, offset, _ in batch] for batch in batches]
            for batch, numbers in zip(batches, clips):
                for (tar, offset, name), clip in zip(batch, numbers):
                    if clip is None:
                        raise ValueError(
                            f"{self.root}: DALI's reader gave {name} at byte {offset} of {tar}, "
                            f"which is no usable clip of the health report {self.health.report}"
                        )
            yield clips

    @staticmethod
    def _place(row: torch.Tensor) -> tuple[str, int, str]:
        path, offset, name = row.numpy().tobytes().rstrip(b"\0").decode().rsplit(":", 2)
        return path, int(offset), name

    def _clip_index(self) -> ClipIndex:
        if self._index is None:
            self._index = ClipIndex(self.health.usable_shards())
        return self._index

    def _clip_at(self, tar: str, offset: int) -> int | None:
        """The number of the clip with a member at `offset` of `tar`; None for none."""
        if self._places is None:
            index, tars = self._clip_index(), [str(tar) for tar, _ in self.health.usable_shards()]
            self._places = {
                (tars[shard], member_offset): clip
                for clip, members in enumerate(index.members)
                for shard, member_offset, _ in members.values()
            }
        return self._places.get((tar, offset))

    # decoding given batches, dropping the clips DALI fails on
    def _decoded(self, batches: list[list[int]]):
        """Finished batches of the given clips (one per batch: `len(batches)` of them), each without the clips
        DALI fails on (dropped, see the class)."""
        batches = [[clip for clip in batch if clip not in self.health.dropped] for batch in batches]
        last, owed, start = None, 0, 0
        while start < len(batches):
            if not batches[start]:  # every clip of it dropped: a neighbour's repeat keeps the batch count
                start += 1
                if last is None:
                    owed += 1
                else:
                    yield last
                continue
            run = batches[start:]
            outputs = self._source_batches(run[: next((i for i, batch in enumerate(run) if not batch), len(run))])
            while True:
                try:
                    finished = next(outputs)
                except StopIteration:
                    break
                except RuntimeError as error:  # DALI failed batches[start] (or one it prefetched): again without
                    self._isolate(error, batches, start)  # the clips it fails on, from a new pipeline
                    break
                last = self._finish(finished)
                start += 1
                for _ in range(owed + 1):
                    yield last
                owed = 0
        if owed:
            raise RuntimeError(f"{self.root}: DALI failed on every clip of this rank's part ({self.health.report})")

    def _source_batches(self, batches: list[list[int]]):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self._rebuilds += 1  # a rebuilt pipeline draws new augmentations, not the first pipeline's again
        pipe = _dali_pipeline(
            self._paths,
            self._index_paths,
            self.spec,
            self._rank,
            self._world,
            self._seed + 7919 * self._rebuilds,
            self._device_id,
            _batch_source(self._clip_index(), batches),
        )
        for (outputs,) in DALIGenericIterator(
            pipe, ["video", "wave", "length", "meta"], last_batch_policy=LastBatchPolicy.PARTIAL
        ):
            yield outputs

    def _drop_named(self, error: Exception, batches: list[list[int]]) -> bool:
        """Drops the clip DALI's error names, where it is in `batches`; -> whether it was."""
        match = PLACE.search(str(error))
        clip = self._clip_at(match[1], int(match[2])) if match else None
        if clip is None or not any(clip in batch for batch in batches):
            return False
        self._drop(clip, error, batches)
        return True

    def _isolate(self, error: Exception, batches: list[list[int]], start: int) -> None:
        """After DALI failed on batches[start] (or one of the next PREFETCH): drops the clips that fail alone from
        batches[start:]."""
        if self._drop_named(error, batches[start : start + PREFETCH + 1]):
            return
        for batch in batches[start : start + PREFETCH + 1]:
            failing = [clip for clip in dict.fromkeys(batch) if not self._decodes(clip)]  # each clip once
            for clip in failing:
                self._drop(clip, error, batches[start:])
            if failing:
                return
        raise RuntimeError(f"{self.root}: DALI failed on a batch, and on none of its clips alone") from error

    def _decodes(self, clip: int) -> bool:
        """Whether DALI's pipeline decodes `clip` alone."""
        pipe = _dali_pipeline(
            self._paths,
            self._index_paths,
            self.spec,
            self._rank,
            self._world,
            self._seed,
            self._device_id,
            _batch_source(self._clip_index(), [[clip]]),
        )
        try:
            pipe.build()
            pipe.run()
            return True
        except RuntimeError:
            return False
        finally:
            del pipe

    def _drop(self, clip: int, error: Exception, batches: list[list[int]]) -> None:
        """Drops `clip` (`DataHealth.drop`) and removes it from `batches` (in place), wherever it is."""
        for batch in batches:
            batch[:] = [other for other in batch if other != clip]
        if clip in self.health.dropped:
            return
        reason = next(
            (line.strip() for line in str(error).splitlines() if "failed" in line.lower()),
            str(error).splitlines()[-1] if str(error) else type(error).__name__,
        )
        self.health.drop(clip, reason[:300])
        key = self._clip_index().meta(clip)["key"]
        print(
            f"data: DALI failed to decode clip {key} ({reason[:200]}): left out of its batch and of later "
            f"epochs; counted as decode_failed_in_pipeline",
            file=sys.stderr,
            flush=True,
        )

    def _finish(self, outputs: dict) -> dict:
        metas = [decode_meta(row.cpu().numpy().tobytes()) for row in outputs["meta"]]
        wave = outputs["wave"].to(self.device)
        lengths = outputs["length"].to(self.device).reshape(-1)
        if self.spec.train and self.spec.time_shift:
            wave = roll_waves(wave, lengths, self._shift)
        audio = to_model_input(
            fbank(wave, lengths, sample_rate=self.spec.sample_rate, num_mel_bins=self.spec.mel_bins),
            self.spec.audio_frames,
            self.spec.audio_mean,
            self.spec.audio_std,
        )
        return make_batch(audio, outputs["video"].to(self.device), metas, len(self.label_names), self.spec)


class Batch(TypedDict):
    """A batch as both loaders yield it (DESIGN.md, "Contracts"), built by `make_batch` alone."""

    audio: torch.Tensor  # (B, 1, audio_frames, mel_bins) float32: normalised fbank
    video: torch.Tensor  # (B, 3, T, S, S) float32: normalised RGB; (B, clips, 3, T, S, S) where spec.eval_clips > 1
    label: torch.Tensor  # (B, C) float32 multi-hot, on the CPU (C = 0: a set without classes)
    key: list[str]  # the clips' keys


def make_batch(audio: torch.Tensor, video: torch.Tensor, metas: list[dict], classes: int, spec: LoaderSpec) -> Batch:
    """The batch of clips `metas`: audio (B, 1, F, mel), video (B, 3, clips * T, S, S) as decoded."""
    return Batch(audio=audio, video=split_clips(video, spec), label=multi_hot(metas, classes),
                 key=[meta["key"] for meta in metas])  # fmt: skip


def model_inputs(batch: Batch, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(audio, video, label) of a batch in the model's dtype, the label on the audio's device."""
    return batch["audio"].to(dtype), batch["video"].to(dtype), batch["label"].to(batch["audio"].device)


def rank_part(clips: int, rank: int, world: int) -> range:
    """The clip numbers of `rank`'s part of `clips` clips over `world` ranks, contiguous, as DALI's reader splits its
    list over shards: [clips * rank // world, clips * (rank + 1) // world)."""
    return range(clips * rank // world, clips * (rank + 1) // world)


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
