"""Data faults: a shard set with real broken clips (faults.py) through the health check, the DALI loader, the
reference loader, evaluation and a DeepSpeed run. Bad clips are skipped and counted per kind, repairs are real
(not zeros), every good clip is read once per epoch, and a set above the ceiling is refused before training."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch

from mavil.config import ConfigError
from mavil.data.health import REPORT, UNUSABLE_KINDS, Bad, UnusableData, Windows, check_meta, ensure_health
from mavil.data.pipeline import IMAGENET_STD, ClipIndex, Loader, LoaderSpec
from mavil.data.reference import audio_features, decode_audio, reference_loader
from mavil.data.shards import encode_meta, index_members, read_index, read_manifest
from mavil.data.synthetic import make_clip
from mavil.engine.evaluate import evaluate
from mavil.engine.run import plan_finetuning
from mavil.model.classifier import Classifier

from ..conftest import REPO, tiny_config
from ..engine.launcher import launch, metrics
from .faults import (
    CLASSES,
    DURATION,
    LAYOUT,
    REPAIRED,
    SEED,
    UNUSABLE,
    FaultSet,
    build_fault_set,
    build_rejected_set,
    build_verified_fault_set,
)

TINY = Windows(sample_rate=16000, audio_frames=384, video_frames=4)  # configs/tiny's windows
TINY_REPAIRS = {"audio_resampled": 1, "audio_downmixed": 1, "short_audio": 1, "short_video": 0}
CEILING_MESSAGE = (
    "{root}: 5 of 21 clips (23.8%) are unusable (missing_audio 1, truncated 1, video_empty 1, "
    "video_undecodable 1, audio_empty 1), above data.max_bad_fraction=0.05; the report is {root}/health.json"
)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> FaultSet:
    return build_fault_set(tmp_path_factory.mktemp("faults") / "set")


def fresh_copy(faults: FaultSet, target) -> os.PathLike:
    """The fault set's shards without any health report."""
    return shutil.copytree(faults.root, target, ignore=shutil.ignore_patterns("health*"))


def test_health_counts_each_kind_and_names_the_clips(faults):
    health = ensure_health(faults.root, progress=False)
    assert (health.clips, health.usable) == (len(LAYOUT), len(faults.good)) == (21, 16)
    assert health.unusable_counts() == {**dict.fromkeys(UNUSABLE_KINDS, 0), **Counter(UNUSABLE.values())}
    assert {clip["key"]: clip["kind"] for shard in health.shards for clip in shard.bad} == UNUSABLE
    tally = health.tally(TINY)
    assert tally.repaired == TINY_REPAIRS and tally.repaired_clips == len(REPAIRED)
    assert health.tally(Windows(16000, 384, 8)).repaired["short_video"] == 1  # the 2-s clip: 4 frames of 8
    assert tally.fields() == {
        "data_clips": 21,
        "data_used": 16,
        "data_skipped": 5,
        "data_repaired": 2,
        **{f"data_{kind}": 1 for kind in UNUSABLE.values()},
        **{f"data_{kind}": n for kind, n in TINY_REPAIRS.items() if n},
    }
    listed = [
        index_members(line)["json"][2].removesuffix(".json")
        for _, index in health.usable_shards()
        for line in read_index(index)
    ]
    assert listed == faults.good  # the index files DALI reads list exactly the usable clips, in order


def test_the_report_is_reused_until_a_shard_changes(faults, tmp_path, capsys):
    root = fresh_copy(faults, tmp_path / "set")
    ensure_health(root)
    assert "21/21" in capsys.readouterr().err  # every clip checked once
    report = (root / REPORT).read_bytes()
    assert ensure_health(root).usable == 16
    assert capsys.readouterr().err == "" and (root / REPORT).read_bytes() == report  # nothing checked again
    tar = root / "shard-000001.tar"
    os.utime(tar, ns=(tar.stat().st_atime_ns, tar.stat().st_mtime_ns + 10**9))
    assert ensure_health(root).usable == 16
    assert "8/8" in capsys.readouterr().err  # only the changed shard's 8 clips


