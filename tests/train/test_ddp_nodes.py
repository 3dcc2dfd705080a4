"""Two "nodes" through segops' own launcher: two `segops train` processes, each with
`train.distributed.nnodes=2`, its own `node_rank` and one process, meeting at a c10d
rendezvous on 127.0.0.1. segops plans the world, checks the endpoint, runs torchrun and relays
rank 0's progress; both commands end with rank 0's result, and rank 0 alone wrote the files
in the shared `train.out_dir` (the README asks for storage every node sees)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import tiny_overrides
from servers import free_port

from segops.config import config_hash, load_config
from segops.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_two_segops_train_nodes_train_one_run_together(shapes_root, tmp_path):
    out, port = tmp_path / "run", free_port()
    sets = [
        *tiny_overrides(shapes_root, out),
        "train.device=cpu",
        "train.threads=1",
        "train.distributed.nnodes=2",
        "train.distributed.nproc_per_node=1",
        f"train.distributed.rdzv_endpoint=127.0.0.1:{port}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    nodes = []
    for rank in (0, 1):
        flags = [f for s in [*sets, f"train.distributed.node_rank={rank}"] for f in ("--set", s)]
        cmd = [sys.executable, "-m", "segops.cli.main", "train", *flags]
        nodes.append(
            subprocess.Popen(
                cmd,
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # the console prints on stderr
                text=True,
            )
        )
    logs = []
    for node in nodes:
        try:
            stdout, _ = node.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for other in nodes:
                other.kill()
            pytest.fail("two segops train nodes ran past 400 s")
        logs.append((node.returncode, stdout))
    for rc, stdout in logs:
        assert rc == 0, stdout[-6000:]
        assert "(2 epochs)" in stdout and f"best checkpoint: {out}" in stdout
    finals = [stdout[stdout.index("best val mean IoU") :].split()[4] for _, stdout in logs]
    assert finals[0] == finals[1]  # both commands end with rank 0's result
    relayed = [stdout for _, stdout in logs if "training on cpu" in stdout]
    assert len(relayed) == 1  # rank 0's progress, relayed by the launcher of its node only
    assert re.search(r"epoch +2  train loss", relayed[0])  # its epoch rows too

    world2 = load_config(None, sets)
    alone = load_config(None, [s for s in sets if "distributed" not in s])
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["config"]["train"]["distributed"]["nnodes"] == 2
    assert last["config_hash"] == config_hash(world2) != config_hash(alone)  # world size 2
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2]  # one writer
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best.pt",
        "best.pt.sha256",
        "last.pt",
        "last.pt.sha256",
        "threads.txt",
    ]
    work = out / "distributed"  # each node's launcher wrote its own config for its ranks
    assert sorted(p.name for p in work.iterdir()) == [
        "config-node0.yaml",
        "config-node1.yaml",
        "result.json",
    ]
    for rank in (0, 1):
        node = load_config(work / f"config-node{rank}.yaml").train.distributed
        assert (node.node_rank, node.nnodes) == (rank, 2)
    assert '"epochs_run": 2' in (work / "result.json").read_text()
