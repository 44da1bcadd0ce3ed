"""Data health: which clips of a shard directory can be used as they are, which need a repair, which are skipped.

DALI fails a whole batch when one of its samples fails to decode, so `ensure_health(root)` checks every clip the
DALI index files list before DALI sees them, once (cached in health.json, or in the cache where the directory is
read-only), and every loader reads only the usable clips (health-index/). A clip whose bytes match what `prepare`
or `synthetic` recorded is trusted without decoding; every other clip is decoded with PyAV. `check_ceiling` refuses
a set above data.max_bad_fraction; `DataHealth.drop` records a clip that only DALI refuses.
`ensure_health(root, distributed=True)`, called by every rank at once, splits the shards over the ranks.

    python -m mavil.data.health DIR [--workers N]      # check (or re-read) a set and print its counts

Details (the checks, the kinds, the report, the costs): docs/data_health.md.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mavil.config import ConfigError
from mavil.data.fbank import samples_for_frames
from mavil.data.pool import default_workers, map_in_order
from mavil.data.shards import (
    VIDEO_EXTS,
    default_cache_dir,
    index_members,
    index_text,
    member_record,
    read_index,
    read_manifest,
    read_verified,
)
from mavil.data.verify import Bad, audio_facts, check_meta, count_frames  # noqa: F401 (Bad: the tests')
from mavil.files import atomic_write


REPORT, INDEX_DIR, HEALTH_VERSION = "health.json", "health-index", 2  # 2: labels per usable clip
DROPPED = "health-dropped.jsonl"  # clips the DALI pipeline failed to decode during runs, one JSON line each
PIPELINE_KIND = "decode_failed_in_pipeline"
UNUSABLE_KINDS = (
    "missing_video",
    "missing_audio",
    "missing_meta",
    "truncated",
    "meta_undecodable",
    "video_empty",
    "video_undecodable",
    "audio_empty",
    "audio_undecodable",
    PIPELINE_KIND,
)
REPAIRED_KINDS = ("audio_resampled", "audio_downmixed", "short_audio", "short_video")
SERIAL_BELOW = 256  # clips to decode: fewer are decoded in this process (a process pool takes seconds to start)
HASH_SERIAL_BELOW = 1 << 30  # bytes of verified clips to hash: less is hashed in this process (~1 GB/s)
CHUNK = 16  # clips per job of the pool
EXAMPLES = 3  # unusable clips named per kind in the command's output


class UnusableData(ConfigError):
    """A data set too broken to train on: refused before any work, like a config that cannot run."""


@dataclass(frozen=True)
class Windows:
    """What the model reads of a clip: `audio_frames` fbank frames at `sample_rate`, `video_frames` frames."""

    sample_rate: int = 16000
    audio_frames: int = 1024
    video_frames: int = 8


# checking one clip (runs in the pool's workers)
def clip_key(members: dict[str, tuple[int, int, str]]) -> str:
    return next(iter(members.values()))[2].partition(".")[0] if members else "?"


def check_chunk(job: tuple[str, int, list[tuple[str, dict | None]], int, bool]) -> list[tuple[list, bool]]:
    """(tar path, tar size, [(index line, sidecar record or None)], classes, decode) -> per clip (result, trusted).
    A clip whose record matches its bytes is trusted: result [sample_rate, channels, samples, frames, labels]. Any
    other clip is decoded in full when `decode` (result as above, or [key, kind, detail] of an unusable clip), else
    left for a decoding pass (result None)."""
    tar, tar_size, clips, classes, decode = job
    results = []
    with open(tar, "rb") as handle:
        for line, record in clips:
            members = index_members(line)
            try:
                facts = recorded_facts(handle, tar_size, members, record, classes)
                if facts is not None:
                    results.append((facts, True))
                elif decode:
                    results.append((check_members(tar, tar_size, members, classes), False))
                else:
                    results.append((None, False))
            except Bad as bad:
                results.append(([clip_key(members), *bad.args], False))
    return results


def recorded_facts(
    handle, tar_size: int, members: dict[str, tuple[int, int, str]], record: dict | None, classes: int
) -> list | None:
    """The facts prepare recorded for the clip, when its members are exactly those recorded, byte for byte (size and
    sha256); None otherwise (the clip must be decoded). The metadata is still checked against `classes`."""
    if not record or set(record.get("members", {})) != set(members):
        return None
    meta = b""
    for ext, (offset, size, _) in members.items():
        if record["members"][ext][0] != size or offset + size > tar_size:
            return None
        handle.seek(offset)
        data = handle.read(size)
        if member_record(data) != record["members"][ext]:
            return None
        meta = data if ext == "json" else meta
    return [*record["facts"], check_meta(meta, classes)]


def check_members(tar: str, tar_size: int, members: dict[str, tuple[int, int, str]], classes: int) -> list:
    video_ext = next((ext for ext in VIDEO_EXTS if ext in members), None)
    for ext, kind in ((video_ext, "missing_video"), ("flac", "missing_audio"), ("json", "missing_meta")):
        if ext not in members:
            raise Bad(kind, f"no {'/'.join(VIDEO_EXTS) if ext is None else ext} member")
    for offset, size, name in members.values():
        if offset + size > tar_size:
            raise Bad("truncated", f"{name} ends at byte {offset + size}, past the tar's end at {tar_size}")
    video, audio, meta = (read_member(tar, members[ext]) for ext in (video_ext, "flac", "json"))
    labels = check_meta(meta, classes)
    frames = count_frames(video)
    return [*audio_facts(audio), frames, labels]


def read_member(tar: str, member: tuple[int, int, str]) -> bytes:
    offset, size, _ = member
    with open(tar, "rb") as f:
        f.seek(offset)
        return f.read(size)


# the report
@dataclass(frozen=True)
class ShardHealth:
    tar: Path
    index: Path  # what DALI reads: the shard's own index, or the one of its usable clips beside the report
    clips: int
    usable: list[list]  # per usable clip, in index order: [line, sample_rate, channels, samples, frames, labels]
    bad: list[dict]  # per unusable clip: {"line", "key", "kind", "detail"}
    decoded: int = 0  # clips the check decoded (the others were trusted from prepare's record)


@dataclass(frozen=True)
class Tally:
    """Clips per kind under one model's windows."""

    clips: int
    usable: int
    unusable: dict[str, int]  # every unusable kind, zeros included
    repaired: dict[str, int]  # every repaired kind, zeros included
    repaired_clips: int  # clips with at least one repair

    def fields(self) -> dict[str, int]:
        """For metrics lines and eval.json: data_clips, data_used, data_skipped, data_repaired, and data_<kind> for
        each kind that has clips (an absent kind has none)."""
        return {
            "data_clips": self.clips,
            "data_used": self.usable,
            "data_skipped": self.clips - self.usable,
            "data_repaired": self.repaired_clips,
            **{f"data_{kind}": count for kind, count in {**self.unusable, **self.repaired}.items() if count},
        }

    def __str__(self) -> str:
        return (
            f"{self.usable} of {self.clips} clips used, {self.clips - self.usable} skipped{by_kind(self.unusable)}, "
            f"{self.repaired_clips} repaired{by_kind(self.repaired)}"
        )