def test_a_dataset_directory_without_room_for_the_report_reports_into_the_cache(faults, tmp_path, monkeypatch):
    root = fresh_copy(faults, tmp_path / "set")
    (root / REPORT).mkdir()  # the report cannot be written there (permissions would not stop root)
    monkeypatch.setenv("MAVIL_CACHE", str(tmp_path / "cache"))
    health = ensure_health(root, progress=False)
    assert health.report.is_relative_to(tmp_path / "cache" / "health") and health.report.is_file()
    assert health.usable == 16 and all(index.is_relative_to(tmp_path / "cache") for _, index in health.usable_shards())
    assert ensure_health(root, progress=False).report == health.report


@pytest.mark.parametrize(
    "raw, why",
    [
        (encode_meta({"key": "a", "labels": [CLASSES]}), f"labels [{CLASSES}] are not class indices below {CLASSES}"),
        (encode_meta({"labels": [0]}), "not a JSON object with a key"),
        (b"{".ljust(1024), "Expecting property name"),
        (b'{"key": "a"}', "12 bytes, not the shard format's 1024"),
    ],
    ids=["label", "key", "json", "size"],
)
def test_metadata_the_loaders_cannot_batch_is_unusable(raw, why):
    check_meta(encode_meta({"key": "a", "labels": [CLASSES - 1]}), CLASSES)  # what is fine passes
    with pytest.raises(Bad) as bad:
        check_meta(raw, CLASSES)
    assert bad.value.args[0] == "meta_undecodable" and why in bad.value.args[1]


def test_the_ceiling_refuses_a_set_with_too_many_bad_clips(faults):
    health = ensure_health(faults.root, progress=False)
    health.check_ceiling(0.3)  # 5 of 21 = 23.8%: under
    with pytest.raises(UnusableData) as refused:
        health.check_ceiling(0.05)
    assert str(refused.value) == CEILING_MESSAGE.format(root=faults.root)
    with pytest.raises(ConfigError, match=r"data.max_bad_fraction = 1.5: must be in \[0, 1\]"):
        tiny_config("data.max_bad_fraction=1.5")


def keys_per_epoch(root, rank: int, world: int, epochs: int = 2) -> list[list[str]]:
    """This rank's keys per epoch; every sample's audio and video checked to vary (no constant stand-in)."""
    spec = LoaderSpec(batch_size=3, audio_frames=64, video_frames=2, video_size=32, shuffle_buffer=16)
    loader = Loader(root, spec, rank=rank, world_size=world, seed=0, device="cpu")
    seen = []
    for _ in range(epochs):
        seen.append([])
        for batch in loader:
            assert (
                batch["audio"].flatten(1).std(dim=1).min() > 0.05 and batch["video"].flatten(1).std(dim=1).min() > 0.05
            )
            seen[-1] += batch["key"]
    return seen


def test_the_dali_loader_reads_every_good_clip_once_per_epoch_and_no_bad_one(faults):
    for epoch in keys_per_epoch(faults.root, 0, 1):
        assert sorted(epoch) == sorted(faults.good)
    ranks = [keys_per_epoch(faults.root, rank, 2) for rank in (0, 1)]
    for epoch in range(2):
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == sorted(faults.good)


def test_clip_numbers_count_the_usable_clips(faults):
    index = ClipIndex(ensure_health(faults.root, progress=False).usable_shards())
    assert [index.meta(clip)["key"] for clip in range(len(index))] == faults.good
    order = [faults.good.index("fix-8khz-stereo"), 15, 0, 15]  # e.g. weighted draws
    spec = LoaderSpec(batch_size=2, audio_frames=64, video_frames=2, video_size=32)
    loader = Loader(faults.root, spec, device="cpu", clips=order)
    assert [key for batch in loader for key in batch["key"]] == [faults.good[clip] for clip in order]


def log_mel(features: torch.Tensor, spec: LoaderSpec) -> torch.Tensor:
    """Normalised (1, F, mel) features -> log-mel."""
    return features[0] * 2 * spec.audio_std + spec.audio_mean


