"""Log-mel filter banks for the audio encoder: Kaldi's, batched, in PyTorch on any device.

`fbank(waveforms, lengths)` equals `torchaudio.compliance.kaldi.fbank` with the Audio-MAE settings (htk_compat, Hanning
window, 25 ms frames every 10 ms, 128 mel bins, no energy, no dither, clip mean removed) to float32 rounding, for a
zero-padded batch at once: `lengths` gives each row's real samples, frames past a row's length are 0.0.
`to_model_input` pads or cuts every row to 1024 frames and normalises.
Details (each Kaldi step, why Kaldi-exact, CPU chunking): docs/data.md#fbank.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..constants import AUDIOSET_MEAN, AUDIOSET_STD

PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz, Kaldi's default lower edge of the first mel triangle
CPU_CHUNK_FRAMES = 1024  # on the CPU, rows go through in chunks of about this many frames (1.6 MB), to stay in cache


def frame_sizes(
    sample_rate: int = 16000, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> tuple[int, int]:
    """(frame length, frame shift) in samples, rounded down as torchaudio does: (400, 160) at 16 kHz."""
    return int(sample_rate * frame_length_ms * 0.001), int(sample_rate * frame_shift_ms * 0.001)


def samples_for_frames(
    frames: int, sample_rate: int = 16000, *, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> int:
    """The waveform length that gives exactly `frames` frames: 400 + (frames - 1) * 160 at 16 kHz."""
    frame_length, frame_shift = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    return frame_length + (frames - 1) * frame_shift


def fbank(
    waveforms: Tensor,
    lengths: Tensor | None = None,
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
) -> Tensor:
    """(B, T) waveforms, zero-padded after `lengths` (B,) real samples (None: all T) -> (B, F, num_mel_bins) float32.

    F = 1 + (T - frame_length) // frame_shift; frames of a row that reach past its length are 0.0.
    """
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms: expected (B, T), got shape {tuple(waveforms.shape)}")
    frame_length, frame_shift = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    batch, samples = waveforms.shape
    if samples < frame_length:
        return waveforms.new_zeros(batch, 0, num_mel_bins, dtype=torch.float32)
    waveforms = waveforms.float()
    full = lengths is None  # then the clip mean is torch.mean's, bit for bit what torchaudio users subtract
    lengths = torch.full((batch,), samples, device=waveforms.device) if full else lengths.to(waveforms.device)
    window, mel_banks = _constants(frame_length, sample_rate, num_mel_bins, waveforms.device, waveforms.dtype)
    frames_per_row = 1 + (samples - frame_length) // frame_shift
    rows = batch if waveforms.device.type != "cpu" else max(1, CPU_CHUNK_FRAMES // frames_per_row)
    chunks = [
        _log_mel(chunk, chunk_lengths, full, window, mel_banks, frame_shift)
        for chunk, chunk_lengths in zip(waveforms.split(rows), lengths.split(rows))
    ]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def to_model_input(
    fbank_frames: Tensor, target_frames: int = 1024, mean: float = AUDIOSET_MEAN, std: float = AUDIOSET_STD
) -> Tensor:
    """(B, F, mel) log-mel -> (B, 1, target_frames, mel): cut or zero-pad at the end, then (x - mean) / (2 std)."""
    fitted = fbank_frames[:, :target_frames]  # (B, min(F, target), mel)
    missing = target_frames - fitted.shape[1]
    if missing > 0:
        fitted = torch.nn.functional.pad(fitted, (0, 0, 0, missing))  # zeros at the end, as Audio-MAE and AST
    return ((fitted - mean) / (2 * std)).unsqueeze(1)


def _log_mel(
    waveforms: Tensor, lengths: Tensor, full: bool, window: Tensor, mel_banks: Tensor, frame_shift: int
) -> Tensor:
    """(B, T) float32 waveforms with (B,) real lengths -> (B, F, mel) Kaldi log-mel, 0.0 past each row's length."""
    frame_length = window.shape[0]
    centred = waveforms - (waveforms.mean(1, keepdim=True) if full else _clip_mean(waveforms, lengths))  # (B, T)
    frames = centred.unfold(1, frame_length, frame_shift)  # (B, F, L), a view
    mel_energies = _power_spectrum(frames, window) @ mel_banks  # (B, F, n_fft/2 + 1) @ (n_fft/2 + 1, mel)
    log_mel = mel_energies.clamp_min(torch.finfo(torch.float32).eps).log()  # (B, F, mel)
    frame_ends = torch.arange(frames.shape[1], device=waveforms.device) * frame_shift + frame_length  # (F,)
    real = frame_ends[None, :] <= lengths[:, None]  # (B, F): the frame lies within the row's real samples
    return log_mel.masked_fill_(~real[..., None], 0.0)


