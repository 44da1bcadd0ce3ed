"""A clip that the health check accepts (PyAV decodes it) and DALI's pipeline rejects: H.264, which DALI's CPU video
decoder cannot read. Its batch is decoded again without it, it is counted as decode_failed_in_pipeline and left out
of later epochs and checks, every other clip is still read once per epoch, and the batch count holds."""

from __future__ import annotations

from collections import Counter

import pytest

from mavil.data.encode import encode_audio, encode_video
from mavil.data.health import PIPELINE_KIND, Windows, ensure_health
from mavil.data.pipeline import Loader, LoaderSpec
from mavil.data.shards import ShardWriter, write_manifest

from ..reliability.faults import encode_h264
from .test_pipeline import moving_square, noise_and_tone

REJECTED = "clip003"
KEYS = [f"clip{i:03d}" for i in range(7)]
GOOD = [key for key in KEYS if key != REJECTED]


@pytest.fixture()
def rejected_set(tmp_path):
    """7 clips in shards of 4; clip003 is H.264."""
    writer = ShardWriter(tmp_path, 4)
    for i, key in enumerate(KEYS):
        video = moving_square(8, i)
        data, ext = (encode_h264(video), "mp4") if key == REJECTED else (encode_video(video), "webm")
        writer.add(
            key,
            data,
            ext,
            encode_audio(noise_and_tone(3.0, i)),
            {"labels": [i % 3], "duration": 4.0, "frames": 8, "source": "test"},
        )
    write_manifest(tmp_path, writer.close(), ["a", "b", "c"], {}, [])
    return tmp_path


SPEC = LoaderSpec(batch_size=2, audio_frames=64, video_frames=4, video_size=32, shuffle_buffer=4)


def test_the_health_check_accepts_the_clip_that_the_pipeline_rejects(rejected_set):
    assert ensure_health(rejected_set, progress=False).usable == 7


def test_a_rejected_clip_leaves_its_batch_and_later_epochs_every_other_clip_read_once(rejected_set, capsys):
    health = ensure_health(rejected_set, progress=False)
    loader = Loader(rejected_set, SPEC, device="cpu", health=health)
    assert len(loader) == 4
    for epoch in range(2):
        batches = [batch["key"] for batch in loader]
        assert len(batches) == 4, epoch  # the batch count announced, whatever was dropped
        assert Counter(key for batch in batches for key in batch) == Counter(GOOD), epoch
        assert sorted(map(len, batches)) == [1, 1, 2, 2], epoch  # 7 clips: 2 2 2 1; one batch lost the H.264 clip
    assert "DALI failed to decode clip clip003" in capsys.readouterr().err
    tally = health.tally(Windows(16000, 64, 4))
    assert tally.unusable[PIPELINE_KIND] == 1 and tally.usable == 6 and tally.fields()[f"data_{PIPELINE_KIND}"] == 1
    again = ensure_health(rejected_set, progress=False)  # the next run's check: unusable from the start
    assert again.usable == 6 and again.unusable_counts()[PIPELINE_KIND] == 1
    assert [clip["key"] for shard in again.shards for clip in shard.bad] == [REJECTED]
    assert sorted(key for batch in Loader(rejected_set, SPEC, device="cpu") for key in batch["key"]) == GOOD


def test_two_ranks_drop_it_once_and_keep_their_batch_counts(rejected_set):
    health = ensure_health(rejected_set, progress=False)
    loaders = [Loader(rejected_set, SPEC, rank=rank, world_size=2, device="cpu", health=health) for rank in (0, 1)]
    seen = [[batch["key"] for batch in loader] for loader in loaders]
    assert [len(batches) for batches in seen] == [len(loader) for loader in loaders] == [2, 2]
    assert sorted(key for batches in seen for batch in batches for key in batch) == GOOD
    # the next epoch's loaders (the engine makes one per epoch) split the clips left, rank by rank alike
    later = [
        [
            key
            for batch in Loader(rejected_set, SPEC, rank=rank, world_size=2, device="cpu", health=health)
            for key in batch["key"]
        ]
        for rank in (1, 0)
    ]
    assert sorted(later[0] + later[1]) == GOOD


def test_given_clips_lose_the_rejected_one_found_by_decoding_each_alone(rejected_set):
    health = ensure_health(rejected_set, progress=False)
    order = [0, 3, 3, 3, 5, 1]  # clip numbers: 3 is the H.264 clip; a batch of it alone is replaced by a neighbour
    batches = [batch["key"] for batch in Loader(rejected_set, SPEC, device="cpu", clips=order, health=health)]
    assert batches == [["clip000"], ["clip000"], ["clip005", "clip001"]]
    assert health.tally(Windows(16000, 64, 4)).unusable[PIPELINE_KIND] == 1