def by_kind(counts: dict[str, int]) -> str:
    """' (video_undecodable 30, missing_audio 7)': the non-zero counts, largest first; '' when there are none."""
    shown = [f"{kind} {count}" for kind, count in sorted(counts.items(), key=lambda item: -item[1]) if count]
    return f" ({', '.join(shown)})" if shown else ""


class DataHealth:
    """The checked state of a shard directory (from `ensure_health`)."""

    def __init__(self, root: Path, report: Path, manifest: dict, shards: list[ShardHealth]):
        self.root, self.report, self.manifest, self.shards = root, report, manifest, shards
        self.dropped: dict[int, str] = {}  # clip number -> detail: clips this process's DALI pipeline failed on
        self._reader_folder: Path | None = None  # this process's index files of usable clips less dropped ones
        self._numbered: list[tuple[ShardHealth, int]] | None = None

    @property
    def clips(self) -> int:
        return sum(shard.clips for shard in self.shards)

    @property
    def usable(self) -> int:
        return sum(len(shard.usable) for shard in self.shards)

    def usable_shards(self) -> list[tuple[Path, Path]]:
        """(tar, index) of each shard with a usable clip, in manifest order: what ClipIndex reads (the clip numbers
        stay those of the check, whatever is dropped later in the run)."""
        return [(shard.tar, shard.index) for shard in self.shards if shard.usable]

    def reader_shards(self) -> list[tuple[Path, Path]]:
        """(tar, index) for DALI's reader: usable_shards less the clips that pipelines dropped in this run, on any
        rank (read from the record beside the report, so that every rank's reader splits the same list)."""
        gone: dict[Path, set[int]] = {}
        for name, line in self.dropped_in_run():
            gone.setdefault(self.root / name, set()).add(line)
        shards = []
        for shard in self.shards:
            kept = [clip[0] for clip in shard.usable if clip[0] not in gone.get(shard.tar, ())]
            if kept and shard.tar in gone:
                own_lines = read_index(self.root / shard_entry(self.manifest, shard.tar, self.root)["index"])
                if self._reader_folder is None:  # this process's (other ranks write their own), gone with it
                    self._reader_folder = Path(tempfile.mkdtemp(prefix="mavil-reader-index-"))
                    weakref.finalize(self, shutil.rmtree, self._reader_folder, True)
                index = self._reader_folder / shard.index.name
                index.write_text(index_text([own_lines[line] for line in kept]))
                shards.append((shard.tar, index))
            elif kept:
                shards.append((shard.tar, shard.index))
        return shards

    def numbered(self) -> list[tuple[ShardHealth, int]]:
        """(shard, line in its own index) of each usable clip, by clip number."""
        if self._numbered is None:
            self._numbered = [(shard, clip[0]) for shard in self.shards for clip in shard.usable]
        return self._numbered

    def drop(self, clip: int, detail: str) -> None:
        """Marks usable clip `clip` as one DALI's pipeline failed to decode (PIPELINE_KIND): recorded beside the
        report (every rank appends, under a lock), so that the tallies of this run count it and the next check
        (`ensure_health`) lists it as unusable; this run's later loaders read it no more (`reader_shards`)."""
        if clip in self.dropped:
            return
        shard, line = self.numbered()[clip]
        own_lines = read_index(self.root / shard_entry(self.manifest, shard.tar, self.root)["index"])
        key = clip_key(index_members(own_lines[line]))
        record = {
            "tar": shard.tar.relative_to(self.root).as_posix(),
            "stamp": file_stamp(shard.tar),
            "line": line,
            "key": key,
            "detail": detail,
        }
        with open(self.report.parent / DROPPED, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.dropped[clip] = detail

    def dropped_records(self) -> dict[tuple[str, int], dict]:
        """(tar, line) -> record of every clip a pipeline dropped in this run or before it (all ranks), for the
        shards as they are now."""
        records = {}
        try:
            lines = (self.report.parent / DROPPED).read_text().splitlines()
        except OSError:
            return records
        stamps = {shard.tar.relative_to(self.root).as_posix(): shard for shard in self.shards}
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            shard = stamps.get(record.get("tar"))
            if shard is not None and record.get("stamp") == file_stamp(shard.tar):
                records[(record["tar"], record["line"])] = record
        return records

    def labels(self) -> list[list[int]]:
        """Each usable clip's class indices, numbered as `ClipIndex` and `Loader(clips=...)` number them (for the
        samplers: no clip's metadata is read again)."""
        return [clip[5] for shard in self.shards for clip in shard.usable]

    def unusable_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(UNUSABLE_KINDS, 0)
        for shard in self.shards:
            for clip in shard.bad:
                counts[clip["kind"]] += 1
        counts[PIPELINE_KIND] += len(self.dropped_in_run())
        return counts

    def dropped_in_run(self) -> set[tuple[str, int]]:
        """(tar, line) of the usable clips that a pipeline dropped since the check (this process's and other
        ranks')."""
        dropped = {
            (shard.tar.relative_to(self.root).as_posix(), line)
            for shard, line in (self.numbered()[clip] for clip in self.dropped)
        }
        records = self.dropped_records()
        if records:
            shards = {shard.tar.relative_to(self.root).as_posix(): shard for shard in self.shards}
            usable: dict[str, set[int]] = {}
            for name, line in records:
                lines = usable.setdefault(name, {clip[0] for clip in shards[name].usable})
                if line in lines:
                    dropped.add((name, line))
        return dropped

    def tally(self, windows: Windows) -> Tally:
        counts, repaired_clips = dict.fromkeys(REPAIRED_KINDS, 0), 0
        needed = samples_for_frames(windows.audio_frames, windows.sample_rate)
        dropped = self.dropped_in_run()
        for shard in self.shards:
            name = shard.tar.relative_to(self.root).as_posix()
            for line, rate, channels, samples, frames, _ in shard.usable:
                if (name, line) in dropped:
                    continue
                kinds = [
                    kind
                    for kind, applies in (
                        ("audio_resampled", rate != windows.sample_rate),
                        ("audio_downmixed", channels > 1),
                        ("short_audio", math.ceil(samples * windows.sample_rate / rate) < needed),
                        ("short_video", frames < windows.video_frames),
                    )
                    if applies
                ]
                for kind in kinds:
                    counts[kind] += 1
                repaired_clips += bool(kinds)
        return Tally(self.clips, self.usable - len(dropped), self.unusable_counts(), counts, repaired_clips)

    def check_ceiling(self, max_bad_fraction: float) -> None:
        """Raises UnusableData when more than `max_bad_fraction` of the clips are unusable, or none is usable."""
        bad = self.clips - self.usable
        if self.usable and bad <= max_bad_fraction * self.clips:
            return
        raise UnusableData(
            f"{self.root}: {bad} of {self.clips} clips ({100 * bad / max(self.clips, 1):.1f}%) are "
            f"unusable{by_kind(self.unusable_counts())}, above data.max_bad_fraction={max_bad_fraction:g}; "
            f"the report is {self.report}"
        )

    def unusable_examples(self, per_kind: int = EXAMPLES) -> dict[str, list[str]]:
        """kind -> 'shard: key (detail)' of its first few clips."""
        examples: dict[str, list[str]] = {}
        for shard in self.shards:
            for clip in shard.bad:
                named = examples.setdefault(clip["kind"], [])
                if len(named) < per_kind:
                    named.append(f"{shard.tar.name}: {clip['key']} ({clip['detail']})")
        return examples


def file_stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def report_dirs(root: Path) -> list[Path]:
    """Where a report may live: the dataset directory, else this dataset's folder in the cache."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [root, default_cache_dir() / "health" / f"{root.name}-{digest}"]


def read_reports(root: Path) -> list[tuple[Path, dict]]:
    """(directory, shard entries) of each report of the current version there is, the dataset directory's first."""
    reports = []
    for folder in report_dirs(root):
        try:
            report = json.loads((folder / REPORT).read_text())
        except (OSError, ValueError):
            continue
        if report.get("version") == HEALTH_VERSION:
            reports.append((folder, report["shards"]))
    return reports


def is_fresh(entry: dict | None, root: Path, shard: dict, folder: Path | None) -> bool:
    """Whether a report entry still describes the shard: same tar and index stamps, its usable index present."""
    if entry is None or folder is None:
        return False
    stamps_match = entry["tar"] == file_stamp(root / shard["tar"]) and entry["index"] == file_stamp(
        root / shard["index"]
    )
    return stamps_match and (not entry["bad"] or (folder / INDEX_DIR / shard["index"]).is_file())


def stale_shards(root: Path, manifest: dict, folder: Path | None, entries: dict) -> list[dict]:
    """The manifest's shards that the report in `folder` (its shard `entries`) does not describe as they are now."""
    return [shard for shard in manifest["shards"] if not is_fresh(entries.get(shard["tar"]), root, shard, folder)]


def scan(
    root: Path, shards: list[dict], classes: int, workers: int | None, progress: bool, pool_size: int | None = None
) -> dict[str, dict]:
    """Checks every clip of `shards` (labels must index `classes` classes) -> report entries by tar name.

    Two passes, each over a process pool where it is large: the clips that prepare (or synthetic) verified are
    trusted where their bytes still hash to the record (no decoding); the others, foreign shards' clips and any
    whose bytes changed, are decoded in full. One progress bar counts both."""
    lines = {shard["tar"]: read_index(root / shard["index"]) for shard in shards}
    records = {shard["tar"]: read_verified(root, shard) for shard in shards}
    sizes = {shard["tar"]: (root / shard["tar"]).stat().st_size for shard in shards}
    entries = {
        shard["tar"]: {
            "tar": file_stamp(root / shard["tar"]),
            "index": file_stamp(root / shard["index"]),
            "clips": len(lines[shard["tar"]]),
            "usable": [],
            "bad": [],
            "decoded": 0,
        }
        for shard in shards
    }
    results: dict[tuple[str, int], tuple[list, bool]] = {}
    recorded = [
        (tar, number)
        for tar in lines
        for number, line in enumerate(lines[tar])
        if records[tar].get(clip_key(index_members(line)))
    ]
    with tqdm(
        total=sum(len(clips) for clips in lines.values()),
        desc=f"checking {root.name}",
        unit="clip",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        hashed = sum(
            sum(size for size, _ in records[tar][clip_key(index_members(lines[tar][number]))]["members"].values())
            for tar, number in recorded
        )
        cpus = pool_size or default_workers()  # the pool where one is worth starting
        pool = workers if workers is not None else cpus if hashed >= HASH_SERIAL_BELOW else 1
        run_pass(root, lines, records, sizes, recorded, classes, pool, False, results, bar)
        rest = [
            (tar, number)
            for tar in lines
            for number in range(len(lines[tar]))
            if results.get((tar, number), (None,))[0] is None
        ]
        pool = workers if workers is not None else cpus if len(rest) >= SERIAL_BELOW else 1
        run_pass(root, lines, records, sizes, rest, classes, pool, True, results, bar)
    for tar in lines:
        for number in range(len(lines[tar])):
            result, trusted = results[(tar, number)]
            entries[tar]["decoded"] += not trusted
            if len(result) == 3:
                entries[tar]["bad"].append(dict(zip(("line", "key", "kind", "detail"), [number, *result])))
            else:
                entries[tar]["usable"].append([number, *result])
    return entries


def run_pass(
    root: Path,
    lines: dict,
    records: dict,
    sizes: dict,
    clips: list[tuple[str, int]],
    classes: int,
    workers: int,
    decode: bool,
    results: dict,
    bar,
) -> None:
    """check_chunk over `clips` ((tar, line number) pairs) in chunks of CHUNK clips of one shard; the results into
    `results`, the bar advanced by the clips settled (all of them when decoding, the trusted ones otherwise)."""
    by_shard: dict[str, list[int]] = {}
    for tar, number in clips:
        by_shard.setdefault(tar, []).append(number)
    chunks = [(tar, numbers[i : i + CHUNK]) for tar, numbers in by_shard.items() for i in range(0, len(numbers), CHUNK)]
    jobs = [
        (
            str(root / tar),
            sizes[tar],
            [(lines[tar][n], records[tar].get(clip_key(index_members(lines[tar][n])))) for n in numbers],
            classes,
            decode,
        )
        for tar, numbers in chunks
    ]
    for (tar, numbers), chunk in zip(chunks, map_in_order(check_chunk, jobs, workers, "", progress=False)):
        for number, result in zip(numbers, chunk):
            results[(tar, number)] = result
        bar.update(sum(result is not None for result, _ in chunk))


def write_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` all or nothing (its folders made first); several processes may write it at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, concurrent=True)


def write_report(root: Path, manifest: dict, entries: dict[str, dict]) -> Path:
    """Writes the usable-clip indexes and health.json into the first report directory that takes them."""
    for folder in report_dirs(root):
        try:
            for shard in manifest["shards"]:
                entry = entries[shard["tar"]]
                if entry["bad"]:
                    lines = read_index(root / shard["index"])
                    write_atomic(
                        folder / INDEX_DIR / shard["index"], index_text([lines[u[0]] for u in entry["usable"]])
                    )
            report = {"version": HEALTH_VERSION, "root": str(root), "shards": entries}
            write_atomic(folder / REPORT, json.dumps(report, separators=(",", ":")) + "\n")
            return folder
        except OSError:
            continue
    raise OSError(f"{root}: cannot write {REPORT} there nor into {report_dirs(root)[-1]}")


def ensure_health(
    root: str | Path, workers: int | None = None, progress: bool = True, distributed: bool = False
) -> DataHealth:
    """The health of the shard directory `root`: read from its report where that is current, the shards that
    changed (or all, the first time) checked and the report rewritten. workers None: a process per CPU for large
    sets, this process for small ones.

    distributed: every rank of the initialised torch.distributed process group calls this at once; the shards to
    check are split over the ranks (each with its node's CPUs shared by LOCAL_WORLD_SIZE ranks), their entries
    gathered, rank 0 writes the report, and every rank returns the same health. Without a process group (or a
    group of one) it is the plain call."""
    root = Path(root)
    manifest = read_manifest(root)
    reports = read_reports(root) or [(None, {})]
    folder, entries = min(reports, key=lambda report: len(stale_shards(root, manifest, *report)))  # ties: the first
    stale = stale_shards(root, manifest, folder, entries)
    if stale and distributed and process_group_size() > 1:
        return ensure_health_over_ranks(root, manifest, entries, stale, workers, progress)
    if stale:
        entries = {**entries, **scan(root, stale, len(manifest["label_names"]), workers, progress)}
        folder = write_report(root, manifest, {shard["tar"]: entries[shard["tar"]] for shard in manifest["shards"]})
    if apply_dropped(root, folder, entries):
        folder = write_report(root, manifest, {shard["tar"]: entries[shard["tar"]] for shard in manifest["shards"]})
    shards = [shard_health(root, folder, shard, entries[shard["tar"]]) for shard in manifest["shards"]]
    return DataHealth(root, folder / REPORT, manifest, shards)


def process_group_size() -> int:
    """The world size of the initialised torch.distributed process group; 1 without one."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def ensure_health_over_ranks(
    root: Path, manifest: dict, entries: dict, stale: list[dict], workers: int | None, progress: bool
) -> DataHealth:
    """ensure_health(distributed=True) where shards are to be checked: rank r checks stale[r::world] (its share of
    the node's CPUs when large), the entries are gathered to every rank, rank 0 writes the report and every rank
    then reads it."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = workers if workers is not None else max(1, default_workers() // local_ranks)
    mine = scan(root, stale[rank::world], len(manifest["label_names"]), None, progress and rank == 0, pool_size=share)
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, mine)
    for part in gathered:
        entries = {**entries, **part}
    failure = None
    if rank == 0:
        try:
            write_report(root, manifest, {shard["tar"]: entries[shard["tar"]] for shard in manifest["shards"]})
        except OSError as error:
            failure = str(error)
    outcome = [failure]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise OSError(outcome[0])
    return ensure_health(root, workers, progress=False)  # the report rank 0 wrote: nothing left to check


def apply_dropped(root: Path, folder: Path, entries: dict[str, dict]) -> bool:
    """Moves the usable clips that DALI's pipeline failed on in earlier runs (DROPPED beside the report, for the
    shards as they are now) to the unusable ones; -> whether any moved."""
    try:
        lines = (folder / DROPPED).read_text().splitlines()
    except OSError:
        return False
    moved = False
    for line in lines:
        try:
            record = json.loads(line)
            entry = entries[record["tar"]]
        except (ValueError, KeyError, TypeError):
            continue
        if record.get("stamp") != entry["tar"]:
            continue  # the shard changed since: it was checked again
        for position, clip in enumerate(entry["usable"]):
            if clip[0] == record["line"]:
                del entry["usable"][position]
                entry["bad"].append(
                    {"line": record["line"], "key": record["key"], "kind": PIPELINE_KIND, "detail": record["detail"]}
                )
                entry["bad"].sort(key=lambda bad: bad["line"])
                moved = True
                break
    return moved


def shard_entry(manifest: dict, tar: Path, root: Path) -> dict:
    name = tar.relative_to(root).as_posix()
    return next(shard for shard in manifest["shards"] if shard["tar"] == name)


def shard_health(root: Path, folder: Path, shard: dict, entry: dict) -> ShardHealth:
    index = folder / INDEX_DIR / shard["index"] if entry["bad"] else root / shard["index"]
    return ShardHealth(
        root / shard["tar"], index, entry["clips"], entry["usable"], entry["bad"], entry.get("decoded", entry["clips"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mavil.data.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a shard directory (with manifest.json)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU for large sets)")
    parser.add_argument("--audio-frames", type=int, default=Windows.audio_frames, help="the model's audio window")
    parser.add_argument("--video-frames", type=int, default=Windows.video_frames, help="the model's video window")
    parser.add_argument("--sample-rate", type=int, default=Windows.sample_rate)
    args = parser.parse_args(argv)
    try:
        health = ensure_health(args.root, args.workers)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    print(f"{args.root}: {health.tally(Windows(args.sample_rate, args.audio_frames, args.video_frames))}")
    for kind, named in health.unusable_examples().items():
        print(f"  {kind}: " + "; ".join(named))
    decoded = sum(shard.decoded for shard in health.shards)
    print(f"checked: {health.clips - decoded} clips from prepare's record, {decoded} decoded; report: {health.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
