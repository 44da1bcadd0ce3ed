"""Checkpoints that a crash never leaves half-visible, and the consolidated export.

Each checkpoint is a tag checkpoints/step<NNNNNNNN>/ (DeepSpeed's state, each rank's RNG states, a manifest of sizes
and sha256 written last); checkpoints/latest names the newest complete one and is replaced atomically after every
rank has written its files, so a crash mid-write leaves the previous checkpoint in charge. `prune` keeps `latest` and
the tag before it. Resuming (`choose`) takes `latest` when its manifest matches its files (`damage`), else the
newest intact tag before it; a run that logged steps but holds no intact checkpoint is `UnusableRun`.
Details (layout, crashes, pruning, damage): docs/training.md#checkpoints.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import sys
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import ConfigError
from ..files import atomic_write
from . import inject

LATEST = "latest"
KEEP = 2  # `latest` and the one before it
TAG = re.compile(r"step\d{8}")
MANIFEST = "manifest.json"


class UnusableRun(ConfigError):
    """A run directory that holds a run but nothing it can resume from (one line naming the directory and why)."""


def seed_rng(seed: int) -> None:
    """Seeds every generator whose state a checkpoint holds (torch with CUDA, Python's, NumPy's)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine, run_dir: Path, client_state: dict) -> None:
    """Every rank calls this at the same optimizer step; the tag is the engine's global step."""
    root, step, rank = run_dir / "checkpoints", engine.global_steps, dist.get_rank()
    tag = tag_for(step)
    refusal = [None]
    if rank == 0:
        if (root / tag).exists():  # a partial write of a crashed run: none of its files may stay
            shutil.rmtree(root / tag)
        refusal[0] = make_room(root, step)
    dist.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        raise DiskFull(refusal[0])
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
        inject.kill_point("checkpoint_files", step, rank)
        torch.save(rng_state(), root / tag / f"rng-rank{rank}.pt")
        dist.barrier()
        if rank == 0:
            atomic_write(root / tag / MANIFEST, json.dumps(manifest(root / tag), indent=1) + "\n", fsync=True)
    except (OSError, RuntimeError) as err:
        if not out_of_space(err):
            raise
        shutil.rmtree(root / tag, ignore_errors=True)  # without its manifest it is never read anyway
        raise DiskFull(
            f"{root}: the disk filled up while writing checkpoint {tag} ({err}); the checkpoint before it "
            f"is intact: free space and relaunch the same command",
            local=True,
        ) from None
    if rank == 0:
        inject.kill_point("checkpoint_written", step, rank)
        atomic_write(root / LATEST, tag, fsync=True)
        inject.kill_point("latest", step, rank)
        prune(root, tag, keep=KEEP)
    dist.barrier()


class DiskFull(ConfigError):
    """No room for a checkpoint (one line naming the directory, the need and the free space)."""

    def __init__(self, message: str, local: bool = False):
        super().__init__(message)
        self.local = local  # raised on this rank alone (a write failed here), not agreed by every rank


def out_of_space(err: BaseException) -> bool:
    """ENOSPC, as an OSError or as torch's serialiser reports it (RuntimeError "... unexpected pos ...")."""
    return getattr(err, "errno", None) == errno.ENOSPC or "unexpected pos" in str(err) or "No space left" in str(err)


def free_bytes(path: Path) -> int:
    if inject.disk_full():
        return 0
    return shutil.disk_usage(path).free


def make_room(root: Path, step: int) -> str | None:
    """Before checkpoint `step` is written: room for one more checkpoint of the newest one's size (its manifest's
    bytes). Where there is too little, the oldest kept tag but `latest`'s goes first, when that makes room. -> None
    when there is room, else why not, in one line."""
    root.mkdir(parents=True, exist_ok=True)
    named, kept = latest_tag(root.parent), [tag for tag in tags(root.parent) if tag < tag_for(step)]
    if not kept:
        return None  # the first checkpoint: no size to go by
    need, free = checkpoint_bytes(root / (named or kept[0])), free_bytes(root)
    if free >= need:
        return None
    spare = [tag for tag in reversed(kept) if tag != named]  # oldest first; never the one `latest` names
    sizes = [checkpoint_bytes(root / tag) for tag in spare]
    for count in range(1, len(spare) + 1):
        if free + sum(sizes[:count]) >= need:  # pruning the `count` oldest makes room: do it now, not after
            for tag in spare[:count]:
                shutil.rmtree(root / tag, ignore_errors=True)
            print(
                f"warning: {root}: removed {', '.join(spare[:count])} before its time to make room for {tag_for(step)}",
                file=sys.stderr,
                flush=True,
            )
            return None
    return (
        f"{root}: no room for checkpoint {tag_for(step)}: it needs about {need / 2**20:.1f} MiB (the size of the "
        f"last one), {free / 2**20:.1f} MiB are free; free space and relaunch the same command (it resumes from "
        f"{named or kept[0]})"
    )


