"""A shard set with real faulty clips, one per way data breaks in the wild, for the reliability tests.

Good clips are the synthetic set's (4 s, 8 frames at 2 fps, 16 kHz mono); the faulty ones are made of the
same clips, broken as they break in practice:

    bad-corrupt-video   the WebM bytes overwritten with noise after its first 64 bytes  -> video_undecodable
    bad-corrupt-flac    the FLAC bytes noise after its first 200 bytes (PyAV: 0 samples) -> audio_empty
    bad-missing-flac    no .flac member at all                                          -> missing_audio
    bad-empty-video     a .webm member of 0 bytes                                        -> video_empty
    bad-truncated       the last clip of the last shard, the tar cut inside its video    -> truncated
    fix-8khz-stereo     8 kHz stereo FLAC (left: the clip's audio, right: half) -> audio_resampled, audio_downmixed
    fix-2s              a 2-s clip (4 frames)               -> short_audio under the tiny windows (384 fbank frames,
                                                               3.85 s; 4 frames), and short_video under 8 frames

Shards of 8 clips: shard 0 and 1 mix good and bad clips, shard 2 ends with the truncated one.

`build_verified_fault_set` writes the same layout as `prepare` writes (every clip good, decoded back and recorded in
the shards' sidecars) and breaks it afterwards, on disk: the health check must not trust a record whose bytes changed.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from mavil.data.encode import encode_audio
from mavil.data.shards import (
    ShardWriter,
    decode_meta,
    encode_meta,
    index_members,
    index_text,
    read_index,
    write_manifest,
)
from mavil.data.synthetic import make_clip
from mavil.data.verify import clip_facts

CLASSES, SEED, DURATION, PER_SHARD = 8, 0, 4, 8
LAYOUT = (
    "good",
    "bad-corrupt-video",
    "good",
    "good",
    "bad-missing-flac",
    "good",
    "fix-8khz-stereo",
    "good",
    "good",
    "bad-empty-video",
    "good",
    "fix-2s",
    "good",
    "bad-corrupt-flac",
    "good",
    "good",
    "good",
    "good",
    "good",
    "good",
    "bad-truncated",
)
UNUSABLE = {
    "bad-corrupt-video": "video_undecodable",
    "bad-corrupt-flac": "audio_empty",
    "bad-missing-flac": "missing_audio",
    "bad-empty-video": "video_empty",
    "bad-truncated": "truncated",
}
REPAIRED = {"fix-8khz-stereo": ("audio_resampled", "audio_downmixed"), "fix-2s": ("short_audio",)}


@dataclass(frozen=True)
class FaultSet:
    root: Path
    good: list[str]  # keys of the usable clips (repaired ones included), in shard order
    bad: list[str]  # keys of the unusable ones


def noise(data: bytes, keep: int, seed: int) -> bytes:
    """`data` with every byte after the first `keep` replaced by random ones (same length)."""
    tail = np.random.default_rng(seed).integers(0, 256, len(data) - keep, dtype=np.uint8).tobytes()
    return data[:keep] + tail


def flac_samples(data: bytes) -> np.ndarray:
    """16 kHz mono FLAC -> (T,) float in [-1, 1]."""
    with av.open(io.BytesIO(data)) as container:
        return np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)]) / 32768.0


def eight_khz_stereo(flac: bytes) -> bytes:
    """The clip's audio decimated to 8 kHz (its partials above 4 kHz dropped on the way is fine for a test),
    as stereo: left the audio, right half of it, so the downmix is 0.75 of the audio."""
    mono = flac_samples(flac)
    spectrum = np.fft.rfft(mono)
    spectrum[len(spectrum) // 2 :] = 0  # nothing at or above 4 kHz: decimating by 2 aliases nothing
    low = np.fft.irfft(spectrum, len(mono))[::2]
    return encode_audio(np.stack([low, 0.5 * low]), sample_rate=8000)


def members(name: str, index: int) -> list[tuple[str, bytes]]:
    """The tar members of clip `index` of the layout, broken as its name says."""
    duration = 2 if name == "fix-2s" else DURATION
    _, video, audio, meta = make_clip(index, CLASSES, SEED, duration)
    key = name if name != "good" else f"good{index:02d}"
    if name == "bad-corrupt-video":
        video = noise(video, 64, index)
    elif name == "bad-corrupt-flac":
        audio = noise(audio, 200, index)
    elif name == "bad-empty-video":
        video = b""
    elif name == "fix-8khz-stereo":
        audio = eight_khz_stereo(audio)
    parts = [("webm", video), ("flac", audio), ("json", encode_meta({**meta, "key": key}))]
    return [(ext, data) for ext, data in parts if not (name == "bad-missing-flac" and ext == "flac")]


def build_fault_set(root: Path) -> FaultSet:
    """Writes the layout's 21 clips into `root` (3 shards and a manifest), then cuts the last shard inside the video
    member of its last clip, as a copy that died mid-file leaves it."""
    writer = ShardWriter(root, PER_SHARD)
    keys = []
    for index, name in enumerate(LAYOUT):
        parts = members(name, index)
        keys.append(name if name != "good" else f"good{index:02d}")
        writer.add_members(keys[-1], parts)
    shards = writer.close()
    write_manifest(root, shards, [f"class-{k:02d}" for k in range(CLASSES)], {}, skipped=[])
    last_tar = root / shards[-1]["tar"]
    video_offset = int((root / shards[-1]["index"]).read_text().splitlines()[-1].split()[1])
    os.truncate(last_tar, video_offset + 1000)
    good = [key for key in keys if key not in UNUSABLE]
    return FaultSet(root, good, [key for key in keys if key in UNUSABLE])


def verified_members(name: str, index: int) -> tuple[str, list[tuple[str, bytes]], list[int]]:
    """(key, members, facts) of clip `index` as prepare writes it: its bytes before any break (a repaired clip as it
    is), with the facts they decode to."""
    duration = 2 if name == "fix-2s" else DURATION
    _, video, audio, meta = make_clip(index, CLASSES, SEED, duration)
    key = name if name != "good" else f"good{index:02d}"
    if name == "fix-8khz-stereo":
        audio = eight_khz_stereo(audio)
    members = [("webm", video), ("flac", audio), ("json", encode_meta({**meta, "key": key}))]
    return key, members, clip_facts(video, audio)


def member_place(root: Path, shards: list[dict], key: str, ext: str) -> tuple[Path, Path, int, int, int]:
    """(tar, index, line number, data offset, size) of one member of a written shard set."""
    for shard in shards:
        for number, line in enumerate(read_index(root / shard["index"])):
            members = index_members(line)
            if ext in members and members[ext][2] == f"{key}.{ext}":
                return root / shard["tar"], root / shard["index"], number, *members[ext][:2]
    raise KeyError(f"{key}.{ext}")


def overwrite(tar: Path, offset: int, data: bytes) -> None:
    """Writes `data` over the tar's bytes at `offset`, in place (the tar keeps its size)."""
    with open(tar, "r+b") as f:
        f.seek(offset)
        f.write(data)


