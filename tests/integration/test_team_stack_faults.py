"""Faults against the team stack (fixtures in conftest.py; runs after test_team_stack.py, whose
two flow runs made versions 1 and 2): S3 down before a run, S3 stopped in the middle of
`dvc push`, the Prefect server restarted while the clones' workers poll, the MLflow server
killed during training. Each leaves the champion and the earlier versions untouched."""

from __future__ import annotations

import time

import pytest

from segops.stack.procs import stop
from tests.integration import team
from tests.integration.s3cut import CutOnFirstUpload

pytestmark = pytest.mark.slow


def _registry(exports: dict[str, str]) -> dict:
    """Versions of the model, each one's promotion tag, and the champion."""
    client = team.client(exports)
    versions = client.search_model_versions(f"name = '{team.MODEL}'")
    return {
        "versions": {v.version: v.tags.get("promotion.promote") for v in versions},
        "champion": client.get_model_version_by_alias(team.MODEL, "champion").version,
    }


def _clone_state(clone) -> dict:
    runs = clone / "runs"
    return {
        "data.dvc": (clone / "data.dvc").read_text(),
        "runs": sorted(p.name for p in runs.iterdir()) if runs.is_dir() else [],
    }


def test_s3_down_stops_a_run_before_training_and_writes_nothing(stack, two_runs):
    root, exports = stack
    clone, env = two_runs["clones"][0], two_runs["envs"][0]
    before = _clone_state(clone) | _registry(exports)
    assert stop(["s3"], root) == ["s3"]
    try:
        started = time.monotonic()
        rc, out = team.Segops(clone, env, "run", *team.sets(*team.TINY, "train.seed=7")).finish(120)
        assert rc == 2, out[-3000:]
        assert f"S3 endpoint {exports['AWS_ENDPOINT_URL']} unreachable" in out
        assert time.monotonic() - started < 60
    finally:
        up = team.stack_cli(root.parent, "up")  # restarts only the S3 server
        assert up.returncode == 0, up.stderr[-2000:]
    after = _clone_state(clone) | _registry(exports)
    assert after == before


def test_s3_stopped_during_dvc_push_fails_naming_the_remote_and_registers_nothing(stack, two_runs):
    """New data in clone 1; its `segops run` reaches S3 through a proxy that stops the S3
    server at the first upload of `dvc push` (the version step). The flow fails naming the
    remote; data.dvc, the registry and the champion are as before. The rerun of this data,
    once S3 is back, is the next test's flow run."""
    root, exports = stack
    clone, env = two_runs["clones"][0], two_runs["envs"][0]
    maker = team.Segops(clone, env, "data", "shapes", "--n", "24", "--size", "32", "--seed", "9")
    assert maker.finish()[0] == 0, maker.output()
    before = _clone_state(clone) | _registry(exports)
    # Test speed: botocore would retry each refused upload for about a minute first.
    env = env | {"AWS_MAX_ATTEMPTS": "1"}
    cut = CutOnFirstUpload(
        int(exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]), lambda: stop(["s3"], root)
    )
    try:
        run = team.Segops(
            clone,
            env | {"AWS_ENDPOINT_URL": cut.url},
            "run",
            *team.sets(*team.TINY, "train.seed=9"),
        )
        rc, out = run.finish(300)
    finally:
        cut.close()
        up = team.stack_cli(root.parent, "up")  # restarts only the S3 server
        assert up.returncode == 0, up.stderr[-2000:]
    assert cut.cut_done.is_set(), f"no upload went through the proxy: {cut.requests}\n{out[-3000:]}"
    assert rc != 0, out[-3000:]
    assert "dvc push of data to remote 'local' (s3://dvc/segops) failed: " in out, out[-3000:]
    after = _clone_state(clone) | _registry(exports)
    assert after | {"runs": []} == before | {"runs": []}  # data.dvc, versions, champion
    for new in set(after["runs"]) - set(before["runs"]):  # nothing trained: a report only
        assert [p.name for p in (clone / "runs" / new).iterdir()] == ["validation"]


def test_prefect_restarted_while_workers_poll_then_the_next_run_completes(stack, two_runs):
    """The Prefect server stops and comes back while the clones' workers poll; both workers
    stay up and the next flow run (the rerun of the data whose push failed above, with S3
    back) completes and registers one more version, its dataset now on the S3 remote."""
    root, exports = stack
    clone, env = two_runs["clones"][0], two_runs["envs"][0]
    versions = _registry(exports)["versions"]
    assert stop(["prefect"], root) == ["prefect"]
    time.sleep(15)  # longer than a worker's poll interval (10 s): each one meets the outage
    up = team.stack_cli(root.parent, "up")  # restarts only the Prefect server
    assert up.returncode == 0 and up.stderr.count(": started") == 1, up.stderr[-2000:]
    assert all(proc.poll() is None for proc, _ in two_runs["workers"])
    data = clone / "data" / "shapes"
    overrides = [*team.TINY, "train.seed=9", f"data.root={data}"]
    (flow_run,) = team.deploy_and_trigger(clone, env, (overrides, clone.parent / "rerun"))
    state = team.wait_flow_run(exports["PREFECT_API_URL"], flow_run, timeout=400)
    logs = [log.read_text(errors="replace") for _, log in two_runs["workers"]]
    assert state == "COMPLETED", f"{flow_run}: {state}\n" + "\n".join(logs)[-6000:]
    assert any(f"/flow-run/{flow_run}" in log for log in logs)  # a clone's worker ran it
    after = _registry(exports)["versions"]
    assert sorted(after, key=int) == [*sorted(versions, key=int), str(len(versions) + 1)]
    rerun = clone.parent / "rerun" / team.CLONED
    md5 = team.dvc_md5((rerun / "data.dvc").read_text())
    assert team.on_dvc_remote(root, md5)


def test_mlflow_killed_during_training_fails_naming_it_and_registers_nothing(stack, two_runs):
    """The server dies mid-training and comes back only after the run: the flow fails with a
    message naming the server, and every registered version stays complete (decided)."""
    root, exports = stack
    clone = two_runs["clones"][0]
    # No client-side retries: the run fails in seconds rather than after minutes of backoff.
    env = team.clone_env(exports, clone) | {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the epoch lines tell when training runs
    }
    client = team.client(exports)
    before = sorted(v.version for v in client.search_model_versions(f"name = '{team.MODEL}'"))
    champion = client.get_model_version_by_alias(team.MODEL, "champion").version
    run = team.Segops(clone, env, "run", *team.sets(*team.TINY, "train.seed=5", "train.epochs=60"))
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