def bins_below(hz: float, spec: LoaderSpec) -> int:
    """How many of the Kaldi mel bins lie wholly below `hz` (triangles from 20 Hz to Nyquist, even in mel)."""
    mel = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    step = (mel(spec.sample_rate / 2) - mel(20)) / (spec.mel_bins + 1)
    return int((mel(hz) - mel(20)) / step) - 1


def test_repaired_clips_equal_the_reference_loaders_and_are_real(faults):
    spec = LoaderSpec(batch_size=4, audio_frames=384, mel_bins=64, video_frames=8, video_size=256, train=False)
    ours = {
        k: (a, v) for b in Loader(faults.root, spec, device="cpu") for k, a, v in zip(b["key"], b["audio"], b["video"])
    }
    theirs = {
        k: (a, v) for b in reference_loader(faults.root, spec) for k, a, v in zip(b["key"], b["audio"], b["video"])
    }
    assert sorted(ours) == sorted(theirs) == sorted(faults.good)
    below_4khz = bins_below(4000, spec)  # above it, 8-kHz audio holds only the resampler's leakage
    for key in REPAIRED:
        diff = (log_mel(ours[key][0], spec) - log_mel(theirs[key][0], spec)).abs()  # (F, mel)
        assert diff[:, :below_4khz].max() <= 2e-3 and diff.mean() <= 5e-3, (key, diff.max(), diff.mean())
        pixel_diff = ((ours[key][1] - theirs[key][1]) * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255).abs()
        assert pixel_diff.mean() < 1.0 and pixel_diff.max() <= 6, (key, pixel_diff.mean(), pixel_diff.max())
    # the 8-kHz stereo clip is the source clip's audio (left) and half of it (right): its repair, the average of the
    # two resampled to 16 kHz, must be the source at 0.75 amplitude, 2 ln 0.75 in log-mel where the 8 kHz reaches
    _, _, source, _ = make_clip(LAYOUT.index("fix-8khz-stereo"), CLASSES, SEED, DURATION)
    original = audio_features(decode_audio(source), spec)
    below_3khz = bins_below(3000, spec)
    gap = (log_mel(ours["fix-8khz-stereo"][0], spec) - log_mel(original, spec))[:, :below_3khz]
    assert abs(gap.median().item() - 2 * math.log(0.75)) < 0.01 and gap.std() < 0.02, (gap.median(), gap.std())


def test_evaluation_reports_the_skipped_clips(faults):
    plan = plan_finetuning(
        tiny_config("data.max_bad_fraction=0.3", "finetune.mode=audio", f"finetune.eval_root={faults.root}"), 1
    )
    torch.manual_seed(0)
    model = Classifier(plan.cfg.model, "audio", CLASSES)
    scores = evaluate(model, plan, plan.eval_set.open(), torch.device("cpu"))
    assert scores["clips"] == 16 and scores["data_skipped"] == 5 and scores["data_truncated"] == 1
    assert scores["data_audio_resampled"] == 1 and scores["data_repaired"] == 2


def test_a_deepspeed_run_over_the_fault_set_uses_every_good_clip_once_per_epoch(faults, tmp_path):
    # 16 good clips, 2 ranks x 2 micro-batches of 4 per epoch: no clip left out at the epoch end
    run_dir = launch(
        tmp_path,
        "faults",
        f"data.root={faults.root}",
        "data.max_bad_fraction=0.3",
        "train.record_keys=true",
        "train.micro_batch=4",
        "train.global_batch=8",
        "train.epochs=2",
        "train.checkpoint_every=0",
    )
    records = [
        json.loads(line) for rank in (0, 1) for line in (run_dir / f"keys-rank{rank}.jsonl").read_text().splitlines()
    ]
    for epoch in (0, 1):
        used = Counter(key for record in records if record["epoch"] == epoch for key in record["keys"])
        assert used == Counter(faults.good), epoch
    events = metrics(run_dir, "data_health")
    assert [(line["step"], line["epoch"]) for line in events] == [(2, 1), (4, 2)]
    for line in events:
        assert line["data_skipped"] == 5 and line["data_repaired"] == 2 and line["data_used"] == 16
        assert all(line[f"data_{kind}"] == 1 for kind in UNUSABLE.values()), line
        assert line["data_audio_resampled"] == line["data_audio_downmixed"] == line["data_short_audio"] == 1
    output = (tmp_path / "faults.log").read_text()
    summary = (
        "16 of 21 clips used, "
        "5 skipped (missing_audio 1, truncated 1, video_empty 1, video_undecodable 1, audio_empty 1), "
        "2 repaired (audio_resampled 1, audio_downmixed 1, short_audio 1)"
    )
    assert f"data: {faults.root}: {summary}" in output
    assert "epoch 1: step 4, " in output and f"; data: {summary}" in output


