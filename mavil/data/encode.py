"""Encoding clips for shards with PyAV (FFmpeg's libraries in a wheel: no external binary).

Video: VP9 in WebM, which DALI decodes on the CPU and the GPU alike, at the shards' frame rate
(2 fps, the paper's sampling), a keyframe every few frames so that a 4-s window decodes without a
long seek. Audio: 16-bit FLAC, mono, 16 kHz.
"""

from __future__ import annotations

import io

import numpy as np

from ..deps import require


VIDEO_FPS = 2
SHORT_SIDE = 256
KEYFRAME_INTERVAL = 4  # frames
VP9_CRF = 32
SAMPLE_RATE = 16000
ENCODING = {
    "video": f"vp9 webm, {VIDEO_FPS} fps, short side {SHORT_SIDE}, keyframe every {KEYFRAME_INTERVAL} frames, "
    f"crf {VP9_CRF}",
    "audio": f"flac s16 mono {SAMPLE_RATE} Hz",
    "video_fps": VIDEO_FPS,
    "short_side": SHORT_SIDE,
    "keyframe_interval": KEYFRAME_INTERVAL,
    "sample_rate": SAMPLE_RATE,
}


def encode_video(frames: np.ndarray, fps: int = VIDEO_FPS) -> bytes:
    """(T, H, W, 3) uint8 RGB frames, H and W even -> WebM (VP9) bytes."""
    av = require("av")  # PyAV, where it is used: importing the encoders (and the synthetic set) needs none
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames: expected (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    buffer = io.BytesIO()
    # bitexact: the muxer writes fixed track ids instead of random ones, so the same frames give the same bytes
    with av.open(buffer, "w", format="webm", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "g": str(KEYFRAME_INTERVAL),
            "crf": str(VP9_CRF),
            "b:v": "0",
        }
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def encode_audio(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """(T,) float waveform in [-1, 1] -> FLAC bytes (16-bit, mono); a (2, T) waveform gives stereo (tests of
    shards that need a downmix)."""
    av = require("av")  # PyAV, where it is used: importing the encoders (and the synthetic set) needs none
    if waveform.ndim != 1 and waveform.shape[0] != 2:
        raise ValueError(f"waveform: expected a mono (T,) or stereo (2, T) array, got shape {waveform.shape}")
    layout = "mono" if waveform.ndim == 1 else "stereo"
    pcm = (np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16).T.reshape(1, -1)  # (1, T * channels) interleaved
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=sample_rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=layout)
        frame.sample_rate = sample_rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()
