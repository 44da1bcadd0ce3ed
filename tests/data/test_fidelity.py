"""App. B's sampling details, in the DALI pipeline and the reference loader alike: the random 4-s window starts
where a whole window fits (looping only a clip shorter than it), and the "R" time shift rolls the waveform before
the fbank (Audio-MAE's order), so a short clip's zero padding stays at its end."""

from __future__ import annotations

import numpy as np
import torch

from mavil.data.fbank import fbank, to_model_input
from mavil.data.pipeline import Loader, LoaderSpec, roll_waves
from mavil.data.reference import window_indices

from .test_pipeline import numbered_frames, write_set


def test_reference_window_starts_where_a_whole_window_fits():
    spec, rng = LoaderSpec(batch_size=1, video_frames=8, train=True), np.random.default_rng(0)
    starts = {int(window_indices(20, spec, rng)[0]) for _ in range(400)}
    assert starts == set(range(13))  # [0, frames - 8]: every start, none that wraps
    short = [window_indices(5, spec, rng) for _ in range(200)]
    assert {int(order[0]) for order in short} == set(range(5))  # shorter than the window: any start, then it loops
    assert all(list(order) == [(order[0] + i) % 5 for i in range(8)] for order in short)


def test_roll_waves_rotates_the_real_samples_and_keeps_the_padding():
    lengths = torch.tensor([10, 7, 1])
    wave = torch.zeros(3, 10)
    for row, length in enumerate(lengths.tolist()):
        wave[row, :length] = torch.arange(1, length + 1)
    rolled = roll_waves(wave, lengths, torch.Generator().manual_seed(0))
    for row, length in enumerate(lengths.tolist()):
        real = rolled[row, :length].tolist()
        shift = real.index(1.0)
        assert real == torch.roll(wave[row, :length], shift).tolist()
        assert rolled[row, length:].eq(0).all()
    shifts = set()
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        shifts.add(roll_waves(wave[:1], lengths[:1], generator)[0].tolist().index(1.0))
    assert shifts == set(range(10))  # uniform over [0, length)


def test_the_time_shift_leaves_a_short_clips_padding_at_its_end(tmp_path):
    root = write_set(tmp_path, [numbered_frames(5), numbered_frames(5)], [2.5, 2.5], clips_per_shard=2)
    spec = dict(batch_size=2, audio_frames=384, video_frames=4, video_size=32)  # 3.85 s of frames for 2.5-s clips
    real = fbank(torch.zeros(1, 40000)).shape[1]  # 248 frames of a 2.5-s clip
    pad = float(to_model_input(torch.zeros(1, 1, 128))[0, 0, 0, 0])  # a zero frame after normalising
    plain = next(iter(Loader(root, LoaderSpec(**spec, time_shift=False), device="cpu")))["audio"]
    rolled = [next(iter(Loader(root, LoaderSpec(**spec), device="cpu", seed=seed)))["audio"] for seed in range(3)]
    for audio in [plain, *rolled]:
        assert audio[:, 0, real:].eq(pad).all()  # the padding: every frame after the clip's own
        assert audio[:, 0, :real].ne(pad).any(dim=-1).all()  # no padding frame in the clip
    assert any((audio - plain).abs().max() > 0.1 for audio in rolled)  # and it did roll
