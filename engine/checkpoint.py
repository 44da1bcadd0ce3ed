"""Checkpoints that a crash never leaves half-visible, and the consolidated export.

Layout under the run directory:
    checkpoints/<tag>/...            DeepSpeed's own sharded state (model, optimizer), our client state
    checkpoints/<tag>/rng-rank<r>.pt each rank's RNG states (masking draws differ per rank)
    checkpoints/latest               the newest complete tag, replaced atomically after every rank finished
    model.safetensors                the consolidated fp32 model, its config in the metadata (export)

A checkpoint becomes the one resumed from only when `latest` names it, and `latest` is renamed into
place after a barrier that every rank reaches once its files are written, so a crash mid-write
leaves the previous checkpoint in charge. The two newest checkpoints are kept.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"
KEEP = 2


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


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def save(engine, run_dir: Path, tag: str, client_state: dict) -> None:
    """Every rank calls this at the same optimizer step."""
    root = run_dir / "checkpoints"
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rng_state(), root / tag / f"rng-rank{dist.get_rank()}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        write_atomically(root / LATEST, tag)
        prune(root, keep=KEEP)
    dist.barrier()


def prune(root: Path, keep: int) -> None:
    """Deletes all but the `keep` newest complete checkpoints (newest by modification time)."""
    tags = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_tag(run_dir: Path) -> str | None:
    path = run_dir / "checkpoints" / LATEST
    return path.read_text().strip() if path.is_file() else None


def load_latest(engine, run_dir: Path) -> dict | None:
    """Restores the newest complete checkpoint into `engine` and this rank's RNG; -> its client state, or None."""
    tag = latest_tag(run_dir)
    if tag is None:
        return None
    root = run_dir / "checkpoints"
    path, client_state = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"{root / tag}: DeepSpeed could not load the checkpoint that {root / LATEST} names")
    set_rng_state(torch.load(root / tag / f"rng-rank{dist.get_rank()}.pt", weights_only=False))
    return client_state
