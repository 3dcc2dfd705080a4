"""Helpers of the team-stack tests: the stack brought up through the CLI, clones of this
repository that share nothing but the servers, and `segops` run inside them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEGOPS = str(Path(sys.executable).parent / "segops")
MODEL = "segops-shapes"  # promotion.model_name=auto on data/shapes
# A tiny U-Net, one epoch on 24 images of 32x32: each flow run is seconds of compute.
TINY = [
    "data.image_size=32",
    "model.options={width: 4, depth: 2}",
    "train.epochs=1",
    "train.batch_size=8",
    "evaluate.worst_k=2",
]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
    """A fresh clone of this repository's HEAD (committed work only) with its own data."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True, timeout=120)
    return dest


def clone_env(exports: dict[str, str], where: Path) -> dict[str, str]:
    """This process's test environment, pointed at the stack, with the clone's own homes."""
    return dict(
        os.environ,
        **exports,
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


def wait_flow_run(api: str, flow_run: str, timeout: float) -> str:
    """The final state type of a flow run (REST API), or the last one seen at `timeout`."""
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{api}/flow_runs/{flow_run}", timeout=10) as resp:
            state = (json.loads(resp.read()).get("state") or {}).get("type", "UNKNOWN")
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    return state
