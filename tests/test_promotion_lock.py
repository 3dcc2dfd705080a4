"""Promotion across hosts: with a Prefect server, decide-and-move holds the global concurrency
limit `promote-<name>`, and each decision reads the champion inside it.

Two processes (standing in for two hosts: they share nothing but the Prefect server and the
MLflow store) promote two different challengers against one champion at the same instant,
through the flow's own wrapper `flows.retrain.promote_serialised`. While this test holds the
limit, neither may decide; once released, the second decision must see the first's result.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect_server import BIN, prefect_env, stop

pytestmark = pytest.mark.slow

MODEL = "segops-lock-test"
N = 20
DECIDE = """
import json, os, sys, time
from flows.retrain import promote_serialised
import segops.promotion.gate  # heavy imports (torch, via evaluate) before the clock starts
from segops.config import build_config
from segops.promotion.registry import ModelRef
cfg = build_config(json.load(open(sys.argv[1])))
ref, go = ModelRef(**json.loads(sys.argv[2])), sys.argv[3]
print("ready", flush=True)
while not os.path.exists(go):  # both call within 20 ms of each other
    time.sleep(0.02)
print(json.dumps(promote_serialised(cfg, ref).promote), flush=True)
"""


def _log_eval(run_id: str, mean: float, folder: Path) -> None:
    """An evaluation on data version `d1` whose per-image IoU is `mean` give or take 0.01."""
    from mlflow import MlflowClient

    per_image = mean + np.tile([0.01, -0.01], N // 2)
    folder.mkdir(parents=True)
    metrics = {
        "kind": "semantic",
        "dataset_hash": "d1",
        "protocol": {"resolution": "original"},
        "mean_iou": mean,
        "per_class": {"background": {"iou": mean}, "shape": {"iou": mean}},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    ids = [f"img{i:03d}" for i in range(N)]
    pd.DataFrame({"id": ids, "iou": per_image}).to_csv(folder / "per_image.csv", index=False)
    for name in ("metrics.json", "per_image.csv"):
        MlflowClient().log_artifact(run_id, str(folder / name), artifact_path="eval")


def _wait_for_line(proc: subprocess.Popen, text: str) -> bool:
    """Read `proc`'s output until a line equal to `text` (True) or its end (False)."""
    return any(line.strip() == text for line in proc.stdout)


def _register(cfg, store, key: str, mean: float, tmp_path: Path, name: str = MODEL):
    from segops import tracking
    from segops.promotion.registry import register

    run = tracking.open_run(store, cfg, key, {})
    _log_eval(run, mean, tmp_path / key)
    return register(f"runs:/{run}/model", name, run, key, {})


def test_two_hosts_promote_one_after_the_other(prefect_server, own_mlflow, tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promotion_lock import global_promotion_lock, limit_name
    from segops import tracking
    from segops.config import load_config
    from segops.promotion.registry import (
        DECIDED_TAG,
        champion,
        history,
        list_versions,
        record_decision,
    )

    sets = [
        f"tracking.artifact_root={tmp_path / 'mlflow' / 'artifacts'}",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=200",
    ]
    cfg = load_config(None, sets)
    store = tracking.connect(cfg.tracking)
    first = _register(cfg, store, "champion", 0.5, tmp_path)
    record_decision(first, {DECIDED_TAG: "true"}, True, "the first champion")
    # Both beat the champion; B also beats A. Whatever the order, B ends champion, and the
    # later decision names the earlier challenger as the champion it was compared with.
    a = _register(cfg, store, "a", 0.7, tmp_path)
    b = _register(cfg, store, "b", 0.8, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))

    env = prefect_env(prefect_server, tmp_path / "client-home")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DECIDE, str(tmp_path / "config.json"), json.dumps(m), str(go)],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for m in ({"name": MODEL, "version": r.version, "run_id": r.run_id} for r in (a, b))
    ]
    try:
        for proc in procs:  # both have imported Prefect and MLflow
            assert _wait_for_line(proc, "ready"), proc.communicate(timeout=30)[0][-3000:]
        with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
            with global_promotion_lock(MODEL) as held:  # what another host's flow would hold
                assert held == limit_name(MODEL) == f"promote-{MODEL}"
                go.touch()
                time.sleep(4)
                waiting = [p.poll() for p in procs]
                versions = list_versions(MODEL)[1:]
            assert waiting == [None, None], "a process finished while the limit was held"
            assert [DECIDED_TAG in v["tags"] for v in versions] == [False, False]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for proc in procs:
            stop(proc)
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]

    decided = {v["version"]: v["tags"] for v in list_versions(MODEL) if v["version"] != "1"}
    order = sorted(decided, key=lambda v: decided[v]["promotion.decided_at"])
    earlier, later = order
    assert decided[earlier]["promotion.champion_version"] == "1"
    assert decided[later]["promotion.champion_version"] == earlier  # saw the first's result
    assert champion(MODEL).version == b.version
    holders = [v["version"] for v in list_versions(MODEL) if "champion" in v["aliases"]]
    assert holders == [b.version]
    promoted = [e["version"] for e in history(MODEL) if e["action"] == "promoted"]
    assert promoted == (["1", a.version, b.version] if earlier == a.version else ["1", b.version])


def test_rollback_from_another_host_waits_for_the_limit(prefect_server, own_mlflow, tmp_path):
    """`segops promote --rollback` with a Prefect server takes the same limit as the flows."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.promotion_lock import global_promotion_lock
    from segops import tracking
    from segops.config import load_config
    from segops.promotion.registry import champion, record_decision

    name = f"{MODEL}-rollback"
    sets = [f"tracking.artifact_root={tmp_path / 'mlflow' / 'artifacts'}"]
    sets += [f"promotion.model_name={name}"]
    cfg = load_config(None, sets)
    store = tracking.connect(cfg.tracking)
    for key in ("first", "second"):  # two champions in turn: rollback has somewhere to go
        ref = _register(cfg, store, key, 0.5, tmp_path, name)
        record_decision(ref, {"promotion.promote": "true"}, True, "test")
    argv = [str(BIN / "segops"), "promote", "--rollback", *[a for s in sets for a in ("--set", s)]]
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
        global_promotion_lock(name),  # a promotion in flight on another host
    ):
        proc = subprocess.Popen(
            argv,
            env=prefect_env(prefect_server, tmp_path / "cli-home"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(12)  # the CLI's imports, then it waits for the limit
        running, before = proc.poll(), champion(name).version
    output = proc.communicate(timeout=120)[0]
    assert running is None and before == "2", output
    assert proc.returncode == 0, output
    assert champion(name).version == "1"
