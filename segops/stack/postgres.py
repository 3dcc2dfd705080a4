"""PostgreSQL of the local stack: a cluster in <root>/postgres made with initdb, run with
pg_ctl on 127.0.0.1 (socket in the data folder), databases created with psql. PostgreSQL
refuses to run as root: as root, its commands run as the `postgres` user (runuser)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from segops.stack.procs import StackError

INSTALL = "apt-get install -y postgresql (Debian/Ubuntu), then run this again"


def binary(name: str) -> str:
    """Path of a PostgreSQL program: on PATH, else Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    raise StackError(f"PostgreSQL's {name} is not installed: {INSTALL}")


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        raise StackError("running as root needs `runuser` to start PostgreSQL as `postgres`")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str], what: str, timeout: float = 120) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise StackError(f"{what} failed ({' '.join(cmd)}):\n{out.stdout}{out.stderr}".strip())
    return out.stdout


def _give_to_postgres(path: Path) -> None:
    """As root, hand `path` to the postgres user and check that user can reach it."""
    if os.geteuid() != 0:
        return
    shutil.chown(path, "postgres", "postgres")
    probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(path)])
    if probe.returncode != 0:
        raise StackError(
            f"the postgres user cannot write {path}: a folder above it is closed to other "
            "users (e.g. mode 700); put the stack in a folder others can traverse (--root)"
        )


def start(data: Path, port: int, log: Path) -> None:
    """initdb `data` if new, then start the server on 127.0.0.1:`port` (no-op if running)."""
    if is_ready(data, port):
        return
    data.mkdir(parents=True, exist_ok=True)
    _give_to_postgres(data)
    if not (data / "PG_VERSION").is_file():
        initdb = [binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        _run(_as_owner(initdb), "initdb")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    _give_to_postgres(log)
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = [binary("pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60"]
    _run(_as_owner([*pg_ctl, "start"]), f"starting PostgreSQL (log: {log})")


def stop(data: Path) -> bool:
    """Stop the server of `data` if it runs; returns whether it did."""
    if not (data / "postmaster.pid").is_file():
        return False
    cmd = [binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    subprocess.run(_as_owner(cmd), capture_output=True, timeout=60)
    return True


def is_ready(data: Path, port: int) -> bool:
    """pg_isready on 127.0.0.1:`port`."""
    if not (data / "postmaster.pid").is_file():
        return False
    try:
        probe = [binary("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "2"]
    except StackError:
        return False
    return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0


def ensure_databases(port: int, names: list[str]) -> None:
    """Create each database in `names` that does not exist yet."""
    psql = [binary("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tA"]
    have = set(_run([*psql, "-c", "SELECT datname FROM pg_database"], "psql").split())
    for name in names:
        if name not in have:
            _run([*psql, "-c", f'CREATE DATABASE "{name}"'], f"creating database {name}")


def url(port: int, database: str, driver: str) -> str:
    """SQLAlchemy URL of `database` (driver psycopg2 for MLflow, asyncpg for Prefect: a bare
    postgresql:// means psycopg 3 under SQLAlchemy 2.1)."""
    return f"postgresql+{driver}://postgres@127.0.0.1:{port}/{database}"
