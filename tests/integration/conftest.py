"""The team stack and its two concurrent flow runs, shared by the team-stack modules (package
scope: the stack starts once for test_team_stack.py and test_team_stack_faults.py)."""

from __future__ import annotations

import shutil

import pytest
from servers import free_ports, stop

from tests.integration import team


@pytest.fixture(scope="package")
def stack():
    """The stack on free ports in a fresh folder, no workers of its own (the tests run theirs
    in clones); yields (stack folder, export variables)."""
    if team.postgres_missing():
        pytest.skip("needs PostgreSQL: apt-get install postgresql")
    root = team.stack_root()
    pg, s3, mlflow, prefect = free_ports(4)
    ports = ["--postgres-port", str(pg), "--s3-port", str(s3)]
    ports += ["--mlflow-port", str(mlflow), "--prefect-port", str(prefect), "--workers", "0"]
    try:
        up = team.stack_cli(root, "up", *ports)
        assert up.returncode == 0, up.stderr[-3000:]
        yield root / ".stack", team.parse_exports(up.stdout)
    finally:
        down = team.stack_cli(root, "down", timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="package")
def two_runs(stack, tmp_path_factory):
    """Two clones of HEAD, each running a process worker (one flow run at a time) with its own
    code (PYTHONPATH), PREFECT_HOME and data, sharing nothing but the servers; the retrain
    deployment of HEAD (each flow run clones the commit) triggered twice at once, seeds 0
    and 1, each on a dataset folder of its own. Waits for both runs; yields a dict: clones,
    workers [(process, log)], data folders, flow run ids, final states."""
    _, exports = stack
    where = tmp_path_factory.mktemp("clones")
    clones = [team.clone(where / "c1"), team.clone(where / "c2")]
    envs = [team.clone_env(exports, c) for c in clones]
    data = [where / "data-a" / "shapes", where / "data-b" / "shapes"]
    makers = [  # c1 also gets data/shapes of its own, for `segops run` in the fault tests
        team.Segops(clones[0], envs[0], "data", "shapes", *folder, "--n", "24", "--size", "32")
        for folder in ([], [str(data[0])], [str(data[1])])
    ]
    for maker in makers:
        rc, out = maker.finish()
        assert rc == 0, out
    runs = [
        ([*team.TINY, f"train.seed={seed}", f"data.root={folder}"], where / f"run-{seed}")
        for seed, folder in enumerate(data)
    ]
    ids = team.deploy_and_trigger(clones[0], envs[0], *runs)  # the pool is created here
    workers = [
        team.start_worker(c, env, "segops-process") for c, env in zip(clones, envs, strict=True)
    ]
    try:
        api = exports["PREFECT_API_URL"]
        states = [team.wait_flow_run(api, i, timeout=500) for i in ids]
        found = {"clones": clones, "envs": envs, "workers": workers, "data": data}
        found["runs"] = [folder / team.CLONED for _, folder in runs]  # where each flow ran
        yield found | {"ids": ids, "states": states}
    finally:
        for proc, _ in workers:
            stop(proc)
