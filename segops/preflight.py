"""Check in seconds, before anything runs, that the stores a run needs can be used.

MLflow (an http(s) server answers; a database host takes a connection; a SQLite file's folder
is writable), the DVC remote that `version_dataset` pushes to (a local folder is writable; an
S3 bucket answers) and the Prefect API named by PREFECT_API_URL. Each check is bounded by a
short timeout and never retries, unlike the clients (urllib3 retries an unreachable MLflow
server for minutes). Plain HTTP and sockets only: neither mlflow nor prefect is imported.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from segops.config import Config, TrackingConfig, VersioningConfig
from segops.dvc_remote import absolute_url, remote_url_for
from segops.errors import SegopsError
from segops.versioning import VersioningError, find_workspace

# lazy imports: dvc is imported inside the checks of a DVC remote: `segops run` runs these
# checks before the flow starts, and a run that pushes nowhere never needs DVC
# (docs/development.md "Imports").

TIMEOUT = 3.0  # seconds per network probe
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}

Check = tuple[str, str, Callable[[], str | None]]  # store, where (shown), probe -> problem


class StoreUnreachable(SegopsError):
    """A store a run needs cannot be used. `problems` has one line per store."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(problems)} store(s) cannot be used; nothing was run:\n{lines}")


def check_stores(cfg: Config, workspace: str | Path = ".", timeout: float = TIMEOUT) -> list[str]:
    """Probe MLflow, the DVC remote and the Prefect API at once; raise StoreUnreachable naming
    every one that fails (URL and what to check). Returns one "store: where ok" line per store
    checked. Takes at most about `timeout` + 2 seconds, whatever the network does."""
    checks = [
        tracking_check(cfg.tracking, timeout),
        dvc_check(cfg.versioning, workspace, timeout),
        prefect_check(os.environ.get("PREFECT_API_URL", ""), timeout),
    ]
    checks = [c for c in checks if c is not None]
    found = _run_bounded(checks, timeout + 2.0)
    problems = [f"{store} {where}: {found[store]}" for store, where, _ in checks if found[store]]
    if problems:
        raise StoreUnreachable(problems)
    return [f"{store} {where}: ok" for store, where, _ in checks]


def tracking_uri(cfg: TrackingConfig, base: str | Path = ".") -> str:
    """The URI `segops.tracking.connect` uses: MLFLOW_TRACKING_URI wins over `cfg.uri`, and a
    relative `sqlite:///` path is made absolute against `base` (the cwd there)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path(base) / uri.removeprefix(prefix)).resolve())
    return uri


def tracking_check(cfg: TrackingConfig, timeout: float = TIMEOUT) -> Check | None:
    """The check of the MLflow tracking store, or None for a kind not checked here."""
    uri = tracking_uri(cfg)
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        fix = "check that the server runs and MLFLOW_TRACKING_URI (or tracking.uri) names it"
        return "mlflow", _shown(uri), lambda: _http(uri.rstrip("/") + "/health", timeout, fix)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        return "mlflow", uri, lambda: _sqlite(db)
    if scheme in _DB_PORTS:
        return "mlflow", _shown(uri), lambda: _tcp(uri, _DB_PORTS[scheme], timeout)
    return None


def prefect_check(api_url: str, timeout: float = TIMEOUT) -> Check | None:
    """The check of the Prefect API at `api_url` (PREFECT_API_URL); None when it is empty."""
    if not api_url.strip():
        return None
    fix = "start it (`prefect server start`) or unset PREFECT_API_URL to use a local one"
    return "prefect", _shown(api_url), lambda: _http(api_url.rstrip("/") + "/health", timeout, fix)


def dvc_check(
    cfg: VersioningConfig, workspace: str | Path, timeout: float = TIMEOUT
) -> Check | None:
    """The check of the remote `version_dataset` would push to; None when it does not push."""

    if not cfg.push:
        return None
    try:
        root = find_workspace(workspace)
    except VersioningError as exc:
        problem = str(exc)
        return "dvc", str(Path(workspace).resolve()), lambda: problem
    name = cfg.remote.lower()
    override = remote_url_for(cfg.remote_url)
    options = _dvc_remote_options(root, name, validate=not override)
    if override:  # raw options: the validated ones carry defaults of the configured URL's kind
        options["url"] = absolute_url(override, root)
    url = str(options.get("url", ""))
    if not url:
        fix = f"set versioning.remote_url, or run `dvc remote add -d {name} URL` in {root}"
        return "dvc", f"remote {name!r}", lambda: f"not configured in .dvc/config: {fix}"
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("", "file"):
        path = Path(url.removeprefix("file://"))
        return "dvc", f"remote {name!r} {path}", lambda: _folder_problem(path)
    if scheme in ("s3", "s3a"):
        return "dvc", f"remote {name!r} {url}", _s3(options, timeout)
    return None  # gs, azure, ssh, ...: not checked here


def _dvc_remote_options(root: Path, name: str, validate: bool = True) -> dict:
    """The remote's options from .dvc/config (+ config.local, global): url, endpointurl, ..."""
    from dvc.config import Config as DvcConfig

    return dict(DvcConfig(str(root / ".dvc"), validate=validate)["remote"].get(name, {}))


