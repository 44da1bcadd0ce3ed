"""Shard contents decoded with PyAV for the data tests, checking the stored formats on the way."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from mavil.data.encode import SAMPLE_RATE
from mavil.data.reference import read_clips
from mavil.data.shards import read_manifest


def decode_video(data: bytes) -> np.ndarray:
    """VP9 bytes -> (T, H, W, 3) uint8, PyAV's own RGB conversion."""
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.name == "vp9"
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def decode_audio(data: bytes) -> np.ndarray:
    """FLAC bytes, which must be 16 kHz mono -> (samples,) float in [-1, 1]."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert stream.sample_rate == SAMPLE_RATE and stream.channels == 1
        return np.concatenate([frame.to_ndarray()[0] for frame in container.decode(stream)]) / 32768.0


def decoded_clips(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """key -> ((T, H, W, 3) uint8 frames, (samples,) waveform, meta) for every clip of a shard directory."""
    clips = {}
    for shard in read_manifest(root)["shards"]:
        for video, audio, meta in read_clips(Path(root), shard):
            clips[meta["key"]] = (decode_video(video), decode_audio(audio), meta)
    return clips