def test_a_set_above_the_ceiling_is_refused_before_training(faults, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "engine/pretrain.py",
            "--config",
            "configs/tiny/stage1.json",
            f"data.root={faults.root}",
            f"train.output_dir={run_dir}",
        ],
        cwd=REPO,
        env={**os.environ, "MAVIL_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {CEILING_MESSAGE.format(root=faults.root)}" in result.stderr
    assert not run_dir.exists()  # nothing built, nothing written


def test_clips_broken_after_prepare_recorded_them_are_decoded_not_trusted(faults, tmp_path):
    verified = build_verified_fault_set(tmp_path / "verified")
    assert all("verified" in shard for shard in read_manifest(verified.root)["shards"])
    health, classic = ensure_health(verified.root, progress=False), ensure_health(faults.root, progress=False)
    assert {clip["key"]: clip["kind"] for shard in health.shards for clip in shard.bad} == UNUSABLE
    assert [shard.usable for shard in health.shards] == [shard.usable for shard in classic.shards]
    assert health.tally(TINY) == classic.tally(TINY)
    assert [shard.decoded for shard in health.shards] == [2, 2, 1]  # the broken clips only: the rest from the record


def test_a_deepspeed_run_leaves_out_a_clip_dali_rejects_and_uses_every_other_once_per_epoch(tmp_path):
    # 16 clips, one H.264 (the health check accepts it, a CPU DALI pipeline rejects it); 2 ranks x 2 micro-batches of
    # 4 per epoch: in epoch 0 its batch goes on with 3 clips, in epoch 1 the loaders split the 15 left (8 and 7), and
    # the ranks train the whole micro-batches both have: one each (the 7-clip part's tail of 3 is left out)
    rejected = build_rejected_set(tmp_path / "set")
    run_dir = launch(
        tmp_path,
        "rejected",
        f"data.root={rejected.root}",
        "train.record_keys=true",
        "train.micro_batch=4",
        "train.global_batch=8",
        "train.epochs=2",
        "train.checkpoint_every=0",
    )
    records = [
        json.loads(line) for rank in (0, 1) for line in (run_dir / f"keys-rank{rank}.jsonl").read_text().splitlines()
    ]
    used = Counter(key for record in records if record["epoch"] == 0 for key in record["keys"])
    assert used == Counter(rejected.good)
    assert len([record for record in records if record["epoch"] == 0]) == 4  # 2 per rank, as announced
    second = [record["keys"] for record in records if record["epoch"] == 1]
    assert [len(keys) for keys in second] == [4, 4]
    assert len({key for keys in second for key in keys}) == 8 and {key for keys in second for key in keys} <= set(
        rejected.good
    )
    events = metrics(run_dir, "data_health")
    assert [line["data_decode_failed_in_pipeline"] for line in events] == [1, 1]
    assert all(line["data_used"] == 15 and line["data_skipped"] == 1 for line in events)
    output = (tmp_path / "rejected.log").read_text()
    assert f"DALI failed to decode clip {rejected.bad[0]}" in output
    assert "15 of 16 clips used, 1 skipped (decode_failed_in_pipeline 1)" in output