def checkpoint_bytes(tag_dir: Path) -> int:
    try:
        return sum(entry["bytes"] for entry in json.loads((tag_dir / MANIFEST).read_text()).values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return sum(p.stat().st_size for p in tag_dir.iterdir() if p.is_file()) if tag_dir.is_dir() else 0


def prune(root: Path, latest: str, keep: int) -> None:
    """Deletes the tags older than the `keep` newest up to and including `latest` (by step, not file time)."""
    older = sorted(p.name for p in root.iterdir() if p.is_dir() and TAG.fullmatch(p.name) and p.name < latest)
    for name in older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(root / name, ignore_errors=True)


def manifest(tag_dir: Path) -> dict:
    """{file name: {"bytes", "sha256"}} for every file of a tag but the manifest (DeepSpeed writes no subfolders)."""
    files = {}
    for path in sorted(tag_dir.iterdir()):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files[path.name] = {"bytes": path.stat().st_size, "sha256": digest}
    return files


def damage(tag_dir: Path) -> str | None:
    """Why the checkpoint `tag_dir` cannot be trusted (its first mismatch with the manifest), or None when intact."""
    if not tag_dir.is_dir():
        return "its directory is missing"
    try:
        expected = json.loads((tag_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} (a write that did not finish)"
    except (OSError, ValueError) as err:
        return f"{MANIFEST} unreadable ({err})"
    if not isinstance(expected, dict) or not expected:
        return f"{MANIFEST} lists no files"
    for name, want in expected.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {want['bytes']}"
    found = manifest(tag_dir)
    for name, want in expected.items():
        if found[name]["sha256"] != want["sha256"]:
            return f"{name} differs from its checksum"
    return None


def latest_tag(run_dir: Path) -> str | None:
    """The tag `latest` names, or None where `latest` is missing or holds no tag name."""
    path = run_dir / "checkpoints" / LATEST
    try:
        text = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if TAG.fullmatch(text) else None


def tags(run_dir: Path) -> list[str]:
    """Every tag directory's name, newest first."""
    root = run_dir / "checkpoints"
    names = [p.name for p in root.iterdir() if p.is_dir() and TAG.fullmatch(p.name)] if root.is_dir() else []
    return sorted(names, reverse=True)


def choose(run_dir: Path) -> tuple[str | None, list[str]]:
    """-> (the tag to resume from or None, notes saying what was passed over and why): `latest`'s tag when intact,
    else the newest intact tag (before `latest`'s when it names one)."""
    root, notes = run_dir / "checkpoints", []
    named = latest_tag(run_dir)
    if named is not None:
        why = damage(root / named)
        if why is None:
            return named, notes
        notes.append(f"checkpoint {root / named} (named by {root / LATEST}) is damaged: {why}")
    elif (root / LATEST).exists():
        notes.append(f"{root / LATEST} names no checkpoint")
    elif tags(run_dir):
        notes.append(f"{root / LATEST} is missing")
    for tag in tags(run_dir):
        if named is not None and tag >= named:
            continue
        why = damage(root / tag)
        if why is None:
            return tag, notes
        notes.append(f"checkpoint {root / tag} is damaged: {why}")
    return None, notes


def resume_tag(run_dir: Path, restart: bool) -> str | None:
    """The tag a launch resumes from, chosen by rank 0 and told to every rank; notes printed by rank 0. Raises
    UnusableRun (on every rank) for a directory that logged steps or holds checkpoints and has no intact checkpoint,
    unless `restart`."""
    choice: list = [None, None]
    if dist.get_rank() == 0:
        tag, notes = (None, []) if restart else choose(run_dir)
        if tag is not None and notes:
            print(
                f"warning: {'; '.join(notes)}: resuming from {run_dir / 'checkpoints' / tag}",
                file=sys.stderr,
                flush=True,
            )
        elif tag is None and not restart and (logged_steps(run_dir) or notes):  # never silently from step 1
            why = f" ({'; '.join(notes)})" if notes else ""
            choice[1] = (
                f"{run_dir} holds a run ({logged_steps(run_dir)} logged steps) but no intact checkpoint"
                f"{why}; set train.restart=true to start it afresh (its logs and checkpoints are replaced), "
                f"or choose another train.output_dir"
            )
        choice[0] = tag
    dist.broadcast_object_list(choice, src=0)
    if choice[1] is not None:
        raise UnusableRun(choice[1])
    return choice[0]


def discard(run_dir: Path) -> None:
    """train.restart: the run's checkpoints go (its logs are cut back to nothing when training starts)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def logged_steps(run_dir: Path) -> int:
    """The number of logging lines in metrics.jsonl (0 when none)."""
    path = run_dir / "metrics.jsonl"
    try:
        return sum(1 for text in path.read_text(errors="replace").splitlines() if '"event"' not in text and text)
    except OSError:
        return 0


def load(engine, run_dir: Path, tag: str | None) -> dict | None:
    """Restores checkpoint `tag` (`resume_tag`'s choice) into `engine` and this rank's RNG; -> its client state, or
    None for no tag."""
    if tag is None:
        return None
    root = run_dir / "checkpoints"
    path, client_state = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"{root / tag}: DeepSpeed could not load the checkpoint")
    set_rng_state(torch.load(root / tag / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    return client_state
