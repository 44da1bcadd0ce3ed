"""WebDataset shards: the one on-disk format that `prepare`, `synthetic` and every loader share.

A dataset directory holds shard-NNNNNN.tar with its DALI index (.idx) and verification record (.verified.json),
and manifest.json (clips, shards, label names, encoding, skipped sources); `mavil.data.health` adds health.json and
health-index/. Per clip, tar members share the clip's key: <key>.webm (VP9, 2 fps, short side 256) or <key>.mp4,
<key>.flac (16 kHz mono) and <key>.json (labels, duration, frames, source; padded to META_BYTES). Generated sets
and reports about read-only sets live in `default_cache_dir()` ($MAVIL_CACHE, else ~/.cache/mavil).
The full format: docs/prepare.md#the-shard-format.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
META_BYTES = 1024
VIDEO_EXTS = ("webm", "mp4")
VERIFIED_SUFFIX, VERIFIED_VERSION = ".verified.json", 1
DIGEST_CHARS = 32  # hex characters of sha256 kept per member: 128 bits, against accidental change (not an attacker)


def default_cache_dir() -> Path:
    """$MAVIL_CACHE, else ~/.cache/mavil."""
    return Path(os.environ.get("MAVIL_CACHE") or Path.home() / ".cache" / "mavil")


def member_record(data: bytes) -> list:
    """[size, sha256 prefix] of one member's bytes, as a shard's verified sidecar records them."""
    return [len(data), hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]]


def encode_meta(meta: dict) -> bytes:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    if len(raw) > META_BYTES:
        raise ValueError(f"clip {meta.get('key')}: metadata of {len(raw)} bytes exceeds {META_BYTES}")
    return raw.ljust(META_BYTES, b" ")


def decode_meta(raw: bytes) -> dict:
    return json.loads(bytes(raw).decode().strip())


class ShardWriter:
    """Appends clips to numbered tar shards of `clips_per_shard` clips, each with its DALI index beside it."""

    def __init__(self, out_dir: str | Path, clips_per_shard: int = 256, first: int = 0, verify: bool = True):
        """first: the number of the first shard (a resumed run continues the numbering); verify: `add` decodes each
        clip it is given no facts for, and records what it decodes to (what the health check then trusts)."""
        self.verify = verify
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clips_per_shard = clips_per_shard
        self.first = first
        self.shards: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._index_lines: list[str] = []
        self._verified: dict[str, dict] = {}  # the open shard's verified clips: key -> sidecar record

    def add(
        self, key: str, video: bytes, video_ext: str, audio: bytes, meta: dict, facts: list[int] | None = None
    ) -> None:
        """facts: [sample rate, channels, samples, frames] that the caller decoded from these very bytes
        (`mavil.data.verify.clip_facts`; prepare does it in its workers), recorded with each member's size and digest
        in the shard's sidecar. None: decoded here (with `verify`); a clip that does not decode is written unrecorded,
        for the health check to decode and judge."""
        if video_ext not in VIDEO_EXTS:
            raise ValueError(f"clip {key}: video extension {video_ext!r} is not one of {VIDEO_EXTS}")
        if "." in key or "/" in key:
            raise ValueError(f"clip key {key!r}: must not contain '.' or '/' (WebDataset splits on them)")
        members = [(video_ext, video), ("flac", audio), ("json", encode_meta({**meta, "key": key}))]
        self.add_members(key, members)
        if facts is None and self.verify:
            from .verify import Bad, clip_facts  # here: verify imports this module

            try:
                facts = clip_facts(video, audio)
            except Bad:
                facts = None
        if facts is not None:
            self._verified[key] = {
                "members": {ext: member_record(data) for ext, data in members},
                "facts": facts,
                "labels": meta.get("labels", []),
                "duration": meta.get("duration"),
            }

    def add_members(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """One clip as the given (extension, bytes) members, unchecked: `add` checks a complete clip first; the
        tests call this directly to write clips with a member missing, as other tools' shards may have them."""
        if self._tar is None or self.shards[-1]["clips"] == self.clips_per_shard:
            self._open_next()
        entries = [self._add_member(f"{key}.{ext}", ext, data) for ext, data in members]
        self._index_lines.append(" ".join(entries))
        self.shards[-1]["clips"] += 1

    def _add_member(self, name: str, ext: str, data: bytes) -> str:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        data_offset = self._tar.offset - padded  # the data ends the archive so far, after its header(s)
        return f"{ext} {data_offset} {len(data)} {name}"  # DALI's index: extension, data offset, size, name

    def _open_next(self) -> None:
        self._finish_shard()
        name = f"shard-{self.first + len(self.shards):06d}"
        self.shards.append({"tar": f"{name}.tar", "index": f"{name}.idx", "clips": 0})
        self._tar = tarfile.open(self.out_dir / f"{name}.tar", "w", format=tarfile.USTAR_FORMAT)

    def _finish_shard(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        (self.out_dir / self.shards[-1]["index"]).write_text(index_text(self._index_lines))
        if self._verified:
            name = self.shards[-1]["tar"].removesuffix(".tar") + VERIFIED_SUFFIX
            record = {"version": VERIFIED_VERSION, "clips": self._verified}
            (self.out_dir / name).write_text(json.dumps(record, separators=(",", ":")) + "\n")
            self.shards[-1]["verified"] = name
        self._tar, self._index_lines, self._verified = None, [], {}

    @property
    def full(self) -> bool:
        """Whether the open shard holds clips_per_shard clips."""
        return self._tar is not None and self.shards[-1]["clips"] == self.clips_per_shard

    def finish_shard(self) -> dict | None:
        """Closes the open shard (tar and index complete on disk) and returns its entry; None when none is open."""
        if self._tar is None:
            return None
        self._finish_shard()
        return self.shards[-1]

    def close(self) -> list[dict]:
        self._finish_shard()
        return self.shards


def index_text(lines: list[str]) -> str:
    """A DALI index file (format v1.2): the header "v1.2 <clips>", then one line per clip as `read_index` reads it."""
    return "\n".join([f"v1.2 {len(lines)}", *lines]) + "\n"


def read_index(path: str | Path) -> list[str]:
    """The clip lines of a DALI index file, header dropped; per clip, per member: "ext data_offset size name"."""
    return [line for line in Path(path).read_text().splitlines()[1:] if line.strip()]


def index_members(line: str) -> dict[str, tuple[int, int, str]]:
    """One clip line of an index -> {extension: (data offset, size, member name)}."""
    fields = line.split()
    return {
        ext: (int(offset), int(size), name)
        for ext, offset, size, name in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4])
    }


