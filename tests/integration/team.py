"""Helpers of the team-stack tests: the stack brought up through the CLI, clones of this
repository that share nothing but the servers, and `segops` run inside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from servers import BIN, start

REPO = Path(__file__).resolve().parents[2]
SEGOPS = str(BIN / "segops")
MODEL = "segops-shapes"  # promotion.model_name=auto on data/shapes
# A tiny U-Net, one epoch on 24 images of 32x32: each flow run is seconds of compute.
TINY = [
    "data.image_size=32",
    "model.options={width: 4, depth: 2}",
    "train.epochs=1",
    "train.batch_size=8",
    "evaluate.worst_k=2",
]


def postgres_missing() -> bool:
    found = shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return not found


def stack_root() -> Path:
    """A folder the `postgres` user can traverse (pytest's tmp folders are mode 700)."""
    root = Path(tempfile.mkdtemp(prefix="segops-stack-", dir="/tmp"))
    root.chmod(0o755)
    return root


def stack_cli(root: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SEGOPS, "stack", *args, "--root", str(root / ".stack")],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
    )


def parse_exports(stdout: str) -> dict[str, str]:
    lines = [ln.removeprefix("export ") for ln in stdout.splitlines() if ln.startswith("export ")]
    return dict(ln.split("=", 1) for ln in lines)


def clone(dest: Path) -> Path:
    """A fresh clone of this repository's HEAD (committed work only), or of the commit in
    $SEGOPS_TEAM_COMMIT (to prove an earlier commit while HEAD is broken mid-refactor)."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    if commit := os.environ.get("SEGOPS_TEAM_COMMIT"):
        subprocess.run(["git", "checkout", "-q", commit], cwd=dest, check=True, timeout=60)
    return dest


def clone_env(exports: dict[str, str], where: Path) -> dict[str, str]:
    """This process's test environment, pointed at the stack, with the clone's own homes and
    code: the clone ahead of sys.path, so its `segops` and `flows` are imported rather than
    the editable install's (a meta-path finder, consulted after sys.path)."""
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH")) if p)
    return dict(
        os.environ,
        **exports,
        PYTHONPATH=path,
        PREFECT_HOME=str(where / ".prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DVC_NO_ANALYTICS="1",
        PYTHONUNBUFFERED="1",
    )


class Segops:
    """`segops ARGS` running in `where`, output (merged) to a log file beside the folder."""

    def __init__(self, where: Path, env: dict[str, str], *args: str) -> None:
        self.log = where.parent / f"{where.name}-{args[0]}-{time.monotonic_ns()}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [SEGOPS, *args], cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until `text` is in the output (or the process ended)."""
        deadline = time.monotonic() + timeout
        while text not in self.output() and self.proc.poll() is None:
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.output()}"
            time.sleep(0.2)
        assert text in self.output(), f"ended without {text!r}:\n{self.output()[-3000:]}"

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.proc.wait(timeout)
        return self.proc.returncode, self.output()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def tracked(repo: Path, folder: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=repo, capture_output=True, text=True)
    return set(out.stdout.split())


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def wait_flow_run(api: str, flow_run_id: str, timeout: float) -> str:
    """The final state type of a flow run (REST API), or the last one seen at `timeout`."""
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = (flow_run(api, flow_run_id).get("state") or {}).get("type", "UNKNOWN")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    return state


def start_worker(where: Path, env: dict[str, str], pool: str) -> tuple[subprocess.Popen, Path]:
    """A process worker in clone `where` taking one flow run at a time; (process, its log)."""
    log = where.parent / f"worker-{where.name}.log"
    cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    cmd += ["--name", f"team-{where.name}", "--limit", "1"]
    return start(cmd, log, env | {"PREFECT_LOGGING_LEVEL": "INFO"}, where), log


def flow_run(api: str, flow_run_id: str) -> dict:
    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=10) as resp:
        return json.loads(resp.read())


DEPLOY = """
import json, sys
from uuid import UUID
from prefect.client.orchestration import get_client
from flows.deployments import deploy_retrain
repository, commit, runs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
found = deploy_retrain(None, repository=repository, commit=commit, name="team")
with get_client(sync_client=True) as client:
    for overrides, folder in runs:
        run = client.create_flow_run_from_deployment(
            UUID(found), parameters={"overrides": overrides}, job_variables={"working_dir": folder}
        )
        print("flow run", run.id)
"""
CLONED = REPO.name  # the pull step clones into <working_dir>/<repository name>


def deploy_and_trigger(
    where: Path, env: dict[str, str], *runs: tuple[list[str], Path]
) -> list[str]:
    """Deploy `retrain/team` (this clone's HEAD, which each flow run clones from REPO) and
    create one flow run per (overrides, working folder); returns the flow run ids. The
    worker runs the flow in <folder>/CLONED and leaves it there (its temp folder otherwise)."""
    for _, folder in runs:
        folder.mkdir(parents=True, exist_ok=True)
    commit = git(where, "rev-parse", "HEAD")
    payload = json.dumps([(overrides, str(folder)) for overrides, folder in runs])
    args = [sys.executable, "-c", DEPLOY, f"file://{REPO}", commit, payload]
    done = subprocess.run(args, cwd=where, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    return [ln.removeprefix("flow run ").strip() for ln in lines if ln.startswith("flow run ")]


def sets(*overrides: str) -> list[str]:
    """`--set` arguments of `segops run`."""
    return [arg for o in overrides for arg in ("--set", o)]


def client(exports: dict[str, str]):
    """An MlflowClient of the stack's tracking server (tracking and registry)."""
    from mlflow import MlflowClient

    uri = exports["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def dvc_md5(dvc_text: str) -> str:
    import yaml

    return yaml.safe_load(dvc_text)["outs"][0]["md5"]


def on_dvc_remote(stack_root: Path, md5: str) -> bool:
    """Whether the stack's DVC remote (s3://dvc/segops, a folder of its S3 server) holds `md5`."""
    return (stack_root / "s3" / "dvc" / "segops" / "files" / "md5" / md5[:2] / md5[2:]).is_file()
