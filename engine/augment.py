"""Fine-tuning augmentations on a batch, on its device (App. B, Table 10): SpecAugment, noise, mixup.

The loader has already cropped, flipped and time-shifted ("R"); these act on the normalised batch.
"""

from __future__ import annotations

import torch


def spec_augment(audio: torch.Tensor, max_time: int, max_freq: int, fill: float) -> torch.Tensor:
    """(B, 1, T, F): per sample one time mask of up to `max_time` frames and one frequency mask of up to
    `max_freq` bins, set to `fill` (the normalised value of a zero log-mel, as AST masks before normalising)."""
    batch, _, frames, bins = audio.shape
    time_hit = _random_span_mask(batch, frames, max_time, audio.device)  # (B, T)
    freq_hit = _random_span_mask(batch, bins, max_freq, audio.device)  # (B, F)
    hit = time_hit[:, None, :, None] | freq_hit[:, None, None, :]
    return audio.masked_fill(hit, fill)


def _random_span_mask(batch: int, length: int, max_width: int, device) -> torch.Tensor:
    """(B, length) bool: one span per row, width uniform in [0, max_width], start uniform where it fits."""
    width = torch.randint(0, min(max_width, length) + 1, (batch, 1), device=device)
    start = (torch.rand(batch, 1, device=device) * (length - width + 1)).long()
    position = torch.arange(length, device=device)[None, :]
    return (position >= start) & (position < start + width)


def add_noise(audio: torch.Tensor, snr_db: float = 20.0) -> torch.Tensor:
    """ "N": Gaussian noise at `snr_db` below each spectrogram's power (its mean square)."""
    power = audio.pow(2).mean(dim=(1, 2, 3), keepdim=True)
    return audio + torch.randn_like(audio) * (power / 10 ** (snr_db / 10)).sqrt()


def mixup(batch: dict, alpha: float) -> dict:
    """Mixes each sample with a random other of the batch: x = lam x + (1 - lam) x[perm], labels alike,
    one lam ~ Beta(alpha, alpha) per batch (MAE/AST's in-batch mixup)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(len(batch["key"]), device=batch["label"].device)
    mixed = dict(batch)
    for name in ("audio", "video", "label"):
        mixed[name] = lam * batch[name] + (1 - lam) * batch[name][perm.to(batch[name].device)]
    return mixed
