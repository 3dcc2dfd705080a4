"""Pipeline overhead of `segops run` against the local production stack, next to embedded.

Overhead = wall time of the command - (train + evaluate task time), measured as
`bench/pipeline.py` does (same workspace, same tiny run, task times from the run's log), in two
modes, each with a fresh workspace:

- embedded: Prefect's temporary API, MLflow on SQLite, DVC remote a local folder;
- stack: `segops stack up` (PostgreSQL, S3 server, MLflow server with proxied S3 artifacts,
  Prefect server) on free loopback ports, started once, untimed; DVC remote on S3.

Each mode runs `first` (new data) and `again` (--force, stores exist).

    python bench/pipeline_stack.py [--images 200] [--epochs 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import VENV_BIN, base_env, free_port, make_workspace, run_once, show


def stack_up(root: Path) -> dict[str, str]:
    """The stack in `root` on free ports (no workers); returns its export variables."""
    ports = [str(free_port()) for _ in range(4)]
    flags = ["--postgres-port", ports[0], "--s3-port", ports[1], "--mlflow-port", ports[2]]
    flags += ["--prefect-port", ports[3], "--workers", "0", "--root", str(root / ".stack")]
    cmd = [str(VENV_BIN / "segops"), "stack", "up", *flags]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        sys.exit(f"segops stack up failed:\n{done.stderr[-4000:]}")
    lines = [ln.removeprefix("export ") for ln in done.stdout.splitlines() if "=" in ln]
    return dict(ln.split("=", 1) for ln in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    # PostgreSQL runs as `postgres` when we are root: the folder must be open to it.
    root = Path(tempfile.mkdtemp(prefix="segops-bench-stack-", dir="/tmp"))
    root.chmod(0o755)
    try:
        exports = stack_up(root)
        print(f"stack up: MLflow {exports['MLFLOW_TRACKING_URI']}", flush=True)
        runs = {}
        for mode in ("embedded", "stack"):
            home = root / mode
            env = base_env(home) | (exports if mode == "stack" else {})
            env["PREFECT_HOME"] = str(home / "prefect")
            runs[mode] = (make_workspace(home, args.images), env)
        for label in ("first", "again"):
            for mode in ("embedded", "stack"):
                show(f"{mode} {label}", run_once(*runs[mode], args, label == "again"))
    finally:
        cmd = [str(VENV_BIN / "segops"), "stack", "down", "--root", str(root / ".stack")]
        subprocess.run(cmd, capture_output=True, timeout=120)
        subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()
