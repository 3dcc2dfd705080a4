"""`segops reproduce` and `train.distributed`: it reruns with the recorded world size (tag
`segops.train.world_size`), says so when this machine cannot, and a run recorded with
`nproc_per_node: auto` keeps its config hash (auto hashes as `auto`; the tag has the number).
Also `auto` itself on CPU: one plain process, no torchrun."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from segops.config import config_hash, load_config
from segops.lineage.reproduce import ReproduceError, retrain_config
from segops.record import WORLD_TAGS
from segops.train.launch import plan_launch
from segops.train.run import train_configured

URI = "models:/m/3"
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")


def recorded(*settings: str) -> dict:
    """A run's recorded config.yaml, as reproduce reads it."""
    return load_config(None, ["data.root=data/shapes", *settings]).to_dict()


def retrain(raw: dict, world: int | None, tmp_path):
    tags = {} if world is None else {WORLD_TAGS["world_size"]: str(world)}
    return retrain_config(raw, tmp_path / "data", tmp_path / "out", tags, URI)


@no_gpu
@pytest.mark.parametrize(
    "settings",
    [
        ["train.distributed.nproc_per_node=2", "train.distributed.backend=nccl"],
        ["train.distributed.nproc_per_node=2", "train.device=cuda"],  # backend auto: NCCL
        ["train.distributed.nproc_per_node=auto", "train.device=cuda"],  # auto on 2 GPUs
    ],
)
def test_a_gpu_world_on_a_machine_without_gpus_is_refused_naming_it(settings, tmp_path):
    with pytest.raises(ReproduceError) as caught:
        retrain(recorded(*settings), 2, tmp_path)
    message = str(caught.value)
    assert f"{URI} was trained by 2 processes (segops.train.world_size=2)" in message
    assert "cannot be reproduced here" in message
    assert "at least 2 visible GPUs" in message  # what to do
    assert not (tmp_path / "out").exists()  # refused before anything trained


@pytest.mark.parametrize(
    "settings",
    [
        ["train.distributed.nproc_per_node=2"],
        ["train.distributed.nproc_per_node=auto"],  # resolved to 2 GPUs where it ran
        [  # two nodes of one process: two processes on this one machine
            "train.distributed.nnodes=2",
            "train.distributed.node_rank=1",
            "train.distributed.rdzv_endpoint=10.0.0.1:29400",
        ],
    ],
)
def test_the_recorded_world_reruns_on_this_machine_with_the_recorded_hash(settings, tmp_path):
    raw = recorded("train.device=cpu", *settings)
    cfg, recorded_hash = retrain(raw, 2, tmp_path)
    dist = cfg.train.distributed
    assert (dist.nproc_per_node, dist.nnodes, dist.node_rank, dist.rdzv_endpoint) == (
        2,
        1,
        0,
        None,
    )
    plan = plan_launch(cfg)
    assert (plan.world_size, plan.backend) == (2, "gloo")
    assert recorded_hash == config_hash(load_config(None, ["train.device=cpu", *settings]))


def test_auto_hashes_as_auto_and_reruns_with_the_recorded_count(tmp_path):
    auto = ["train.device=cpu", "train.distributed.nproc_per_node=auto"]
    raw, auto_hash = recorded(*auto), config_hash(load_config(None, auto))
    assert auto_hash != config_hash(load_config(None, auto[:1]))  # as written, not resolved
    cfg, recorded_hash = retrain(raw, 1, tmp_path)  # a CPU run: auto was 1 there
    assert recorded_hash == auto_hash
    assert cfg.train.distributed.nproc_per_node == 1  # not what this machine's GPUs would say
    assert plan_launch(cfg).world_size == 1
    cfg, _ = retrain(recorded("train.device=cpu"), None, tmp_path)  # before world tags
    assert cfg.train.distributed.nproc_per_node == 1 and plan_launch(cfg).world_size == 1


@no_gpu
def test_auto_on_cpu_trains_one_plain_process_without_torchrun(shapes_root, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(
        shapes_root,
        out,
        "train.epochs=1",
        "train.device=cpu",
        "train.distributed.nproc_per_node=auto",
    )
    plan = plan_launch(cfg)
    assert (plan.nproc_per_node, plan.world_size, plan.backend) == (1, 1, "gloo")
    result = train_configured(cfg)
    assert result.epochs_run == 1 and (out / "checkpoints" / "last.pt").is_file()
    assert not (out / "distributed").exists()  # no torchrun launched (it writes there first)
    assert not torch.distributed.is_initialized()  # no process group in this process either
    assert result.config_hash == config_hash(cfg)  # auto, as the config says