def _clip_mean(waveforms: Tensor, lengths: Tensor) -> Tensor:
    """(B, T) -> (B, 1) each row's mean over its real samples (whatever the padding holds)."""
    positions = torch.arange(waveforms.shape[1], device=waveforms.device)  # (T,)
    real = positions[None, :] < lengths[:, None]  # (B, T)
    return torch.where(real, waveforms, 0.0).sum(1, keepdim=True) / lengths.clamp_min(1)[:, None]


def _power_spectrum(frames: Tensor, window: Tensor) -> Tensor:
    """(B, F, L) raw frames -> (B, F, n_fft/2 + 1) Kaldi power spectrum (DC removal, pre-emphasis, window, FFT)."""
    frames = frames - frames.mean(-1, keepdim=True)  # per-frame DC offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], -1)  # (B, F, L): x[max(0, j-1)]
    windowed = (frames - PREEMPHASIS * previous) * window  # (B, F, L)
    n_fft = 1 << (window.shape[0] - 1).bit_length()  # next power of two: 512 for 400
    return torch.fft.rfft(windowed, n=n_fft).abs().pow(2)


@functools.lru_cache(maxsize=16)
def _constants(
    frame_length: int, sample_rate: int, num_mel_bins: int, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The window (L,) and the mel banks (n_fft/2 + 1, num_mel_bins), built on the CPU once, cached per device and
    dtype."""
    window = torch.hann_window(frame_length, periodic=False, dtype=torch.float32)  # (L,)
    n_fft = 1 << (frame_length - 1).bit_length()
    mel_banks = _kaldi_mel_banks(num_mel_bins, n_fft, sample_rate)  # (num_mel_bins, n_fft/2 + 1)
    return window.to(device=device, dtype=dtype), mel_banks.T.contiguous().to(device=device, dtype=dtype)


def _kaldi_mel_banks(num_mel_bins: int, n_fft: int, sample_rate: int) -> Tensor:
    """Kaldi's triangles, rising and falling linearly in mel, (num_mel_bins, n_fft/2 + 1) float32.

    Built in float32 with the very expressions of torchaudio's get_mel_banks: in float64 the weights move
    by up to 1.4e-5, which shifts low-energy log-mel cells by up to 2e-4 from torchaudio's.
    """

    def mel(hz):
        return 1127.0 * (1.0 + hz / 700.0).log() if isinstance(hz, Tensor) else 1127.0 * math.log(1.0 + hz / 700.0)

    low, high = mel(LOW_FREQ), mel(0.5 * sample_rate)
    delta = (high - low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins, dtype=torch.float32)[:, None]  # (M, 1)
    left, centre, right = low + index * delta, low + (index + 1.0) * delta, low + (index + 2.0) * delta  # (M, 1) each
    bin_mel = mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None]  # (1, n_fft/2)
    rising, falling = (bin_mel - left) / (centre - left), (right - bin_mel) / (right - centre)  # (M, n_fft/2)
    triangles = torch.minimum(rising, falling).clamp_min(0.0)
    return torch.nn.functional.pad(triangles, (0, 1))  # the Nyquist bin gets no weight, as in Kaldi
