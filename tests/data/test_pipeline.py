"""The DALI pipeline against the reference loader, frame sampling, sharding and the batch contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mavil.data.encode import encode_audio, encode_video
from mavil.data.pipeline import IMAGENET_MEAN, IMAGENET_STD, Loader, LoaderSpec
from mavil.data.reference import decode_video, reference_loader
from mavil.data.shards import ShardWriter, write_manifest

SIZE = (96, 128)  # stored frames: short side 96, so an evaluation spec of size 96 neither resizes nor scales


def moving_square(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.full((frames, *SIZE, 3), 40, np.uint8)
    video[..., 2] = rng.integers(0, 255)
    for i in range(frames):
        y, x = rng.integers(0, SIZE[0] - 24), rng.integers(0, SIZE[1] - 24)
        video[i, y : y + 24, x : x + 24] = (230, 200, 30)
    return video


def numbered_frames(frames: int) -> np.ndarray:
    """Frame i is uniformly grey at 12 * (i + 1) (up to 20 frames): its index survives crops, flips and the codec."""
    return np.repeat((12 * (np.arange(frames) + 1)).astype(np.uint8), np.prod(SIZE) * 3).reshape(frames, *SIZE, 3)


def noise_and_tone(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * (300 + 100 * seed) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def write_set(root, videos: list[np.ndarray], seconds: list[float], clips_per_shard: int = 3):
    writer = ShardWriter(root, clips_per_shard)
    for i, (video, secs) in enumerate(zip(videos, seconds)):
        writer.add(
            f"clip{i:03d}",
            encode_video(video),
            "webm",
            encode_audio(noise_and_tone(secs, i)),
            {"labels": [i % 3], "duration": secs, "frames": len(video), "source": "test"},
        )
    write_manifest(root, writer.close(), ["a", "b", "c"], {}, [])
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return write_set(root, [moving_square(6 + i % 3, i) for i in range(7)], [3.0 + 0.5 * (i % 3) for i in range(7)])


def eval_spec(**kw) -> LoaderSpec:
    return LoaderSpec(
        batch_size=3, audio_frames=256, mel_bins=128, video_frames=4, video_size=SIZE[0], train=False, **kw
    )


def all_batches(loader) -> list[dict]:
    return list(loader)


def test_batch_contract(clips):
    spec = LoaderSpec(batch_size=3, audio_frames=256, video_frames=4, video_size=64)
    batches = all_batches(Loader(clips, spec, device="cpu"))
    assert [len(b["key"]) for b in batches] == [3, 3, 1]
    batch = batches[0]
    assert batch["audio"].shape == (3, 1, 256, 128) and batch["audio"].dtype == torch.float32
    assert batch["video"].shape == (3, 3, 4, 64, 64) and batch["video"].dtype == torch.float32
    assert batch["label"].shape == (3, 3) and batch["label"].sum(1).eq(1).all()
    for b in batches:
        for key, label in zip(b["key"], b["label"]):
            assert label.argmax().item() == int(key[4:]) % 3


def test_audio_equals_the_reference_loader(clips):
    spec = eval_spec()
    ours = {k: a for b in all_batches(Loader(clips, spec, device="cpu")) for k, a in zip(b["key"], b["audio"])}
    theirs = {k: a for b in reference_loader(clips, spec) for k, a in zip(b["key"], b["audio"])}
    assert ours.keys() == theirs.keys() and len(ours) == 7
    for key in ours:
        log_mel_diff = (ours[key] - theirs[key]).abs() * 2 * spec.audio_std  # back to log-mel units
        assert log_mel_diff.max() <= 2e-3, key
        assert log_mel_diff.mean() <= 1e-4, key


def test_video_equals_pyav_frames_of_the_same_window(clips):
    spec = eval_spec()
    ours = {k: v for b in all_batches(Loader(clips, spec, device="cpu")) for k, v in zip(b["key"], b["video"])}
    theirs = {k: v for b in reference_loader(clips, spec) for k, v in zip(b["key"], b["video"])}
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255
    for key in ours:
        pixel_diff = ((ours[key] - theirs[key]) * std).abs()  # in 0..255 levels
        assert pixel_diff.mean() < 1.0 and pixel_diff.max() <= 6, (key, pixel_diff.mean(), pixel_diff.max())


def frame_indices(video: torch.Tensor) -> list[int]:
    """(3, T, S, S) normalised -> the index each numbered frame encodes."""
    grey = video[0] * IMAGENET_STD[0] * 255 + IMAGENET_MEAN[0] * 255  # (T, S, S) red channel levels
    return [round(level / 12) - 1 for level in grey.mean(dim=(1, 2)).tolist()]


def test_frame_sampling_is_consecutive_from_a_random_start_and_loops_only_when_short(tmp_path):
    root = write_set(tmp_path, [numbered_frames(20), numbered_frames(5)], [10.0, 2.5], clips_per_shard=2)
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=8, video_size=48, train=True, shuffle_buffer=2)
    loader = Loader(root, spec, device="cpu", seed=3)
    starts = {"clip000": set(), "clip001": set()}
    for _ in range(12):  # epochs
        for batch in loader:
            for key, video in zip(batch["key"], batch["video"]):
                order = frame_indices(video)
                count = 20 if key == "clip000" else 5
                assert order == [(order[0] + i) % count for i in range(8)], (key, order)  # 2 fps: consecutive frames
                starts[key].add(order[0])
    assert len(starts["clip000"]) > 3 and len(starts["clip001"]) > 2  # the start is random
    assert max(starts["clip000"]) <= 12  # a whole window fits: the 10-s clip never wraps its end onto its start
    eval_video = next(
        iter(Loader(root, LoaderSpec(batch_size=2, video_frames=8, video_size=48, train=False), device="cpu"))
    )
    assert frame_indices(eval_video["video"][0]) == list(range(6, 14))  # the centre window of 20 frames


@pytest.mark.parametrize("loader", [Loader, reference_loader], ids=["dali", "reference"])
def test_multi_clip_evaluation_takes_uniformly_spaced_windows(tmp_path, loader):
    root = write_set(tmp_path, [numbered_frames(20), numbered_frames(5)], [10.0, 2.5], clips_per_shard=2)
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=8, video_size=48, train=False, eval_clips=3)
    batch = next(iter(loader(root, spec)))
    assert batch["video"].shape == (2, 3, 3, 8, 48, 48)  # (B, clips, 3, T, S, S)
    windows = {key: [frame_indices(clip) for clip in video] for key, video in zip(batch["key"], batch["video"])}
    assert windows["clip000"] == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    assert windows["clip001"] == [[i % 5 for i in range(8)]] * 3  # shorter than a window: each loops from 0


def keys_per_epoch(root, rank: int, world: int, seed: int, epochs: int) -> list[list[str]]:
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=2, video_size=32, shuffle_buffer=16)
    loader = Loader(root, spec, rank=rank, world_size=world, seed=seed, device="cpu")
    return [[key for batch in loader for key in batch["key"]] for _ in range(epochs)]


def test_two_ranks_see_every_clip_once_per_epoch(clips):
    rank0, rank1 = keys_per_epoch(clips, 0, 2, 0, 3), keys_per_epoch(clips, 1, 2, 0, 3)
    for epoch in range(3):
        seen = rank0[epoch] + rank1[epoch]
        assert sorted(seen) == [f"clip{i:03d}" for i in range(7)], (epoch, rank0[epoch], rank1[epoch])
    assert keys_per_epoch(clips, 0, 1, 1, 1) != keys_per_epoch(clips, 0, 1, 2, 1)  # the seed changes the order


@pytest.mark.parametrize("batch, world", [(2, 1), (3, 1), (2, 2), (3, 2), (4, 3), (7, 1), (8, 1)])
def test_full_batches_counts_the_batches_of_a_whole_micro_batch(clips, batch, world):
    """7 clips: what the trainer steps on (whole batches only) is what each rank's loader really yields whole; a rank
    with a smaller part than another's yields no empty batch at its end (DALI's would crash the fbank)."""
    spec = LoaderSpec(batch_size=batch, audio_frames=64, video_frames=2, video_size=32, train=False)
    for rank in range(world):
        loader = Loader(clips, spec, rank=rank, world_size=world, device="cpu")
        sizes = [len(b["key"]) for b in loader]
        assert len(loader) - 1 <= len(sizes) <= len(loader) and 0 not in sizes, (rank, sizes)
        assert sizes[: loader.full_batches] == [batch] * loader.full_batches, (rank, sizes)
        assert loader.full_batches == sum(size == batch for size in sizes), (rank, sizes)


def test_reference_loader_splits_ranks_like_dalis_first_epoch(clips):
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=2, video_size=32, train=False)
    ref = [[k for b in reference_loader(clips, spec, rank=r, world_size=2) for k in b["key"]] for r in (0, 1)]
    dali = [keys_per_epoch(clips, r, 2, 0, 1)[0] for r in (0, 1)]
    assert [sorted(keys) for keys in ref] == [sorted(keys) for keys in dali]


def test_decoded_clip_keeps_its_frames(clips):
    video = encode_video(moving_square(6, 0))
    assert decode_video(video).shape == (6, *SIZE, 3)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json: not a shard directory"):
        Loader(tmp_path, LoaderSpec(batch_size=1), device="cpu")


def test_given_clips_are_read_in_their_order(clips):
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=2, video_size=32, train=True)
    order = [5, 5, 0, 6, 2]  # with repeats, as weighted draws have; the partial last batch is left out
    loader = Loader(clips, spec, device="cpu", clips=order)
    assert len(loader) == 2
    for _ in range(2):  # epochs repeat the same list
        assert [key for batch in loader for key in batch["key"]] == ["clip005", "clip005", "clip000", "clip006"]


def test_magnitude_augmentation_shifts_each_clips_log_mel_by_its_own_gain(clips):
    """A waveform gain of u dB adds u * ln(10) / 10 to every log-mel value: one constant per clip, |u| <= gain_db."""
    spec = dict(
        batch_size=3, audio_frames=256, video_frames=4, video_size=48, time_shift=False
    )  # clips >= 3 s: no padding
    plain, gained = (
        {
            k: a
            for b in Loader(clips, LoaderSpec(**spec, gain_db=gain), device="cpu", seed=5)
            for k, a in zip(b["key"], b["audio"])
        }
        for gain in (0.0, 12.0)
    )
    offsets = []
    for key, audio in plain.items():
        shift = gained[key] - audio  # normalised units: log-mel / (2 * std)
        typical = shift.median()  # except where the log floor cuts in (empty low mel filters, the quietest bins)
        assert (shift - typical).abs().lt(1e-3).float().mean() > 0.95, key
        offsets.append(float(typical) * 2 * LoaderSpec(1).audio_std * 10 / math.log(10))  # back to dB
    assert all(abs(u) <= 12.0 + 1e-3 for u in offsets) and len({round(u, 2) for u in offsets}) == len(offsets)
