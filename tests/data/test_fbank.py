"""mavil.data.fbank against torchaudio's Kaldi fbank, the reference the Audio-MAE convention is defined by."""

import math

import pytest
import torch
from torchaudio.compliance import kaldi

from mavil.data import fbank as fb

SR = 16000
NOISE_TOL = dict(max_abs=2e-3, mean_abs=1e-4, rel_l2=1e-4)


def kaldi_reference(waveform: torch.Tensor) -> torch.Tensor:
    """(T,) -> (F, 128): the Audio-MAE call, after removing the clip mean."""
    return kaldi.fbank(
        (waveform - waveform.mean())[None],
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
        frame_length=25,
    )


def assert_log_mel_close(actual, expected, max_abs, mean_abs, rel_l2):
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    diff = (actual - expected).abs()
    assert diff.max() <= max_abs, f"max abs diff {diff.max():.3g}"
    assert diff.mean() <= mean_abs, f"mean abs diff {diff.mean():.3g}"
    assert (actual - expected).norm() / expected.norm() <= rel_l2


def times(seconds):
    return torch.arange(int(seconds * SR), dtype=torch.float64) / SR


def white_noise(seconds, seed):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(int(seconds * SR), generator=g) + 0.02  # a DC offset for the mean removal to take


def tone(hz, seconds=2.0):
    return (0.5 * torch.sin(2 * math.pi * hz * times(seconds))).float()


def chirp(start_hz, end_hz, seconds=2.0):
    t = times(seconds)
    return (0.5 * torch.sin(2 * math.pi * (start_hz * t + (end_hz - start_hz) / (2 * seconds) * t**2))).float()


def speech_like(seconds=2.0, seed=0):
    """Deterministic speech stand-in: harmonics of a gliding 90-170 Hz voice shaped by three moving formants,
    syllable envelope with a pause, fricative bursts, a faint noise floor, quantised to 16 bits as a FLAC decodes."""
    g = torch.Generator().manual_seed(seed)
    t = times(seconds)
    f0 = 130 + 30 * torch.sin(2 * math.pi * 0.7 * t) + 10 * torch.sin(2 * math.pi * 2.3 * t)  # (T,) Hz
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    formants = [
        (500 + 200 * torch.sin(2 * math.pi * 1.1 * t), 80),
        (1500 + 500 * torch.sin(2 * math.pi * 0.8 * t + 1), 120),
        (2600 + 200 * torch.sin(2 * math.pi * 0.5 * t), 160),
    ]
    voiced = torch.zeros_like(t)
    for k in range(1, 61):
        harmonic = k * f0
        gain = sum(1 / (1 + ((harmonic - centre) / width) ** 2) for centre, width in formants) / k**0.5
        voiced += gain * (harmonic < 7800) * torch.sin(k * phase)
    syllables = torch.sin(2 * math.pi * 2.0 * t).abs() ** 1.5 * ((t < 0.8) | (t > 1.1))  # 4 syllables/s, a pause
    noise = torch.randn(t.shape, generator=g, dtype=torch.float64)
    fricative = torch.diff(noise, prepend=noise[:1])  # white noise, high-passed
    bursts = (torch.sin(2 * math.pi * 1.3 * t) > 0.8).double()
    signal = voiced * syllables + 0.3 * fricative * bursts * (1 - syllables) + 1e-3 * noise.roll(1234)
    signal = 0.5 * signal / signal.abs().max()
    return (torch.round(signal * 32767) / 32767).float()


@pytest.mark.parametrize("name", ["noise", "speech"])
def test_matches_torchaudio_on_noise_and_speech(name):
    waveform = white_noise(2.0, seed=1) if name == "noise" else speech_like(2.0, seed=2)
    assert_log_mel_close(fb.fbank(waveform[None])[0], kaldi_reference(waveform), **NOISE_TOL)


@pytest.mark.parametrize(
    "waveform",
    [tone(440), tone(3000), chirp(50, 7900), chirp(6000, 200)],
    ids=["440Hz", "3kHz", "chirp-up", "chirp-down"],
)
def test_matches_torchaudio_on_tones_and_chirps(waveform):
    expected = kaldi_reference(waveform)
    actual = fb.fbank(waveform[None])[0]
    assert actual.shape == expected.shape
    audible = expected > -10  # below it both are float32 rounding around spectral nulls
    assert audible.float().mean() > 0.1
    assert (actual - expected).abs()[audible].max() <= 1e-3


