"""The thread policy (`train.threads`): a table of decisions from fake affinity, quota and load,
the cgroup readers on fake files, and the policy applied by the runtime."""

from __future__ import annotations

import pytest

from segops.config import TrainConfig, config_hash, load_config
from segops.errors import ConfigError
from segops.train.threads import (
    CpuFacts,
    busy_cores,
    cgroup_quota,
    decide_threads,
    parse_cfs,
    parse_cpu_max,
    read_cpu_facts,
    usable_cores,
)


def facts(affinity=2, quota=None, machine=2, load1=1.0, omp=None, local_world=1, busy=0.0):
    return CpuFacts(
        affinity=affinity,
        quota=quota,
        machine=machine,
        load1=load1,
        omp=omp,
        local_world=local_world,
        busy=busy,
    )


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (facts(load1=0.0), 2),  # idle 2-core machine: both cores
        (facts(load1=1.0), 2),  # only this process has been running
        (facts(load1=2.0), 1),  # one other busy process on 2 cores: oversubscribed -> 1
        (facts(load1=6.5), 1),  # six engineers on 2 cores
        (facts(affinity=16, machine=16, load1=5.0), 12),  # 4 busy elsewhere: the 12 free
        (facts(affinity=16, machine=16, load1=40.0), 1),
        (facts(affinity=4, machine=16, load1=0.0), 4),  # taskset to 4 cores
        (facts(affinity=16, quota=2.5, machine=16, load1=0.0), 3),  # cgroup quota 2.5 cores
        (facts(affinity=16, quota=0.5, machine=16, load1=0.0), 1),
        (facts(affinity=8, machine=8, load1=0.0, local_world=2), 4),  # torchrun, 2 ranks
        (facts(load1=9.0, omp=2), 2),  # OMP_NUM_THREADS set by a launcher or the user wins
        (facts(load1=0.2, busy=1.0), 1),  # a process started seconds ago: the load lags
        (facts(affinity=8, machine=8, load1=0.5, busy=2.6), 5),
        (facts(load1=0.2, busy=0.3), 2),  # a little background work leaves both cores
    ],
)
def test_auto_decides_from_affinity_quota_and_load(cpu: CpuFacts, expected: int):
    assert decide_threads("auto", cpu).threads == expected


def test_a_number_is_taken_as_is_and_the_reason_says_why():
    assert decide_threads(3, facts(load1=9.0)).threads == 3
    busy = decide_threads("auto", facts(load1=3.0))
    assert "load 3.00" in busy.reason and busy.reason.endswith(": 1")


def test_busy_cores_sees_a_busy_process():
    import subprocess
    import sys

    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(0.3) >= 0.5  # the spinning process holds about one core
    finally:
        spin.kill()
        spin.wait()


def test_usable_cores_never_below_one():
    assert usable_cores(facts(affinity=1, quota=0.1, local_world=4)) == 1


@pytest.mark.parametrize(
    ("text", "cores"), [("max 100000", None), ("150000 100000", 1.5), ("200000 100000", 2.0)]
)
def test_cgroup_v2_cpu_max(text: str, cores: float | None):
    assert parse_cpu_max(text) == cores


def test_cgroup_v1_cfs():
    assert parse_cfs("-1", "100000") is None
    assert parse_cfs("300000", "100000") == 3.0


def test_cgroup_quota_reads_v2_then_v1(tmp_path):
    assert cgroup_quota(tmp_path) is None  # nothing there: unlimited
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path) == 0.5
    (tmp_path / "cpu.max").write_text("400000 100000\n")  # v2 at the root wins
    assert cgroup_quota(tmp_path) == 4.0


def test_read_cpu_facts_honours_omp_and_local_world(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    real = read_cpu_facts()
    assert real.omp == 3 and real.local_world == 2 and 1 <= real.affinity <= real.machine
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert read_cpu_facts().omp is None


def test_config_takes_auto_or_a_positive_number_and_keeps_its_hash():
    assert TrainConfig().threads == "auto"
    assert load_config(None, ["train.threads=2"]).train.threads == 2
    with pytest.raises(ConfigError, match="threads"):
        load_config(None, ["train.threads=0"])
    with pytest.raises(ConfigError, match="threads"):
        load_config(None, ["train.threads=many"])
    base = config_hash(load_config(None, []))
    assert config_hash(load_config(None, ["train.threads=1"])) == base


def test_the_runtime_applies_and_describes_the_policy():
    import torch

    from segops.train.device import resolve_runtime

    before = torch.get_num_threads()
    try:
        runtime = resolve_runtime(TrainConfig(device="cpu", threads=1))
        assert runtime.threads == 1 and torch.get_num_threads() == 1
        assert runtime.describe()["threads"] == "1"
    finally:
        torch.set_num_threads(before)


def test_the_run_records_the_runtime_it_trained_with(own_mlflow):
    from mlflow import MlflowClient

    from segops import tracking
    from segops.config import TrackingConfig

    store = tracking.connect(TrackingConfig(experiment="threads"))
    run_id = MlflowClient(store.tracking_uri).create_run(store.experiment_id).info.run_id
    info = {"device": "cpu", "amp": "off", "channels_last": "False", "threads": "1", "epochs": 2}
    tracking.MlflowMetrics(store, run_id).on_train_start(info)
    tags = tracking.run_summary(run_id)["tags"]
    assert tags["segops.env.threads"] == "1" and tags["segops.env.device"] == "cpu"
    assert "segops.env.epochs" not in tags


def test_a_resumed_run_keeps_the_thread_count_its_first_start_chose(tmp_path):
    import torch

    from segops.train.device import Runtime, keep_threads

    before = torch.get_num_threads()
    runtime = Runtime(torch.device("cpu"), None, False, False, False, False, 2)
    record = tmp_path / "checkpoints" / "threads.txt"
    try:
        assert keep_threads(runtime, "auto", record, resuming=False).threads == 2
        assert record.read_text() == "2\n"  # the first start decides
        busier = Runtime(torch.device("cpu"), None, False, False, False, False, 1)
        resumed = keep_threads(busier, "auto", record, resuming=True)
        assert resumed.threads == 2 and torch.get_num_threads() == 2
        assert keep_threads(busier, 1, record, resuming=True).threads == 1  # as given
    finally:
        torch.set_num_threads(before)


def test_reproduce_trains_with_the_recorded_thread_count_and_layout():
    from segops.lineage.reproduce import _same_runtime
    from segops.record import CHANNELS_LAST_TAG, THREADS_TAG

    cfg = load_config(None)
    assert cfg.train.threads == "auto" and cfg.train.channels_last == "auto"
    pinned = _same_runtime(cfg, {THREADS_TAG: "3", CHANNELS_LAST_TAG: "False"})
    assert pinned.train.threads == 3 and pinned.train.channels_last is False
    assert _same_runtime(cfg, {CHANNELS_LAST_TAG: "True"}).train.channels_last is True
    assert _same_runtime(cfg, {}) is cfg  # a run made before the tags: auto
    assert _same_runtime(cfg, {THREADS_TAG: "0", CHANNELS_LAST_TAG: "x"}) is cfg
    update = {"threads": 1, "channels_last": True}
    explicit = cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})
    kept = _same_runtime(explicit, {THREADS_TAG: "3", CHANNELS_LAST_TAG: "False"}).train
    assert kept.threads == 1 and kept.channels_last is True  # a setting stays
