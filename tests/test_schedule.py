"""Deployments that run anywhere: `segops schedule` / `deploy_retrain` against a real Prefect
server, and a real run by a worker that clones the code.

The deployment is read back through the client: its pull step clones the repository at the
deployed commit, and no path of the deploying machine is in its pull steps, parameters or job
variables. The run test deploys a clone of this project (file:// URL), triggers a run through
the API and lets a process worker (`--run-once`) clone and run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from uuid import UUID

import pytest
import typer
from prefect_server import prefect_env
from servers import BIN, free_port, start, stop
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
MODEL = "segops-schedule-test"
REMOTE = "https://git.example.com/team/segops.git"  # never cloned by these tests but the last
# January 1st only: the server's scheduler must not queue a run the one-shot worker could pick.
RARE_CRON = "0 3 1 1 *"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _cli() -> typer.Typer:
    """The real `segops` command line."""
    from segops.cli.main import app

    return app


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture
def api(prefect_server):
    """This process's Prefect settings pointed at the test server (for the client and deploy)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        yield prefect_server


def test_bad_cron_is_refused_before_any_server_is_contacted():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import ScheduleError, deploy_retrain

    # Port 9 (discard) has no Prefect server: reaching it would fail with another message.
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with pytest.raises(ScheduleError, match=r"invalid cron '61 \* \* \* \*'.*five fields"):
            deploy_retrain("61 * * * *", repository=REMOTE, commit=SHA)
        with pytest.raises(ScheduleError, match="invalid timezone 'Mars/Olympus'"):
            deploy_retrain("0 3 * * *", repository=REMOTE, commit=SHA, timezone="Mars/Olympus")
        result = CliRunner().invoke(_cli(), ["schedule", "--cron", "every night"])
    assert isinstance(result.exception, ScheduleError)
    assert "invalid cron 'every night'" in str(result.exception)


def test_no_server_gives_a_clear_error():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import ScheduleError, deploy_retrain

    unset = temporary_settings(updates={PREFECT_API_URL: ""})
    with unset, pytest.raises(ScheduleError, match=r"prefect server start.*PREFECT_API_URL=http"):
        deploy_retrain("0 3 * * *", repository=REMOTE, commit=SHA)
    down = temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"})
    with down, pytest.raises(ScheduleError, match="does not answer"):
        deploy_retrain("0 3 * * *", repository=REMOTE, commit=SHA)


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A git checkout holding a committed params.yaml, with `origin` on a git server."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "sub").mkdir()
    _git(repo, "add", "params.yaml")
    _git(repo, "commit", "-qm", "params")
    _git(repo, "remote", "add", "origin", REMOTE)
    monkeypatch.chdir(repo / "sub")  # paths are recorded relative to the root, not the cwd
    # A shell pointed at the stores from this machine: none of it may reach the deployment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    return repo


def _host_paths(deployment, *paths: Path) -> list[str]:
    recorded = json.dumps([deployment.pull_steps, deployment.parameters, deployment.job_variables])
    return [str(p) for p in (*paths, "/tmp", "/work", "/root", "localhost") if str(p) in recorded]


def _schedule(*args: str):
    result = CliRunner().invoke(_cli(), ["schedule", "--cron", RARE_CRON, *args])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return UUID(result.stdout.strip().splitlines()[-1]), result.output


def test_deployment_clones_the_commit_and_records_no_host_path(api, checkout):
    from prefect.client.orchestration import get_client

    head = _git(checkout, "rev-parse", "HEAD")
    deployment_id, output = _schedule("--name", "anywhere", "--params", "../params.yaml")
    assert f"{REMOTE} @ {head[:12]}" in output
    _schedule("--name", "anywhere", "--params", "../params.yaml", "--cron", "0 4 1 1 *")
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)  # the same one, updated
        pool = client.read_work_pool("segops-process")
    assert deployment.pull_steps == [
        {
            "prefect.deployments.steps.git_clone": {
                "id": "clone",
                "repository": REMOTE,
                "commit_sha": head,
            }
        }
    ]
    assert deployment.entrypoint == "flows/retrain.py:retrain" and deployment.path is None
    assert deployment.parameters == {
        "params": "params.yaml",
        "overrides": [],
        "dataset": None,
        "workspace": ".",
    }
    assert deployment.job_variables == {}  # MLFLOW_TRACKING_URI stayed in this shell
    assert [s.schedule.cron for s in deployment.schedules] == ["0 4 1 1 *"]
    assert pool.type == "process"
    assert _host_paths(deployment, checkout, ROOT) == []


def test_the_score_flow_deploys_nightly_with_the_same_code_source(api, checkout):
    from prefect.client.orchestration import get_client

    head = _git(checkout, "rev-parse", "HEAD")
    refused = CliRunner().invoke(_cli(), ["schedule", "--cron", RARE_CRON, "--flow", "score"])
    assert refused.exit_code != 0 and "needs --src and --out" in refused.output
    deployment_id, output = _schedule(
        "--flow", "score", "--src", "incoming", "--out", "scored", "--params", "../params.yaml"
    )
    assert "deployment score/score-nightly" in output
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        flow = client.read_flow(deployment.flow_id)
    assert flow.name == "score" and deployment.entrypoint == "flows/score.py:score"
    assert deployment.pull_steps[0]["prefect.deployments.steps.git_clone"]["commit_sha"] == head
    assert deployment.parameters == {
        "src": "incoming",
        "out": "scored",
        "model": None,
        "engine": "local",
        "address": None,
        "params": "params.yaml",
        "overrides": [],
    }
    assert _host_paths(deployment, checkout, ROOT) == []


