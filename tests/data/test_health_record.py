"""The health check of shards that prepare or synthetic wrote reads what they verified instead of decoding again;
foreign shards (no record) are decoded as before, with the same verdicts."""

from __future__ import annotations

import json
import shutil

from mavil.data import prepare
from mavil.data.health import ensure_health, main
from mavil.data.shards import MANIFEST, read_manifest
from mavil.data.synthetic import generate

from .test_prepare_scale import small_clip


def without_records(root, target):
    """A copy of a shard set whose manifest names no sidecar: a foreign set, as other tools write them."""
    shutil.copytree(root, target, ignore=shutil.ignore_patterns("health*", "*.verified.json"))
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["shards"] = [{k: v for k, v in shard.items() if k != "verified"} for shard in manifest["shards"]]
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def test_a_synthetic_set_is_checked_from_its_record_as_decoding_would(tmp_path, capsys):
    generate(tmp_path / "set", clips=5, classes=3, seed=1, duration=2, clips_per_shard=2, workers=1, progress=False)
    assert [shard["verified"] for shard in read_manifest(tmp_path / "set")["shards"]] == [
        f"shard-{n:06d}.verified.json" for n in range(3)
    ]
    recorded = ensure_health(tmp_path / "set", progress=False)
    decoded = ensure_health(without_records(tmp_path / "set", tmp_path / "foreign"), progress=False)
    assert [shard.decoded for shard in recorded.shards] == [0, 0, 0]
    assert [shard.decoded for shard in decoded.shards] == [2, 2, 1]
    assert [shard.usable for shard in recorded.shards] == [shard.usable for shard in decoded.shards]
    assert recorded.usable == 5 and recorded.labels() == [[0], [1], [2], [0], [1]]
    main([str(tmp_path / "set")])
    assert "checked: 5 clips from prepare's record, 0 decoded" in capsys.readouterr().out


def test_prepare_records_what_it_verified_and_a_resumed_run_keeps_it(tmp_path):
    (tmp_path / "v").mkdir()
    for i in range(3):
        small_clip(tmp_path / "v" / f"c{i}.mp4", 1.0 + 0.5 * i)
    out = tmp_path / "out"
    prepare.prepare(tmp_path / "v", out, clips_per_shard=2, workers=1, progress=False)
    shards = read_manifest(out)["shards"]
    assert [shard.get("verified") for shard in shards] == ["shard-000000.verified.json", "shard-000001.verified.json"]
    record = json.loads((out / shards[0]["verified"]).read_text())["clips"]
    assert {key: (clip["facts"][:2], clip["facts"][3], clip["duration"]) for key, clip in record.items()} == {
        "c0": ([16000, 1], 2, 1.0),
        "c1": ([16000, 1], 3, 1.5),
    }  # rate, channels, frames at 2 fps, seconds
    assert all(clip["facts"][2] >= 16000 * clip["duration"] for clip in record.values())  # samples (AAC's padding)
    health = ensure_health(out, progress=False)
    assert health.usable == 3 and [shard.decoded for shard in health.shards] == [0, 0]
    prepare.prepare(tmp_path / "v", out, clips_per_shard=2, workers=1, progress=False)  # finished: nothing redone
    assert all((out / shard["verified"]).is_file() for shard in read_manifest(out)["shards"])
