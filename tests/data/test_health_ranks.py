"""ensure_health(distributed=True): the ranks of a process group split the shards to check, and every rank gets
the report one process would have written."""

from __future__ import annotations

import json
import shutil
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from mavil.data import health as health_module
from mavil.data.health import REPORT, ensure_health

from ..reliability.faults import build_fault_set


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_as_rank(rank: int, world: int, port: int, root: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    scanned, scan = [], health_module.scan

    def spy(root, shards, *args, **kwargs):  # the real scan, noting which shards this rank checked
        scanned.extend(shard["tar"] for shard in shards)
        return scan(root, shards, *args, **kwargs)

    health_module.scan = spy
    try:
        health = ensure_health(root, workers=1, progress=False, distributed=True)
        with open(f"{out}-{rank}.json", "w") as f:
            json.dump(
                {
                    "usable": [shard.usable for shard in health.shards],
                    "bad": [shard.bad for shard in health.shards],
                    "report": str(health.report),
                    "scanned": scanned,
                },
                f,
            )
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_the_check_and_agree_with_one_process(tmp_path):
    faults = build_fault_set(tmp_path / "set")  # 3 shards, no prepare record: every clip decoded
    alone = ensure_health(shutil.copytree(faults.root, tmp_path / "alone"), workers=1, progress=False)
    mp.spawn(check_as_rank, args=(2, free_port(), str(faults.root), str(tmp_path / "rank")), nprocs=2)
    results = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    expected = {
        "usable": [shard.usable for shard in alone.shards],
        "bad": [shard.bad for shard in alone.shards],
        "report": str(faults.root / REPORT),
    }
    assert [result.pop("scanned") for result in results] == [
        ["shard-000000.tar", "shard-000002.tar"],
        ["shard-000001.tar"],
    ]
    assert results == [expected, expected]
    report = json.loads((faults.root / REPORT).read_text())["shards"]
    assert [report[name]["clips"] for name in sorted(report)] == [8, 8, 5]
