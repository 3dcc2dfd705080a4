"""`train.distributed`: defaults keep the config hash, only the world size enters it, and what
this machine cannot run is refused in seconds, naming the setting, with nothing trained."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import tiny_config

from segops.config import config_hash, load_config
from segops.errors import ConfigError
from segops.train.distributed import rank_seed, resolve_backend
from segops.train.launch import plan_launch, torchrun_command
from segops.train.run import train_configured

DEFAULT_HASH = "8952fbe6cfc6ed58c95874ff28d878db0e12867386172a47bfeec7817a796c3f"


def test_default_config_keeps_its_hash():
    assert config_hash(load_config(None, [])) == DEFAULT_HASH  # as before train.distributed


@pytest.mark.parametrize(
    ("setting", "changes_hash"),
    [
        ("train.distributed.nproc_per_node=2", True),  # the world size shapes the weights
        ("train.distributed.nnodes=2", True),
        ("train.distributed.nproc_per_node=1", False),
        ("train.distributed.node_rank=1", False),  # differs between nodes of one run
        ("train.distributed.rdzv_endpoint=10.0.0.1:29400", False),
        ("train.distributed.backend=gloo", False),
        ("train.distributed.max_restarts=3", False),
    ],
)
def test_only_the_world_size_enters_the_hash(setting, changes_hash):
    assert (config_hash(load_config(None, [setting])) != DEFAULT_HASH) is changes_hash


def test_the_hash_sees_the_world_size_not_how_it_is_split():
    one_node = load_config(None, ["train.distributed.nproc_per_node=2"])
    two_nodes = load_config(None, ["train.distributed.nnodes=2"])
    assert config_hash(one_node) == config_hash(two_nodes)  # reproducible on one machine


@pytest.mark.parametrize("bad", ["nproc_per_node=0", "nproc_per_node=many", "backend=mpi"])
def test_bad_values_are_refused_by_name(bad):
    with pytest.raises(ConfigError, match=r"train\.distributed"):
        load_config(None, [f"train.distributed.{bad}"])


def test_one_process_plans_nothing_distributed():
    plan = plan_launch(load_config(None, []))
    assert (plan.world_size, plan.backend) == (1, "none")


def test_plan_and_command_for_two_nodes(tmp_path):
    cfg = load_config(
        None,
        [
            "train.device=cpu",
            "train.distributed.nproc_per_node=2",
            "train.distributed.nnodes=2",
            "train.distributed.node_rank=1",
            "train.distributed.rdzv_endpoint=127.0.0.1:29555",
            "train.distributed.max_restarts=2",
        ],
    )
    plan = plan_launch(cfg)
    assert (plan.world_size, plan.backend) == (4, "gloo")
    cmd = torchrun_command(cfg, plan, tmp_path / "c.yaml", resume=True)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    for arg in ("--nproc-per-node=2", "--nnodes=2", "--max-restarts=2", "--node-rank=1"):
        assert arg in cmd
    assert "--rdzv-endpoint=127.0.0.1:29555" in cmd and "--rdzv-backend=c10d" in cmd
    assert cmd[-3:] == ["segops.train.worker", str(tmp_path / "c.yaml"), "--resume"]


def test_rank_seeds_differ_and_rank_zero_keeps_the_epoch_seed():
    assert rank_seed(123, 0) == 123
    assert len({rank_seed(123, r) for r in range(8)}) == 8
    assert resolve_backend("auto", "cpu") == "gloo" and resolve_backend("auto", "cuda") == "nccl"


needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without GPU")


@needs_no_gpu
@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (["backend=nccl", "nproc_per_node=2"], "train.distributed.backend=nccl"),
        (["nproc_per_node=2"], "train.distributed.nproc_per_node=2"),  # with train.device=cuda
        (["nnodes=2"], "train.distributed.rdzv_endpoint"),
        (["nnodes=2", "rdzv_endpoint=127.0.0.1", "nproc_per_node=1"], "host:port"),
        (["nnodes=2", "rdzv_endpoint=no-such-host.invalid:29400"], "does not resolve"),
        # TEST-NET-1: routed nowhere, so nothing answers there
        pytest.param(
            ["nnodes=2", "rdzv_endpoint=192.0.2.1:29400"], "nothing answers", marks=pytest.mark.slow
        ),
    ],
)
def test_what_cannot_run_here_fails_fast_naming_the_setting(shapes_root, tmp_path, settings, named):
    device = ["train.device=cuda"] if settings == ["nproc_per_node=2"] else []
    extra = [f"train.distributed.{s}" for s in settings] + device
    cfg = tiny_config(shapes_root, tmp_path / "out", *extra)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        train_configured(cfg)
    assert time.monotonic() - start < 30  # seconds: the endpoint gets 10 s to answer
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained
