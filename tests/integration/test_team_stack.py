"""Team mode end to end: the local production stack (`segops stack up`), two clones of this
repository that share nothing but the servers each run the retrain flow at once, and a third
fresh clone holding only the server URLs audits, reproduces and loads the champion.

One stack per module (about a minute to start); each flow run trains a tiny U-Net for one epoch.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration import team

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        team.postgres_missing(), reason="needs PostgreSQL: apt-get install postgresql"
    ),
]

PREDICT = """
import base64, io, mlflow, numpy as np, pandas as pd
from PIL import Image
buf = io.BytesIO()
Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(buf, "PNG")
rows = pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode()] * 2})
out = mlflow.pyfunc.load_model("models:/NAME@champion").predict(rows)
print("predicted", len(out))
"""


@pytest.fixture(scope="module")
def stack():
    """The stack on free ports in a fresh folder; yields (stack folder, export variables)."""
    root = team.stack_root()
    pg, s3, mlflow, prefect = team.free_ports(4)
    ports = ["--postgres-port", str(pg), "--s3-port", str(s3)]
    ports += ["--mlflow-port", str(mlflow), "--prefect-port", str(prefect), "--workers", "1"]
    try:
        up = team.stack_cli(root, "up", *ports)
        assert up.returncode == 0, up.stderr[-3000:]
        yield root / ".stack", team.parse_exports(up.stdout)
    finally:
        down = team.stack_cli(root, "down", timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stderr


DEPLOY = """
import json, sys
from uuid import UUID
from prefect.client.orchestration import get_client
from flows.deployments import deploy_retrain
repository, commit, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
found = deploy_retrain(None, repository=repository, commit=commit, name="team", overrides=overrides)
with get_client(sync_client=True) as client:
    print("flow run", client.create_flow_run_from_deployment(UUID(found)).id)
