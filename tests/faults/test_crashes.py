"""Crashes mid-flow (issue 12, items 6-8): a rerun of the same inputs finishes what was cut off.

- kill -9 during training: the rerun resumes the same attempt (same MLflow run, same checkpoint
  folder, epochs continued); orphaned runs of the same inputs end FAILED;
- interrupted between register and promote (modelled by a promote step that raises, in
  process): the rerun gates and reports the registered version instead of "nothing to do";
- a PENDING logged model (a kill inside register) is not reused;
- `segops promote --rollback` waits for the promotion lock the gate holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from servers import start

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

MODEL = "segops-crash"


def overrides(ws: Path, *extra: str) -> list[str]:
    return [
        f"data.root={ws / 'data' / 'shapes'}",
        "data.image_size=32",
        "data.val_fraction=0.34",
        "model.options={width: 8, depth: 2}",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        f"train.out_dir={ws / 'runs' / 'latest'}",
        "evaluate.worst_k=1",
        f"versioning.path={ws / 'data'}",
        f"tracking.artifact_root={ws / 'mlflow' / 'artifacts'}",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=200",
        *extra,
    ]


def all_runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _start_killable_run(ws: Path, tmp_path: Path) -> subprocess.Popen:
    """`segops run --params params.yaml` in its own session (its Prefect server included)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-killed"), "PREFECT_API_URL": ""}
    cmd = [sys.executable, "-m", "segops.cli.main", "run", "--params", "params.yaml"]
    return start(cmd, tmp_path / "killed.log", env, cwd=ws)


def _wait_for_checkpoint(ws: Path, proc: subprocess.Popen, timeout: float) -> Path:
    """The first `runs/*/checkpoints/last.pt` whose hash sidecar is written (a whole epoch)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = next(ws.glob("runs/*/checkpoints/last.pt.sha256"), None)
        if found is not None:
            return found.parent.parent
        assert proc.poll() is None, "the flow ended before it saved a checkpoint"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after {timeout:.0f} s")


def test_killed_training_resumes_in_the_same_run(harness, workspace, tmp_path):
    from flows.retrain import retrain
    from segops import tracking
    from segops.config import load_config, save_config

    epochs = 12
    cfg = load_config(None, overrides(workspace, f"train.epochs={epochs}"))
    save_config(cfg, workspace / "params.yaml")
    tracking.connect(cfg.tracking)  # create the SQLite store once, before the child uses it
    proc = _start_killable_run(workspace, tmp_path)
    try:
        out_dir = _wait_for_checkpoint(workspace, proc, timeout=300)
    except AssertionError as exc:  # the run died by itself: show why
        raise AssertionError(f"{exc}\n{(tmp_path / 'killed.log').read_text()[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone if it failed by itself
            os.killpg(proc.pid, signal.SIGKILL)  # the flow and its temporary Prefect server
        proc.wait(timeout=30)
    before = pd.read_csv(out_dir / "history.csv")
    assert 1 <= len(before) < epochs, "killed too late to test a resume"
    (killed,) = all_runs()
    assert killed.info.status == "RUNNING"  # what kill -9 leaves behind

    result = retrain(params="params.yaml", workspace=str(workspace))

    assert result["model"]["run_id"] == killed.info.run_id  # the same MLflow run, continued
    assert result["model"]["version"] == "1" and result["decision"]["promote"] is True
    assert len(all_runs()) == 1
    after = pd.read_csv(out_dir / "history.csv")  # the same checkpoint folder
    assert after["epoch"].tolist() == list(range(1, epochs + 1))
    # Epochs before the kill were not trained again: their rows (timings included) are kept.
    pd.testing.assert_frame_equal(after.iloc[: len(before)], before)
    run = MlflowClient().get_run(killed.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["segops.resumed_by"] != run.data.tags["segops.attempt_key"]
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_miou")]
    assert len(steps) == len(set(steps)) and max(steps) == epochs
    version = MlflowClient().get_model_version(MODEL, "1")
    assert version.tags["promotion.promote"] == "true" and "segops.report" in version.tags


def test_orphaned_runs_of_the_same_inputs_end_failed_live_ones_are_left(tmp_path, own_mlflow):
    """Three RUNNING runs of the same inputs and no process behind two of them: the newest with
    a checkpoint is adopted, the other orphan ends FAILED, the one whose lock is held stays."""
    from conftest import tiny_config

    from segops import resume, tracking

    cfg = tiny_config(
        tmp_path / "data",
        tmp_path / "runs" / "latest",
        f"tracking.artifact_root={tmp_path / 'mlflow' / 'artifacts'}",
    )
    config = cfg.to_dict()
    data = {"dataset_md5": "abc.dir", "dataset": "data/shapes"}
    store = tracking.connect(cfg.tracking)
    ident = resume.identity(cfg, data)
    ids = {}
    for key in ("old", "with-checkpoint", "live"):
        ids[key] = tracking.open_run(store, cfg, key, dict(ident))
        time.sleep(0.01)  # distinct start times
    (tmp_path / "runs" / "with-checkpoint" / "checkpoints").mkdir(parents=True)
    # A checkpoint that fails its hash check is moved aside (training starts over in the run).
    (tmp_path / "runs" / "with-checkpoint" / "checkpoints" / "last.pt").write_bytes(b"cut")
    live = tmp_path / "runs" / "live"
    live.mkdir(parents=True)
    with open(live / resume.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a flow alive in another process
        try:
            chosen = resume.choose_attempt(config, data, "fresh", "flow-2")
        finally:
            resume.release_attempts()
    assert chosen["attempt_key"] == "with-checkpoint"
    assert chosen["resumed"] == ids["with-checkpoint"] and chosen["failed"] == [ids["old"]]
    assert chosen["config"]["train"]["out_dir"] == str(tmp_path / "runs" / "with-checkpoint")
    assert "moved aside" in chosen["notes"][0]
    client = MlflowClient()
    status = {k: client.get_run(v).info.status for k, v in ids.items()}
    assert status == {"old": "FAILED", "with-checkpoint": "RUNNING", "live": "RUNNING"}
    assert client.get_run(ids["with-checkpoint"]).data.tags["segops.resumed_by"] == "flow-2"


def test_interrupted_before_promote_the_rerun_gates_and_reports(harness, workspace, monkeypatch):
    """The interruption is an exception raised by the promote step (and its retry), in
    process: the registered version is left without a decision, its run RUNNING."""
    from flows.retrain import retrain
    from segops.steps import registration

    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted between register and promote")

    original = registration.promote_step
    monkeypatch.setattr(registration, "promote_step", interrupted)
    args = {"params": None, "overrides": overrides(workspace, "train.epochs=2")}
    with pytest.raises(RuntimeError, match="interrupted"):
        retrain(**args, workspace=str(workspace))
    client = MlflowClient()
    assert "promotion.promote" not in client.get_model_version(MODEL, "1").tags
    monkeypatch.setattr(registration, "promote_step", original)

    result = retrain(**args, workspace=str(workspace))

    assert result["skipped"] is False and result["model"]["version"] == "1"
    assert result["decision"]["promote"] is True and result["report"]["error"] is None
    version = client.get_model_version(MODEL, "1")
    assert version.tags["promotion.promote"] == "true" and "segops.report" in version.tags
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    assert client.get_run(result["model"]["run_id"]).info.status == "FINISHED"
    again = retrain(**args, workspace=str(workspace))  # now decided: nothing left to do
    assert again["skipped"] is True and again["model"] == result["model"]


def test_a_pending_logged_model_is_logged_again(workspace):
    """A kill inside register can leave the run's logged model PENDING: it is not reused."""
    from mlflow.entities import LoggedModelStatus

    from segops.config import load_config
    from segops.steps import evaluation, registration, setup, training

    cfg = setup.attempt_config(
        load_config(None, overrides(workspace, "train.epochs=1")), "attempt-p"
    )
    trained = training.train_step(cfg, "attempt-p", {}, {})
    evaluation.evaluate_step(cfg, trained.run_id, trained.checkpoint)
    client = MlflowClient()
    experiment = client.get_run(trained.run_id).info.experiment_id
    pending = client.create_logged_model(experiment, source_run_id=trained.run_id, name="model")
    client.set_tag(trained.run_id, "segops.model_uri", f"models:/{pending.model_id}")

    model = registration.register_step(cfg, trained.run_id, trained.checkpoint, "attempt-p")

    assert client.get_logged_model(pending.model_id).status == LoggedModelStatus.FAILED
    source = client.get_model_version(MODEL, model.version).source
    assert pending.model_id not in source
    uri = client.get_run(trained.run_id).data.tags["segops.model_uri"]
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.status == LoggedModelStatus.READY


