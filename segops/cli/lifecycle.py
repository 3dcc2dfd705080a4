"""The `segops run` process's life: which Prefect API it talks to, a frozen heap after the
imports, and a fast exit once the flow has finished (stdlib only: imported at start).

After a flow, Python's exit walked a heap of over a million objects (torch, MLflow, Prefect)
for 5-13 s before the process ended. Once every file is written, `leave` flushes the standard
streams, closes the logging handlers, runs the exit handlers (Prefect's and MLflow's clean-ups),
then ends the process with `os._exit`: the 0.5-0.8 s it takes then is those handlers.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

_owned = False  # this process is the `segops` command (main), not a test calling the app
_fast_exit = False


def own_process() -> None:
    """Called by the console entry point: the heap and the exit are the command's to manage
    (an app invoked in-process, e.g. by a test runner, leaves both alone)."""
    global _owned, _fast_exit
    _owned, _fast_exit = True, False


def prefect_api_line() -> str:
    """Which Prefect API the run uses, from PREFECT_API_URL (segops never imports prefect)."""
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if url:
        return f"Prefect API: {url} (a running server: no temporary one is started)"
    return (
        "Prefect API: a temporary local one (started for this run; set PREFECT_API_URL to a "
        "running `prefect server start` to skip its start-up)"
    )


def freeze_heap(preload: tuple[str, ...] = (), during: Callable[[], object] | None = None) -> None:
    """Import `preload` (modules the run will import anyway), then move every object alive
    to the collector's permanent generation: full collections stop walking the modules.

    `during`, when given, is called on this thread while another imports `preload`: starting
    Prefect's temporary API, a process of its own that this one only polls, so on two cores the
    start and the imports overlap (bench/RESULTS.md). `during` must import nothing itself (two
    threads importing the same packages at once can deadlock on Python 3.11's module locks)."""
    if not _owned:
        return
    failed: list[BaseException] = []

    def load() -> None:
        try:
            for name in preload:
                importlib.import_module(name)
        except BaseException as exc:  # raised again on the calling thread, below
            failed.append(exc)

    if during is None:
        load()
    else:
        loader = threading.Thread(target=load, name="segops-preload", daemon=True)
        loader.start()
        try:
            during()
        finally:
            loader.join()
    if failed:
        raise failed[0]
    gc.collect()
    gc.freeze()


def arm_fast_exit() -> None:
    """Let `leave` end the process with `os._exit` (call it once the work is done)."""
    global _fast_exit
    _fast_exit = _owned


def _exit_status(code: object) -> int:
    """The status `sys.exit(code)` would give (a message is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(code: object = 0) -> NoReturn:
    """Exit with `code`: fast (see the module docstring) once armed, else `sys.exit(code)`."""
    if not _fast_exit:
        sys.exit(code)
    status = _exit_status(code)
    try:
        atexit._run_exitfuncs()  # what the interpreter would run: flushes, server stops
        logging.shutdown()  # flush and close every handler (files complete on disk)
    finally:
        for stream in (sys.stdout, sys.stderr):
            # closed, or a broken pipe: nothing left to save
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
