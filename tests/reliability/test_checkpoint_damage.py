"""Checkpoints you can trust: every kind of damage to the newest checkpoint is named and the newest intact one is
used instead, by a relaunch and by `mavil.engine.export`; a run directory with logs and no intact checkpoint is
refused, never overwritten.

One two-rank run of 4 steps with a checkpoint after every step (steps 3 and 4 are kept); each case damages a copy
of its run directory. The choice is checked in-process for every kind of damage; two kinds are relaunched for real
(4 steps again from step 3) and must end on the run's own final weights bit for bit. A full disk: a relaunch to 6
steps whose free-space check sees nothing free (MAVIL_INJECT disk_full) refuses checkpoint 5 in one line, leaving
checkpoint 4 as it was, and the same command with room resumes from 4; the check's pruning and the logs' rewind on
a full disk are checked in-process.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mavil.engine import checkpoint
from mavil.engine.checkpoint import LATEST, MANIFEST, choose, latest_tag, manifest, tag_for
from mavil.engine.export import export
from mavil.engine.metrics import rewind
from mavil.model import read_weights

from ..conftest import REPO
from ..engine.launcher import command, launch

OVERRIDES = ("train.micro_batch=4", "train.max_steps=4", "train.checkpoint_every=1")


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {  # name: (what is done to checkpoints/, the words the note must hold)
    "model truncated": (lambda c: truncate(c / tag_for(4) / "mp_rank_00_model_states.pt"), "mp_rank_00_model_states"),
    "optimizer emptied": (
        lambda c: (c / tag_for(4) / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b""),
        "zero_pp_rank_1_mp_rank_00_optim_states.pt has 0 bytes",
    ),
    "rng changed": (lambda c: flip_byte(c / tag_for(4) / "rng-rank0.pt"), "rng-rank0.pt differs from its checksum"),
    "manifest gone": (lambda c: (c / tag_for(4) / MANIFEST).unlink(), f"no {MANIFEST}"),
    "tag deleted": (lambda c: shutil.rmtree(c / tag_for(4)), "its directory is missing"),
    "latest junk": (lambda c: (c / LATEST).write_bytes(b"\xff\xfe\x00junk"), "names no checkpoint"),
    "latest deleted": (lambda c: (c / LATEST).unlink(), "is missing"),
    "none": (lambda c: None, ""),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("damage"), "run", *OVERRIDES)


def damaged(run, tmp_path, kind):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    DAMAGE[kind][0](copy / "checkpoints")
    (copy / "model.safetensors").unlink()
    return copy


@pytest.mark.parametrize("kind", [kind for kind in DAMAGE if kind != "none"])
def test_damage_is_named_and_the_newest_intact_checkpoint_chosen(run, tmp_path, kind):
    copy = damaged(run, tmp_path, kind)
    tag, notes = choose(copy)
    expected = tag_for(4) if kind.startswith("latest") else tag_for(3)  # `latest` gone: step 4 is intact
    assert tag == expected and DAMAGE[kind][1] in "; ".join(notes), notes
    if kind == "model truncated":  # export takes the same verified path
        out = export(copy, tmp_path / "exported.safetensors")
        assert read_weights(out)[0].keys() == read_weights(run / "model.safetensors")[0].keys()


@pytest.mark.parametrize("kind", ["model truncated", "latest deleted"])
def test_a_relaunch_resumes_from_the_newest_intact_checkpoint(run, tmp_path, kind):
    copy = damaged(run, tmp_path, kind)
    argv, env = command(tmp_path, "copy", *OVERRIDES)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert DAMAGE[kind][1] in output and "resuming from" in output, output[-3000:]
    ours, theirs = read_weights(copy / "model.safetensors")[0], read_weights(run / "model.safetensors")[0]
    assert [name for name in ours if not ours[name].equal(theirs[name])] == []


def test_logs_without_an_intact_checkpoint_are_refused_not_overwritten(run, tmp_path):
    copy = damaged(run, tmp_path, "latest deleted")
    for tag in (3, 4):
        truncate(copy / "checkpoints" / tag_for(tag) / "mp_rank_00_model_states.pt")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != "run.lock"}
    argv, env = command(tmp_path, "copy", *OVERRIDES)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "no intact checkpoint" in output and "train.restart=true" in output and "Traceback" not in output
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and p.name != "run.lock"} == before


def test_a_full_disk_is_one_line_and_a_relaunch_with_room_resumes(run, tmp_path):
    copy = damaged(run, tmp_path, "none")
    shutil.rmtree(copy / "checkpoints" / tag_for(3))  # nothing to prune: only the checkpoint `latest` names
    longer = (*OVERRIDES[:-2], "train.max_steps=6", "train.checkpoint_every=1")
    argv, env = command(tmp_path, "copy", *longer)
    full = subprocess.run(
        argv, cwd=REPO, env={**env, "MAVIL_INJECT": "disk_full:step=0"}, capture_output=True, text=True, timeout=600
    )
    output = full.stdout + full.stderr
    errors = [line[line.index("error:") :] for line in output.splitlines() if "error:" in line]  # after tqdm's \r
    assert full.returncode == 2 and len(errors) == 1 and "no room for checkpoint step00000005" in errors[0], output
    assert "MiB are free" in errors[0] and "Traceback" not in output
    assert latest_tag(copy) == tag_for(4) and choose(copy) == (tag_for(4), [])  # the previous one intact
    assert not (copy / "checkpoints" / tag_for(5)).exists()  # nothing partial

    again = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming at step 4" in again.stdout + again.stderr, again.stderr[-3000:]
    assert latest_tag(copy) == tag_for(6)


def write_tag(root, step, size):
    (root / tag_for(step)).mkdir(parents=True)
    (root / tag_for(step) / "model.pt").write_bytes(b"x" * size)
    (root / tag_for(step) / MANIFEST).write_text(json.dumps(manifest(root / tag_for(step))))


@pytest.mark.parametrize("free, removed, refused", [(150, [], False), (60, [3], False), (10, [], True)])
def test_room_is_made_from_the_oldest_checkpoint_only_where_that_suffices(
    tmp_path, monkeypatch, free, removed, refused
):
    root = tmp_path / "checkpoints"
    write_tag(root, 3, 40)  # an older, smaller one: pruning it frees 40 of the 100 bytes needed
    write_tag(root, 4, 100)
    (root / LATEST).write_text(tag_for(4))
    monkeypatch.setattr(checkpoint, "free_bytes", lambda path: free)
    why = checkpoint.make_room(root, 5)
    assert (why is not None) == refused
    if refused:
        assert str(root) in why and "needs about" in why and f"{free / 2**20:.1f} MiB are free" in why
    assert sorted(p.name for p in root.iterdir()) == [LATEST] + [tag_for(s) for s in (3, 4) if s not in removed]


def test_cutting_the_logs_back_on_a_full_disk_is_one_line_and_leaves_them_intact(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    rewind(path, lambda line: True)  # nothing to cut: nothing written
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".partial"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(checkpoint.DiskFull, match="no room to cut metrics.jsonl"):
        rewind(path, lambda line: line["step"] <= 1)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