def test_rollback_waits_for_an_in_flight_promotion(tmp_path, own_mlflow, monkeypatch):
    from typer.testing import CliRunner

    from flows.promotion_lock import promotion_lock_for
    from segops import tracking
    from segops.cli.main import app
    from segops.config import load_config
    from segops.promotion.registry import champion, record_decision, register

    monkeypatch.chdir(tmp_path)
    sets = [f"tracking.artifact_root={tmp_path / 'mlflow' / 'artifacts'}"]
    sets += [f"promotion.model_name={MODEL}"]
    cfg = load_config(None, sets)
    store = tracking.connect(cfg.tracking)
    for key in ("a", "b"):  # two promoted versions: rollback has somewhere to go
        run = tracking.open_run(store, cfg, key, {})
        ref = register(f"runs:/{run}/model", MODEL, run, key, {})
        record_decision(ref, {"promotion.promote": "true"}, True, "test")
    assert champion(MODEL).version == "2"
    done = threading.Event()
    outcome = {}

    def roll_back() -> None:
        args = ["promote", "--rollback"] + [a for s in sets for a in ("--set", s)]
        outcome["result"] = CliRunner().invoke(app, args)
        done.set()

    # what the gate holds while it decides: the Prefect limit when a Prefect API is set
    # (this module's harness may be), else the file lock
    with promotion_lock_for(MODEL, tmp_path / "mlflow"):
        worker = threading.Thread(target=roll_back, daemon=True)
        worker.start()
        assert not done.wait(3), "rollback did not wait for the promotion lock"
        assert champion(MODEL).version == "2"
    assert done.wait(60), "rollback did not finish once the lock was released"
    assert outcome["result"].exit_code == 0, outcome["result"].output
    assert champion(MODEL).version == "1"