def test_mel_banks_are_torchaudios():
    expected, _ = kaldi.get_mel_banks(128, 512, float(SR), 20.0, 0.0, 100.0, -500.0, 1.0)  # (128, 256)
    mel_banks = fb._kaldi_mel_banks(128, 512, SR)  # (128, 257), the Nyquist column zero
    torch.testing.assert_close(mel_banks[:, :256], expected, rtol=0, atol=1e-6)
    assert mel_banks[:, 256].eq(0).all()
    assert fb._constants(400, SR, 128, torch.device("cpu"), torch.float32) is fb._constants(
        400, SR, 128, torch.device("cpu"), torch.float32
    )


def test_batch_of_different_lengths():
    lengths = torch.tensor([24000, 17123, 8000, 400, 399])
    g = torch.Generator().manual_seed(3)
    clips = [0.1 * torch.randn(int(n), generator=g) + 0.05 * i for i, n in enumerate(lengths)]
    waveforms = torch.zeros(len(clips), int(lengths.max()))
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = clip
    waveforms[2, 8000:] = 1000.0  # never used, not even in the clip mean (where it would cost float32 precision)
    log_mel = fb.fbank(waveforms, lengths)  # (5, 148, 128)
    assert log_mel.shape == (5, 1 + (24000 - 400) // 160, 128)
    for row, clip in enumerate(clips):
        frames = max(0, 1 + (len(clip) - 400) // 160)
        if frames:
            assert_log_mel_close(log_mel[row, :frames], kaldi_reference(clip), **NOISE_TOL)
        assert log_mel[row, frames:].eq(0.0).all()
    assert fb.fbank(waveforms[:, :399]).shape == (5, 0, 128)  # shorter than one frame


def test_ten_seconds_pad_to_1024_frames():
    g = torch.Generator().manual_seed(4)
    waveforms = 0.1 * torch.randn(2, 10 * SR, generator=g)
    log_mel = fb.fbank(waveforms)
    assert log_mel.shape == (2, 998, 128)
    model_input = fb.to_model_input(log_mel)
    assert model_input.shape == (2, 1, 1024, 128)
    torch.testing.assert_close(model_input[:, 0, :998], (log_mel - fb.AUDIOSET_MEAN) / (2 * fb.AUDIOSET_STD))
    padding = (0 - fb.AUDIOSET_MEAN) / (2 * fb.AUDIOSET_STD)
    torch.testing.assert_close(model_input[:, 0, 998:], torch.full((2, 26, 128), padding))


def test_longer_input_is_cut_to_1024_frames():
    g = torch.Generator().manual_seed(5)
    log_mel = torch.randn(3, 1100, 128, generator=g) * 4 - 4
    model_input = fb.to_model_input(log_mel, mean=-1.0, std=2.0)
    assert model_input.shape == (3, 1, 1024, 128)
    torch.testing.assert_close(model_input[:, 0], (log_mel[:, :1024] + 1.0) / 4.0)


def test_samples_for_frames():
    assert fb.samples_for_frames(1024) == 164080
    assert fb.samples_for_frames(1) == 400
    waveforms = torch.randn(1, fb.samples_for_frames(37), generator=torch.Generator().manual_seed(6))
    assert fb.fbank(waveforms).shape[1] == 37
    assert fb.fbank(waveforms[:, :-1]).shape[1] == 36


@pytest.mark.gpu
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(7)
    waveforms = 0.1 * torch.randn(4, 5 * SR, generator=g)
    waveforms[3] = speech_like(5.0, seed=8)
    lengths = torch.tensor([5 * SR, 4 * SR, 12345, 5 * SR])
    waveforms[1:3] *= torch.arange(5 * SR) < lengths[1:3, None]
    on_cpu = fb.fbank(waveforms, lengths)
    on_cuda = fb.fbank(waveforms.cuda(), lengths.cuda())
    assert on_cuda.is_cuda
    assert_log_mel_close(on_cuda.cpu(), on_cpu, **NOISE_TOL)
    assert on_cuda.cpu().eq(0).equal(on_cpu.eq(0))
