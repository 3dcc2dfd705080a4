"""Team mode end to end: the local production stack (`segops stack up`, fixtures in
conftest.py), two process workers in two clones of this repository that share nothing but the
servers each take one of two flow runs of the retrain deployment at once, and a third fresh
clone holding only the server URLs audits, reproduces, lists and serves the champion.

One stack for the package (about a minute to start); each flow run trains a tiny U-Net for
one epoch. The fault tests are in test_team_stack_faults.py (run after this module).
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request

import pytest
from servers import free_port, start, stop, wait_until_up

from tests.integration import team

pytestmark = pytest.mark.slow


def test_stack_status_reports_every_service_healthy(stack):
    root, exports = stack
    status = team.stack_cli(root.parent, "status")
    assert status.returncode == 0, status.stdout
    names = [line.split()[0] for line in status.stdout.splitlines()]
    assert names == ["postgres", "s3", "mlflow", "prefect"]  # its workers: --workers 0
    assert all(" healthy " in line for line in status.stdout.splitlines())
    assert exports["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert exports["SEGOPS_DVC_REMOTE_URL"] == "s3://dvc/segops"
    again = team.stack_cli(root.parent, "up")  # idempotent: nothing restarted
    assert again.returncode == 0 and again.stderr.count(": running") == 4, again.stderr


def test_two_workers_in_two_clones_run_at_once_and_one_champion_results(stack, two_runs):
    _, exports = stack
    api = exports["PREFECT_API_URL"]
    logs = [log.read_text(errors="replace") for _, log in two_runs["workers"]]
    for flow_run, state in zip(two_runs["ids"], two_runs["states"], strict=True):
        assert state == "COMPLETED", f"flow run {flow_run}: {state}\n" + "\n".join(logs)[-6000:]
    # Each worker (one flow run at a time) ran one of the two (a worker may also try to
    # submit the other and be refused: the run is PENDING on the other worker already).
    taken = [{i for i in two_runs["ids"] if f"/flow-run/{i}" in log} for log in logs]
    assert sorted(map(len, taken)) == [1, 1] and taken[0] != taken[1], taken
    # ... and the two ran at once: each started before the other ended.
    a, b = (team.flow_run(api, i) for i in two_runs["ids"])
    assert a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]
    client = team.client(exports)
    versions = client.search_model_versions(f"name = '{team.MODEL}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    champion = client.get_model_version_by_alias(team.MODEL, "champion")
    holders = [
        v for v in versions if "champion" in client.get_model_version(v.name, v.version).aliases
    ]
    assert [v.version for v in holders] == [champion.version]


def test_artifacts_are_on_s3_and_nothing_is_on_the_clones(stack, two_runs):
    root, exports = stack
    client = team.client(exports)
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
        md5 = team.dvc_md5((on_s3 / "lineage" / "data.dvc").read_text())
        assert team.on_dvc_remote(root, md5), f"dataset {md5} of {run.info.run_id} not on S3"
    # The checkouts the flows ran in (kept by the workers) and the workers' clones hold
    # nothing but git-tracked files under mlflow/.
    for checkout in [*two_runs["runs"], *two_runs["clones"]]:
        assert (checkout / "params.yaml").is_file(), checkout
        local = {str(p.relative_to(checkout)) for p in team.files_under(checkout / "mlflow")}
        assert local <= team.tracked(checkout, "mlflow"), f"artifacts on {checkout}: {local}"


def test_a_third_clone_audits_reproduces_lists_and_serves_the_champion(
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
    port = free_port()  # while the others run: `segops serve` loads it through the server
    server = start(
        [team.SEGOPS, "serve", champion, "--port", str(port)], third / "serve.log", env, third
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, third / "serve.log", timeout=240)
        status, body = _predict(f"http://127.0.0.1:{port}/invocations", [(20, 30), (33, 17)])
    finally:
        stop(server)
    done = {name: p.finish() for name, p in procs.items()}
    assert status == 200, body
    assert len(body["predictions"]) == 2, body
    for name, (rc, out) in done.items():
        assert rc == 0, f"{name} failed:\n{out[-4000:]}"
    assert "lineage intact" in done["audit"][1]
    report = third / "runs" / "reproduce" / f"{team.MODEL}-at-champion" / "reproduce.json"
    assert json.loads(report.read_text())["weights_identical"] is True
    events = [json.loads(ln) for ln in done["history"][1].splitlines() if ln.startswith("{")]
    decided = [e["version"] for e in events if e["event"] == "decided"]
    assert sorted(decided) == ["1", "2"]
    assert not (third / "data").exists() or not any((third / "data").iterdir())  # only URLs
    assert time.monotonic() - started < 300


def _predict(url: str, shapes: list[tuple[int, int]]) -> tuple[int, dict]:
    """POST one PNG per (height, width) to a scoring server; (status, JSON body)."""
    import numpy as np
    from PIL import Image

    records = []
    for h, w in shapes:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, "PNG")
        records.append({"image": base64.b64encode(buf.getvalue()).decode()})
    body = json.dumps({"dataframe_records": records}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}