"""


@pytest.fixture(scope="module")
def two_runs(stack, tmp_path_factory):
    """Two flow runs at once that share nothing but the servers: `segops run` in a clone
    (its own data, PREFECT_HOME), and a deployment of this commit run by a stack worker (the
    pull step clones the commit; the dataset comes from a folder of its own). Different seeds:
    two versions. Yields {"clone": (clone, code, output), "worker": (state, flow run id)}."""
    _, exports = stack
    where = tmp_path_factory.mktemp("clones")
    clone = team.clone(where / "c1")
    env = team.clone_env(exports, clone)
    for args in (["data", "shapes"], ["data", "shapes", str(where / "worker-data" / "shapes")]):
        rc, out = team.Segops(clone, env, *args, "--n", "24", "--size", "32").finish()
        assert rc == 0, out
    run = team.Segops(clone, env, "run", *_sets(*team.TINY, "train.seed=0"))
    # The deployment is made once the run passed its store checks (3 s probes, which a
    # flow's start-up on this 2-core machine can starve): the two flows still overlap.
    run.wait_for("Prefect API:")
    overrides = [*team.TINY, "train.seed=1", f"data.root={where / 'worker-data' / 'shapes'}"]
    commit = team.git(clone, "rev-parse", "HEAD")
    deploy = subprocess.run(
        [sys.executable, "-c", DEPLOY, f"file://{team.REPO}", commit, json.dumps(overrides)],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr[-3000:]
    flow_run = deploy.stdout.split("flow run ")[-1].strip()
    result = {"clone": (clone, *run.finish())}
    state = team.wait_flow_run(exports["PREFECT_API_URL"], flow_run, timeout=400)
    return result | {"worker": (state, flow_run)}


def _sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def _client(exports: dict[str, str]):
    from mlflow import MlflowClient

    uri = exports["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_stack_status_reports_every_service_healthy(stack):
    root, exports = stack
    status = team.stack_cli(root.parent, "status")
    assert status.returncode == 0, status.stdout
    names = [line.split()[0] for line in status.stdout.splitlines()]
    assert names == ["postgres", "s3", "mlflow", "prefect", "worker-1"]
    assert all(" healthy " in line for line in status.stdout.splitlines())
    assert exports["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert exports["SEGOPS_DVC_REMOTE_URL"] == "s3://dvc/segops"
    again = team.stack_cli(root.parent, "up")  # idempotent: nothing restarted
    assert again.returncode == 0 and again.stderr.count(": running") == 5, again.stderr


def test_a_clone_and_a_worker_run_at_once_and_one_champion_results(stack, two_runs):
    root, exports = stack
    clone, rc, out = two_runs["clone"]
    assert rc == 0, f"{clone}:\n{out[-4000:]}"
    state, flow_run = two_runs["worker"]
    worker_log = (root / "logs" / "worker-1.log").read_text(errors="replace")
    assert state == "COMPLETED", f"flow run {flow_run}: {state}\n{worker_log[-4000:]}"
    client = _client(exports)
    versions = client.search_model_versions(f"name = '{team.MODEL}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    champion = client.get_model_version_by_alias(team.MODEL, "champion")
    holders = [
        v for v in versions if "champion" in client.get_model_version(v.name, v.version).aliases
    ]
    assert [v.version for v in holders] == [champion.version]


def test_artifacts_are_on_s3_and_nothing_is_on_the_clones(stack, two_runs):
    root, exports = stack
    client = _client(exports)
    bucket = root / "s3" / "mlflow"
    for version in client.search_model_versions(f"name = '{team.MODEL}'"):
        run = client.get_run(version.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        on_s3 = bucket / run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
        for name in ("config.yaml", "eval/metrics.json", "lineage/data.dvc", "history.csv"):
            assert (on_s3 / name).is_file(), f"{name} of run {run.info.run_id} not on S3"
        model = client.get_logged_model(version.source.removeprefix("models:/"))
        weights = bucket / model.artifact_location.removeprefix("mlflow-artifacts:/")
        assert any(p.name == "MLmodel" for p in team.files_under(weights))
        md5 = _dvc_md5((on_s3 / "lineage" / "data.dvc").read_text())
        manifest = root / "s3" / "dvc" / "segops" / "files" / "md5" / md5[:2] / md5[2:]
        assert manifest.is_file(), f"dataset {md5} of run {run.info.run_id} is not on S3"
    clone = two_runs["clone"][0]
    local = {str(p.relative_to(clone)) for p in team.files_under(clone / "mlflow")}
    assert local <= team.tracked(clone, "mlflow"), f"artifacts on {clone}: {local}"


def _dvc_md5(dvc_text: str) -> str:
    import yaml

    return yaml.safe_load(dvc_text)["outs"][0]["md5"]


def test_a_third_clone_audits_reproduces_lists_and_loads_the_champion(
    stack, two_runs, tmp_path_factory
):
    _, exports = stack
    third = team.clone(tmp_path_factory.mktemp("third") / "c3")
    env = team.clone_env(exports, third)
    champion = f"models:/{team.MODEL}@champion"
    started = time.monotonic()
    procs = {
        "audit": team.Segops(third, env, "audit", champion),
        "reproduce": team.Segops(third, env, "reproduce", champion),
        "history": team.Segops(third, env, "models", "history", team.MODEL, "--json"),
    }
    predict = PREDICT.replace("NAME", team.MODEL)
    predicted = subprocess.run(  # while the others run
        [sys.executable, "-c", predict], cwd=third, env=env, capture_output=True, text=True
    )
    done = {name: p.finish() for name, p in procs.items()}
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr[-4000:]
    for name, (rc, out) in done.items():
        assert rc == 0, f"{name} failed:\n{out[-4000:]}"
    assert "lineage intact" in done["audit"][1]
    report = third / "runs" / "reproduce" / f"{team.MODEL}-at-champion" / "reproduce.json"
    assert json.loads(report.read_text())["weights_identical"] is True
    events = [json.loads(ln) for ln in done["history"][1].splitlines() if ln.startswith("{")]
    decided = [e["version"] for e in events if e["event"] == "decided"]
    assert sorted(decided) == ["1", "2"]
    assert "predicted 2" in predicted.stdout
    assert not (third / "data").exists() or not any((third / "data").iterdir())  # only URLs
    assert time.monotonic() - started < 240


def test_s3_down_stops_a_run_before_training_and_writes_nothing(stack, two_runs):
    from segops.stack.procs import stop

    root, exports = stack
    clone = two_runs["clone"][0]
    env = team.clone_env(exports, clone)
    client = _client(exports)
    before = {
        "data.dvc": (clone / "data.dvc").read_text(),
        "runs": sorted(p.name for p in (clone / "runs").iterdir()),
        "versions": sorted(
            v.version for v in client.search_model_versions(f"name = '{team.MODEL}'")
        ),
        "champion": client.get_model_version_by_alias(team.MODEL, "champion").version,
    }
    assert stop(["s3"], root) == ["s3"]
    try:
        started = time.monotonic()
        rc, out = team.Segops(clone, env, "run", *_sets(*team.TINY, "train.seed=7")).finish(120)
        assert rc == 2, out[-3000:]
        assert f"S3 endpoint {exports['AWS_ENDPOINT_URL']} unreachable" in out
        assert time.monotonic() - started < 60
    finally:
        up = team.stack_cli(root.parent, "up")  # restarts only the S3 server
        assert up.returncode == 0, up.stderr[-2000:]
    after = {
        "data.dvc": (clone / "data.dvc").read_text(),
        "runs": sorted(p.name for p in (clone / "runs").iterdir()),
        "versions": sorted(
            v.version for v in client.search_model_versions(f"name = '{team.MODEL}'")
        ),
        "champion": client.get_model_version_by_alias(team.MODEL, "champion").version,
    }
    assert after == before


def test_mlflow_killed_during_training_fails_naming_it_and_registers_nothing(stack, two_runs):
    """The server dies mid-training and comes back only after the run: the flow fails with a
    message naming the server, and every registered version stays complete (decided)."""
    from segops.stack.procs import stop

    root, exports = stack
    clone = two_runs["clone"][0]
    # No client-side retries: the run fails in seconds rather than after minutes of backoff.
    env = team.clone_env(exports, clone) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the epoch lines tell when training runs
    }
    client = _client(exports)
    before = sorted(v.version for v in client.search_model_versions(f"name = '{team.MODEL}'"))
    champion = client.get_model_version_by_alias(team.MODEL, "champion").version
    run = team.Segops(clone, env, "run", *_sets(*team.TINY, "train.seed=5", "train.epochs=60"))
    try:
        run.wait_for("train loss", timeout=240)  # the first epoch ended: training runs
        assert stop(["mlflow"], root) == ["mlflow"]
        rc, out = run.finish(240)
    finally:
        up = team.stack_cli(root.parent, "up")  # restarts only the MLflow server
        assert up.returncode == 0, up.stderr[-2000:]
    assert rc != 0, out[-3000:]
    assert exports["MLFLOW_TRACKING_URI"].removeprefix("http://") in out, out[-3000:]
    versions = client.search_model_versions(f"name = '{team.MODEL}'")
    assert sorted(v.version for v in versions) == before
    assert all(v.tags.get("promotion.promote") in ("true", "false") for v in versions)
    assert client.get_model_version_by_alias(team.MODEL, "champion").version == champion
