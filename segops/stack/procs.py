"""Background processes of the local stack: start detached with a log and a PID file, probe,
stop by PID. Plain subprocess, sockets and HTTP: no client library is imported."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from segops.errors import SegopsError


class StackError(SegopsError):
    """A service of the local stack could not be started, reached or stopped."""


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def http_ok(url: str, timeout: float = 5.0) -> bool:
    """Whether `url` answers with a status below 500."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def read_pid(pid_file: Path) -> int | None:
    """The PID in `pid_file` if that process is alive, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, root: Path) -> int:
    """Start `cmd` in its own session, output to logs/<name>.log, PID to pids/<name>.pid."""
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "pids").mkdir(parents=True, exist_ok=True)
    with open(root / "logs" / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `down` stops the whole group; a Ctrl-C here does not
        )
    (root / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def wait_until(
    name: str, ready: Callable[[], bool], pid: int | None, log: Path, timeout: float
) -> None:
    """Poll `ready` until it holds; raise StackError with the log's tail if the process dies
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not _alive(pid):
            raise StackError(f"{name} exited while starting; its log ({log}) ends:\n{tail(log)}")
        time.sleep(0.5)
    raise StackError(f"{name} not ready after {timeout:g} s; its log ({log}) ends:\n{tail(log)}")


def stop(names: list[str], root: Path, grace: float = 10.0) -> list[str]:
    """Stop the process groups in pids/<name>.pid at once (TERM, then KILL what still runs
    after `grace` s); remove the PID files. Returns the names that were running."""
    running = {}
    for name in names:
        pid = read_pid(root / "pids" / f"{name}.pid")
        if pid is not None:
            running[name] = pid
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(pid) for pid in running.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in running.values():
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
    for name in names:
        (root / "pids" / f"{name}.pid").unlink(missing_ok=True)
    return [name for name in names if name in running]


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own child, if it is one
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
