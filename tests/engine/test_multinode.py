"""Two "nodes" on one machine: the README's multi-node command, run as written, one process per node.

Each node runs its own `deepspeed` launcher with --no_ssh (no pdsh, nothing reached over ssh): the hostfile states
the nodes and their slots, --node_rank says which one this is, and rank 0's node is the rendezvous:

    deepspeed --hostfile HOSTFILE --no_ssh --node_rank N --master_addr ADDR --master_port PORT \\
        engine/pretrain.py --config CONFIG [section.key=value ...]

Here HOSTFILE names node0 and node1 with slots=1 each, ADDR is 127.0.0.1 and both launchers share one run
directory (a cluster's shared file system). The tiny stage-1 config: the two nodes train 3 steps and checkpoint,
then the same commands are relaunched and resume to step 6. The run must equal a single-node two-process run of
the same config bit for bit: each rank sees the same clips (disjoint between the ranks in every epoch), the same
losses, and ends in the same checkpoint and export.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from mavil.engine.launch import free_port
from mavil.model import read_weights

from ..conftest import REPO
from ..reliability.runs import differences, latest_step, load_checkpoint
from .launcher import DEEPSPEED, command, launch, metrics

NODES = 2
STOP, STEPS = 3, 6  # 4 steps an epoch: the relaunch crosses into epoch 1
OVERRIDES = ("train.checkpoint_every=2", "train.record_keys=true")
TIMEOUT = 600


def launch_nodes(tmp: Path, run: str, *overrides: str) -> list[str]:
    """Both nodes' launchers, started together, each to completion; -> their outputs (also in tmp/<run>-node<n>.log)."""
    hostfile = tmp / "hostfile"
    hostfile.write_text("".join(f"node{n} slots=1\n" for n in range(NODES)))
    argv, env = command(tmp, run, *overrides)
    script = argv[argv.index("engine/pretrain.py") :]
    port = str(free_port())
    logs = [tmp / f"{run}-node{n}.log" for n in range(NODES)]
    nodes = []
    for n, log in enumerate(logs):
        with open(log, "w") as out:
            nodes.append(
                subprocess.Popen(
                    [
                        str(DEEPSPEED),
                        "--hostfile",
                        str(hostfile),
                        "--no_ssh",
                        "--node_rank",
                        str(n),
                        "--master_addr",
                        "127.0.0.1",
                        "--master_port",
                        port,
                        *script,
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    try:
        codes = [node.wait(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:  # a node left waiting for the other at the rendezvous: its launcher and ranks
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0] * NODES, "\n".join(
        f"node {n}, exit status {code}:\n{text[-3000:]}" for n, (code, text) in enumerate(zip(codes, outputs))
    )
    return outputs


def keys(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / f"keys-rank{rank}.jsonl").read_text().splitlines()]


def test_two_nodes_train_disjoint_data_checkpoint_resume_and_equal_one_node(tmp_path):
    outputs = launch_nodes(tmp_path, "nodes", *OVERRIDES, f"train.max_steps={STOP}")
    run_dir = tmp_path / "nodes"
    assert "nnodes=2, num_local_procs=1, node_rank=1" in outputs[1]  # DeepSpeed's launcher, as node 1
    assert [line["step"] for line in metrics(run_dir)] == [1, 2, 3] and latest_step(run_dir) == STOP

    outputs = launch_nodes(tmp_path, "nodes", *OVERRIDES, f"train.max_steps={STEPS}")
    assert f"resuming at step {STOP}" in outputs[0]
    single = launch(tmp_path, "single", *OVERRIDES, f"train.max_steps={STEPS}")  # deepspeed --num_gpus 2

    for epoch in (0, 1):
        seen = [{k for rec in keys(run_dir, rank) if rec["epoch"] == epoch for k in rec["keys"]} for rank in (0, 1)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]  # disjoint per epoch
    for rank in (0, 1):  # rank r on node r reads what rank r reads on one node, in the same order
        assert keys(run_dir, rank) == keys(single, rank)
    logged = ("step", "epoch", "lr", "skipped_steps")
    ours, theirs = metrics(run_dir), metrics(single)
    assert [line["step"] for line in ours] == list(range(1, STEPS + 1))
    assert [{k: v for k, v in line.items() if k.startswith("loss") or k in logged} for line in ours] == [
        {k: v for k, v in line.items() if k.startswith("loss") or k in logged} for line in theirs
    ]
    assert differences(load_checkpoint(run_dir, STEPS), load_checkpoint(single, STEPS)) == []
    exported, again = (read_weights(path / "model.safetensors")[0] for path in (run_dir, single))
    assert exported.keys() == again.keys() and all(exported[k].equal(again[k]) for k in exported)