def _run_bounded(checks: list[Check], deadline: float) -> dict[str, str | None]:
    """Run every probe in its own daemon thread; a probe still running at the deadline is a
    problem (DNS lookups and some clients ignore socket timeouts)."""
    found: dict[str, str | None] = {}

    def run(store: str, probe: Callable[[], str | None]) -> None:
        try:
            found[store] = probe()
        except Exception as exc:  # a probe's own failure is a problem line, not a crash
            found[store] = f"check failed ({type(exc).__name__}: {exc})"

    threads = [threading.Thread(target=run, args=(s, p), daemon=True) for s, _, p in checks]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    late = f"no answer within {deadline:g} s: check the host, port and network"
    return {store: found.get(store, late) for store, _, _ in checks}


def _http(url: str, timeout: float, fix: str) -> str | None:
    """None if the server answers (any status below 500), else what went wrong and `fix`."""
    parts = urlsplit(url)  # urllib takes user:password@ for part of the host name: drop it
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        with urllib.request.urlopen(bare, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"answered HTTP {exc.code} on {_shown(url)}; {fix}"
    except (OSError, ValueError) as exc:  # URLError, refused, timeout; ValueError: bad URL
        reason = getattr(exc, "reason", None) or exc
        return f"unreachable ({reason}, {timeout:g} s timeout); {fix}"


def _tcp(uri: str, default_port: int, timeout: float) -> str | None:
    """None if the database host accepts a TCP connection."""
    parts = urlsplit(uri)
    host, port = parts.hostname or "localhost", parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc}); check that the database runs"
    return None


def _sqlite(db: Path) -> str | None:
    if db.exists() and (not db.is_file() or not os.access(db, os.W_OK)):
        return f"{db} is not a writable file"
    problem = _folder_problem(db.parent)
    return f"{problem} (the folder of the MLflow database)" if problem else None


def _folder_problem(folder: Path) -> str | None:
    """None if `folder` is, or can be created as, a folder we can write in."""
    here = folder.expanduser().absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file where a folder is needed; move it or pick another path"
    try:
        with tempfile.TemporaryFile(dir=here):
            pass
    except OSError as exc:
        return f"cannot write in {here} ({exc.strerror or exc}); check permissions and space"
    return None


def _s3(options: dict, timeout: float) -> Callable[[], str | None]:
    """The probe of the S3 remote's bucket (AWS_ENDPOINT_URL and the remote's endpointurl and
    credentials apply, as for `dvc push`). s3fs and botocore load here, before the probes'
    deadline starts: on a busy machine their import alone can take seconds."""
    from dvc.fs import get_cloud_fs

    endpoint = options.get("endpointurl") or os.environ.get("AWS_ENDPOINT_URL", "")
    bounded = {"connect_timeout": math.ceil(timeout), "read_timeout": math.ceil(timeout)}
    try:
        cls, conf, path = get_cloud_fs(None, **(options | bounded))
        s3 = cls(**conf).fs  # imports s3fs, aiobotocore
    except Exception as exc:  # a bad option or a missing plugin, named like a probe's failure
        problem = f"check failed ({type(exc).__name__}: {exc})"
        return lambda: problem
    bucket = path.split("/")[0]

    def probe() -> str | None:
        if endpoint:  # botocore retries a refused endpoint for many seconds: probe it first
            parts = urlsplit(endpoint)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
            except OSError as exc:
                return (
                    f"S3 endpoint {endpoint} unreachable ({exc}); check AWS_ENDPOINT_URL (or "
                    "the remote's endpointurl) and that the S3 server runs"
                )
        try:
            found = s3.exists(bucket)
        except Exception as exc:  # botocore raises many types: unreachable, denied, no keys
            return f"bucket {bucket} cannot be read ({type(exc).__name__}: {exc})"
        return None if found else f"bucket {bucket} does not exist; create it or fix the URL"

    return probe


def _shown(url: str) -> str:
    """`url` with any password in it replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
