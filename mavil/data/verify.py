"""What a clip's bytes hold, checked by decoding them with PyAV: shared by `prepare` and `synthetic`, which verify
every clip they write and record the result beside the shard, and by `mavil.data.health`, which reads that record
instead of decoding again where the bytes are still those verified, and decodes the rest.

The record (the shard's sidecar `<shard>.verified.json`, named by the manifest's shard entry as "verified", written
by `shards.ShardWriter`): {"version": 1, "clips": {key: {"members": {ext: [size, sha256 prefix]}, "facts": [sample
rate, channels, samples, frames], "labels": [...], "duration": seconds}}}.
A clip is trusted only when every member its index line lists is there with the recorded size and digest; any other
clip (no record, other bytes, other members) is decoded in full.
"""

from __future__ import annotations

import io

from mavil.data.shards import META_BYTES, decode_meta, member_record  # noqa: F401 (member_record: one place)
from mavil.deps import require


class Bad(Exception):
    """A clip that cannot be used: args = (kind, detail)."""


def check_meta(raw: bytes, classes: int) -> list[int]:
    """The clip's labels; Bad unless the metadata is what the loaders batch: META_BYTES of JSON with the clip's key
    and labels in [0, classes)."""
    if len(raw) != META_BYTES:
        raise Bad("meta_undecodable", f"{len(raw)} bytes, not the shard format's {META_BYTES}")
    try:
        meta = decode_meta(raw)
    except (UnicodeDecodeError, ValueError) as error:
        raise Bad("meta_undecodable", str(error)) from None
    labels = meta.get("labels", []) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), str):
        raise Bad("meta_undecodable", "not a JSON object with a key")
    if not isinstance(labels, list) or not all(isinstance(c, int) and 0 <= c < classes for c in labels):
        raise Bad("meta_undecodable", f"labels {labels} are not class indices below {classes}")
    return labels


def count_frames(data: bytes) -> int:
    """The video's decodable frames; Bad when there are none or it does not decode."""
    if not data:
        raise Bad("video_empty", "0 bytes")
    av = require("av")  # here, not at import: the health check reads most clips' records without decoding
    try:
        with av.open(io.BytesIO(data)) as container:
            frames = sum(1 for _ in container.decode(video=0))
    except Exception as error:  # noqa: BLE001 -- whatever FFmpeg raises, the clip is unusable
        raise Bad("video_undecodable", f"{type(error).__name__}: {error}") from None
    if frames == 0:
        raise Bad("video_empty", "no frame decodes")
    return frames


def audio_facts(data: bytes) -> tuple[int, int, int]:
    """(sample rate, channels, samples per channel) of the audio; Bad when it does not decode in full."""
    if not data:
        raise Bad("audio_empty", "0 bytes")
    av = require("av")
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(stream))
            rate, channels = stream.sample_rate, stream.channels
            declared = stream.duration * stream.time_base * rate if stream.duration and stream.time_base else 0
    except Exception as error:  # noqa: BLE001
        raise Bad("audio_undecodable", f"{type(error).__name__}: {error}") from None
    if samples == 0:
        raise Bad("audio_empty", "no sample decodes")
    if samples < declared:
        raise Bad("audio_undecodable", f"decoded {samples} of the {int(declared)} samples its header declares")
    return rate, channels, samples


def clip_facts(video: bytes, audio: bytes) -> list[int]:
    """[sample rate, channels, samples, frames] of a clip's encoded members, decoded in full; Bad if they fail."""
    return [*audio_facts(audio), count_frames(video)]