def build_verified_fault_set(root: Path) -> FaultSet:
    """The layout written as prepare writes (every clip good when written, its facts and member digests recorded in
    the shards' sidecars), then broken on disk as storage and copies break it: the bad clips' bytes overwritten in
    place, a member dropped from the index, a member's size cut to 0 in the index, the last tar truncated."""
    writer = ShardWriter(root, PER_SHARD)
    keys = []
    for index, name in enumerate(LAYOUT):
        key, parts, facts = verified_members(name, index)
        keys.append(key)
        video, audio, meta = (data for _, data in parts)
        writer.add(key, video, "webm", audio, decode_meta(meta), facts)
    shards = writer.close()
    write_manifest(root, shards, [f"class-{k:02d}" for k in range(CLASSES)], {}, skipped=[])
    for index, name in enumerate(LAYOUT):
        if name in ("bad-corrupt-video", "bad-corrupt-flac"):
            ext, keep = ("webm", 64) if name == "bad-corrupt-video" else ("flac", 200)
            tar, _, _, offset, size = member_place(root, shards, name, ext)
            overwrite(tar, offset + keep, noise(bytes(size), keep, index)[keep:])
        elif name in ("bad-missing-flac", "bad-empty-video"):
            ext = "flac" if name == "bad-missing-flac" else "webm"
            _, index_path, number, offset, size = member_place(root, shards, name, ext)
            lines = read_index(index_path)
            fields = lines[number].split()
            at = fields.index(f"{name}.{ext}") - 3  # the member's four fields: ext, offset, size, name
            fields[at : at + 4] = [] if name == "bad-missing-flac" else [ext, str(offset), "0", f"{name}.{ext}"]
            lines[number] = " ".join(fields)
            index_path.write_text(index_text(lines))
    tar, _, _, offset, _ = member_place(root, shards, "bad-truncated", "webm")
    os.truncate(tar, offset + 1000)
    good = [key for key in keys if key not in UNUSABLE]
    return FaultSet(root, good, [key for key in keys if key in UNUSABLE])


def encode_h264(frames: np.ndarray, fps: int = 2) -> bytes:
    """(T, H, W, 3) uint8 -> H.264 in MP4: PyAV decodes it (the health check accepts it), DALI decodes it on a GPU
    only (its CPU video decoder reads VP9 and MJPEG), so a CPU pipeline rejects it."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = *frames.shape[1:3], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def build_rejected_set(root: Path, clips: int = 16, rejected: int = 5) -> FaultSet:
    """`clips` good synthetic clips (4 s), clip `rejected` stored as H.264 (.mp4): a clip the health check accepts
    and a CPU DALI pipeline rejects. FaultSet.bad holds its key."""
    writer = ShardWriter(root, PER_SHARD)
    keys = []
    for index in range(clips):
        key, video, audio, meta = make_clip(index, CLASSES, SEED, DURATION)
        if index == rejected:
            with av.open(io.BytesIO(video)) as container:
                frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
            writer.add(key, encode_h264(frames), "mp4", audio, meta)
        else:
            writer.add(key, video, "webm", audio, meta)
        keys.append(key)
    write_manifest(root, writer.close(), [f"class-{k:02d}" for k in range(CLASSES)], {}, skipped=[])
    return FaultSet(root, [key for i, key in enumerate(keys) if i != rejected], [keys[rejected]])