def read_verified(root: str | Path, shard: dict) -> dict[str, dict]:
    """key -> the sidecar record of each clip that prepare or synthetic verified in this shard; {} when the shard has
    no sidecar (foreign shards), or an unreadable one."""
    if not isinstance(shard.get("verified"), str):
        return {}
    try:
        record = json.loads((Path(root) / shard["verified"]).read_text())
    except (OSError, ValueError):
        return {}
    clips = record.get("clips") if isinstance(record, dict) and record.get("version") == VERIFIED_VERSION else None
    return clips if isinstance(clips, dict) else {}


def write_manifest(
    out_dir: str | Path, shards: list[dict], label_names: list[str], encoding: dict, skipped: list[dict], **extra
) -> Path:
    """extra: further top-level fields (prepare's label_ids, missing, merged duplicates, part)."""
    manifest = {
        "version": FORMAT_VERSION,
        "clips": sum(s["clips"] for s in shards),
        "shards": shards,
        "label_names": label_names,
        "encoding": encoding,
        "skipped": skipped,
        **extra,
    }
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(root: str | Path) -> dict:
    """The manifest of a shard directory; errors name the directory and what is missing."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{root}: no {MANIFEST}: not a shard directory (make one with python -m mavil.data.prepare "
            f"or python -m mavil.data.synthetic)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{root}: {MANIFEST} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("label_names"), list):
        raise ValueError(f"{root}: {MANIFEST} is not a shard manifest (no list of label_names)")
    if not manifest.get("shards"):
        raise ValueError(f"{root}: the manifest lists no shards")
    for shard in manifest["shards"]:
        for key in ("tar", "index"):
            if not isinstance(shard, dict) or not isinstance(shard.get(key), str):
                raise ValueError(f"{root}: a shard of the manifest names no {key} file: {json.dumps(shard)}")
            if not (Path(root) / shard[key]).is_file():
                raise FileNotFoundError(f"{root}: shard file {shard[key]} listed in the manifest is missing")
    return manifest
