"""Servers the tests start themselves (one helper for all): a free loopback port, a program
started in its own session with its output in a log, a wait until its URL answers, and a stop
of its whole process group by PID. Imported as `servers` (tests/ is on sys.path, like
conftest and prefect_server)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segops.stack.procs import http_ok

BIN = Path(sys.executable).parent  # the virtualenv's programs (mlflow, prefect, rclone)


def bin_on_path() -> dict[str, str]:
    """This process's environment with BIN first on PATH (for programs that exec others by
    name, like `mlflow models serve` execs `uvicorn`, when the venv is not activated)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports nothing listens on now (all bound at once, then freed)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers HTTP with a status below 500 (the stack's own check)."""
    return http_ok(url, timeout)


def start(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """`cmd` in its own session (stop() ends its children with it), output merged into `log`."""
    with open(log, "w") as out:  # the child keeps its own handle
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_up(
    url: str, proc: subprocess.Popen | None = None, log: Path | None = None, timeout: float = 90
) -> None:
    """Poll `url` until it answers; raise with the log's tail if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not answers(url):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited ({proc.returncode}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: no answer after {timeout:g} s:\n{_tail(log)}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen, grace: float = 15) -> None:
    """End a process started by start() (or with start_new_session) and its group: SIGTERM,
    then SIGKILL after `grace` seconds. Nothing happens if it already ended."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass


@contextmanager
def running(
    cmd: list[str],
    url: str,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 90,
    grace: float = 15,
) -> Iterator[subprocess.Popen]:
    """start() `cmd`, wait until `url` answers, yield the process; stop() it on exit."""
    proc = start(cmd, log, env, cwd)
    try:
        wait_until_up(url, proc, log, timeout)
        yield proc
    finally:
        stop(proc, grace)


def _tail(log: Path | None, chars: int = 3000) -> str:
    if log is None:
        return "(no log)"
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return f"(no log at {log})"