def test_docker_pool_with_the_worker_image(api, checkout):
    from prefect.client.orchestration import get_client

    deployment_id, _ = _schedule(
        "--name",
        "in-docker",
        "--pool",
        "segops-docker",
        "--pool-type",
        "docker",
        "--image",
        "segops:test",
        "--env",
        "SEGOPS_NOTE=1",
        "--workspace",
        "..",
    )
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        pool = client.read_work_pool("segops-docker")
    assert pool.type == "docker"
    assert {"image", "env", "networks"} <= set(pool.base_job_template["variables"]["properties"])
    assert deployment.work_pool_name == "segops-docker"
    assert deployment.job_variables == {"image": "segops:test", "env": {"SEGOPS_NOTE": "1"}}
    assert deployment.parameters["workspace"] == "."
    assert _host_paths(deployment, checkout, ROOT) == []


def test_host_paths_are_refused_before_anything_is_created(api, checkout, tmp_path):
    from flows.code_source import SourceError
    from flows.deployments import ScheduleError, deploy_retrain

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    cases = [
        (["--params", str(outside / "params.yaml")], "params file .* is outside the checkout"),
        (["--dataset", str(outside)], "dataset .* is outside the checkout"),
        (["--params", "../sub/../params.yaml", "--commit", "HEAD~1"], "is not a commit"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(_cli(), ["schedule", "--cron", RARE_CRON, *args])
        assert isinstance(result.exception, SourceError), result.output
        assert __import__("re").search(message, str(result.exception)), str(result.exception)
    (checkout / "new.yaml").write_text((ROOT / "params.yaml").read_text())
    result = CliRunner().invoke(_cli(), ["schedule", "--cron", RARE_CRON, "-p", "../new.yaml"])
    assert "params file new.yaml is not in commit" in str(result.exception)
    _git(checkout, "remote", "set-url", "origin", str(tmp_path / "origin.git"))
    result = CliRunner().invoke(_cli(), ["schedule", "--cron", RARE_CRON])
    assert "a folder of this machine" in str(result.exception)
    with pytest.raises(ScheduleError, match="is a path of this machine"):
        deploy_retrain(None, repository=REMOTE, commit=SHA, params=str(checkout / "params.yaml"))
    with pytest.raises(ScheduleError, match="full 40-character SHA"):
        deploy_retrain(None, repository=REMOTE, commit="HEAD")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {
            d.name for d in client.read_deployments(limit=50, sort="NAME_ASC")
        }  # 3.8: not None
    assert "retrain-scheduled" not in names  # the refused deploys' name: nothing was created


def test_a_worker_clones_the_commit_and_runs_it(api, tmp_path, monkeypatch):
    """The whole path on one host: deploy this project's HEAD (file:// URL, explicit), trigger
    a run, a process worker in an unrelated folder clones the commit and runs the flow there;
    the stores come from the worker's environment."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from flows.deployments import deploy_retrain
    from segops.data.shapes import generate_shapes

    dataset = generate_shapes(tmp_path / "shapes", n=60, size=32, seed=4)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    overrides = [  # the dataset is imported into the clone's data/ by the flow (place-data)
        f"data.root={dataset}",
        "data.image_size=32",
        "data.val_fraction=0.34",
        "model.options={width: 8, depth: 2}",
        "train.epochs=1",
        "train.batch_size=8",
        "train.warmup_epochs=0",
        "evaluate.worst_k=2",
        f"promotion.model_name={MODEL}",
        "promotion.bootstrap_samples=200",
    ]
    head = _git(ROOT, "rev-parse", "HEAD")
    deployment_id = deploy_retrain(
        None, repository=f"file://{ROOT}", commit=head, name="run-test", overrides=overrides
    )
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(UUID(deployment_id))
    worker_log = tmp_path / "worker.log"
    (tmp_path / "elsewhere").mkdir()
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", "segops-process", "--run-once"]
    env = prefect_env(api, tmp_path / "worker-home")
    worker = start(cmd, worker_log, env, cwd=tmp_path / "elsewhere")
    try:
        worker.wait(timeout=300)  # --run-once: returns when the run has finished
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running after 300 s:\n{worker_log.read_text()[-4000:]}")
    finally:
        stop(worker)
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30  # the final state may land just after the worker exits
        while not (state := client.read_flow_run(run.id).state).is_final():
            assert time.monotonic() < deadline, f"run stuck in {state.name}"
            time.sleep(1)
    assert state.is_completed(), f"{state.name}: {state.message}\n{worker_log.read_text()[-4000:]}"
    version = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_model_version(MODEL, "1")
    assert version.tags.get("promotion.promote") == "true"
    assert version.tags.get("segops.git.commit", head) == head  # the clone's commit
    assert not (tmp_path / "elsewhere" / "data").exists()  # the run worked in its own clone
