"""Pipeline overhead of `segops run`: flow wall time minus the train and evaluate compute.

A tiny run (default 200 `shapes` images, 1 epoch) in a fresh git + DVC workspace, run as the
real console command (`segops run`, a new process each time: imports, checks, Prefect, MLflow,
DVC, GX, ONNX, registry, report, exit), in two modes, interleaved:

- embedded: Prefect's temporary local API (PREFECT_API_URL empty), as `make run` does;
- server: a `prefect server start` already running on 127.0.0.1 (PREFECT_API_URL set).

With `--warm` the MLflow store (and the embedded Prefect database) exist before the timed runs,
as they do for every run but a user's first.

Each mode gets its own MLflow store and Prefect home. Per round, each mode runs twice: `first`
(fresh MLflow store, fresh Prefect database for embedded) and `again` (--force, the stores
exist). Overhead = wall of the command - (train + evaluate task time), the task times read from
the run's log. The time before the flow starts (interpreter, imports, checks) and after it ends
(until the process has exited) are printed too, and the flow run's own overhead: its first to
last log line minus the same compute (what a process that has already imported pays).

    python bench/pipeline.py [--images 200] [--epochs 1] [--rounds 1] [--modes embedded,server]
        [--set predict.onnx=false ...]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
COMPUTE = ("train", "evaluate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_workspace(root: Path, images: int) -> Path:
    """A git repository that is a DVC workspace with a local remote and a shapes dataset."""
    from segops.data.shapes import generate_shapes
    from segops.versioning import configure_remote, ensure_workspace

    ws = root / "ws"
    ws.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    ensure_workspace(ws)
    configure_remote(ws, "local", str(root / "remote"))
    generate_shapes(ws / "data" / "shapes", n=images, size=64, seed=0)
    return ws


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }
    return env


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free loopback port; returns it and its API URL."""
    port = free_port()
    env = base_env(home)
    log = open(home / "server.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"prefect server did not answer in 180 s: see {home / 'server.log'}")


LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| \w+ +\| (Task run|Flow run) '([^']+)' - (.*)$")


def _clock(text: str, day: datetime) -> float:
    clock = datetime.strptime(text, "%H:%M:%S.%f").time()
    return datetime.combine(day.date(), clock).timestamp()


def task_times(log: str, day: datetime) -> tuple[dict[str, float], float, float]:
    """Seconds per task from the run's console log, and the flow's first and last log times.

    A task's time runs from the previous "Finished in state" line (or the flow's first line)
    to its own: tasks run one after another, and the flow code between them is a few dict
    operations. (The temporary API keeps no task runs, so the log is what both modes share.)
    """
    times: dict[str, float] = {}
    first = last = mark = None
    for line in log.splitlines():
        match = LOG_LINE.match(line.strip())
        if not match:
            continue
        at, kind, name, message = match.groups()
        now = _clock(at, day)
        first = now if first is None else first
        mark = now if mark is None else mark
        last = now
        if kind == "Task run" and message.startswith("Finished in state"):
            key = name.rsplit("-", 1)[0]  # "train-0ab" -> "train"
            times[key] = times.get(key, 0.0) + now - mark
            mark = now
    if first is None:
        raise RuntimeError("no Prefect log lines in the run's output")
    return times, first, last


def run_once(ws: Path, env: dict[str, str], args, force: bool) -> dict[str, float]:
    cmd = [str(VENV_BIN / "segops"), "run", "--set", f"train.epochs={args.epochs}"]
    cmd += [a for value in args.set for a in ("--set", value)]
    cmd += ["--force"] if force else []
    began = time.time()
    t0 = time.perf_counter()
    env = {**env, "PYTHONUNBUFFERED": "1"}  # lines arrive when printed: their arrival is timed
    proc = subprocess.Popen(
        cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, checked = [], math.nan
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Prefect API:"):  # printed once the CLI's checks have passed
            checked = time.time() - began
    code = proc.wait()
    wall = time.perf_counter() - t0
    ended = time.time()
    log = "".join(lines)
    if code != 0:
        sys.exit(f"segops run failed ({code}):\n{log[-4000:]}")
    times, first, last = task_times(log, datetime.fromtimestamp(began))
    compute = sum(times.get(k, 0.0) for k in COMPUTE)
    return {
        "wall": wall,
        "compute": compute,
        "overhead": wall - compute,
        # the flow run's own wall (its first to last log line): no interpreter start, imports,
        # temporary API start or exit; the "flow wall" read narrowly
        "flow": last - first,
        "flow_overhead": last - first - compute,
        "cli_checks": checked,
        "before_flow": first - began,
        "after_flow": ended - last,
        **{f"task:{k}": v for k, v in sorted(times.items())},
    }


def show(label: str, row: dict[str, float]) -> None:
    head = " ".join(f"{k} {row[k]:.1f}" for k in ("wall", "compute", "overhead"))
    head += f" | flow run {row['flow']:.1f}, its overhead {row['flow_overhead']:.1f}"
    edges = f"CLI up to its checks {row['cli_checks']:.1f}, before flow {row['before_flow']:.1f}"
    edges += f", after flow {row['after_flow']:.1f}"
    tasks = ", ".join(f"{k[5:]} {v:.1f}" for k, v in row.items() if k.startswith("task:"))
    print(f"{label:<18} {head} s ({edges}); tasks: {tasks}", flush=True)


def warm_stores(ws: Path, env: dict[str, str], mode: str) -> None:
    """Create the MLflow store (and, embedded, Prefect's database) before the timed runs: a
    user's stores exist after the first run ever."""
    code = "from segops import tracking; from segops.config import TrackingConfig; "
    code += "tracking.connect(TrackingConfig())"
    subprocess.run([sys.executable, "-c", code], cwd=ws, env=env, check=True)
    if mode == "embedded":
        cmd = [str(VENV_BIN / "prefect"), "server", "database", "upgrade", "-y"]
        subprocess.run(cmd, cwd=ws, env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--modes", default="embedded,server")
    parser.add_argument("--runs", default="first,again", help="first (new data), again (--force)")
    parser.add_argument(
        "--warm", action="store_true", help="create the MLflow and Prefect databases untimed"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="a config override for every run, repeatable"
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory(prefix="segops-bench-") as tmp:
        server, url = None, ""
        if "server" in modes:
            (Path(tmp) / "server").mkdir()
            server, url = start_server(Path(tmp) / "server")
            print(f"prefect server at {url}")
        try:
            for r in range(args.rounds):
                runs = {}
                for mode in modes:  # a fresh workspace and MLflow store per round and mode
                    home = Path(tmp) / f"r{r}" / mode
                    env = base_env(home)
                    if mode == "server":  # the client reads the server's database afterwards
                        env |= {"PREFECT_API_URL": url, "PREFECT_HOME": f"{tmp}/server/prefect"}
                    runs[mode] = (make_workspace(home, args.images), env)
                    if args.warm:
                        warm_stores(runs[mode][0], env, mode)
                order = modes if r % 2 == 0 else modes[::-1]  # alternate who goes first
                for label in args.runs.split(","):
                    force = label == "again"
                    for mode in order:
                        show(f"{mode} {label}", run_once(*runs[mode], args, force))
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
