"""Checkpoints you can trust: every kind of damage to the newest checkpoint is named and the newest intact one is
used instead, by a relaunch and by `mavil.engine.export`; a run directory with logs and no intact checkpoint is
refused, never overwritten.

One two-rank run of 4 steps with a checkpoint after every step (steps 3 and 4 are kept); each case damages a copy
of its run directory. The choice is checked in-process for every kind of damage; two kinds are relaunched for real
(4 steps again from step 3) and must end on the run's own final weights bit for bit.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from mavil.engine.checkpoint import LATEST, MANIFEST, choose, tag_for
from mavil.engine.export import export
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
    "optimizer emptied": (lambda c: (c / tag_for(4) / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b""),
                          "zero_pp_rank_1_mp_rank_00_optim_states.pt has 0 bytes"),
    "rng changed": (lambda c: flip_byte(c / tag_for(4) / "rng-rank0.pt"), "rng-rank0.pt differs from its checksum"),
    "manifest gone": (lambda c: (c / tag_for(4) / MANIFEST).unlink(), f"no {MANIFEST}"),
    "tag deleted": (lambda c: shutil.rmtree(c / tag_for(4)), "its directory is missing"),
    "latest junk": (lambda c: (c / LATEST).write_bytes(b"\xff\xfe\x00junk"), "names no checkpoint"),
    "latest deleted": (lambda c: (c / LATEST).unlink(), "is missing"),
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


@pytest.mark.parametrize("kind", DAMAGE)
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
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    argv, env = command(tmp_path, "copy", *OVERRIDES)
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "no intact checkpoint" in output and "train.restart=true" in output and "Traceback" not in output
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
