"""Bad input refused in seconds, before a model is loaded or a cluster started."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from segops.data.location import Location, source_images
from segops.errors import ConfigError, SegopsError

# lazy imports: Ray (~1 s) loads only to check a requested dashboard, never when the CLI starts.

ENGINES = ("local", "ray")
RAY_CONNECT_TIMEOUT_S = 3.0
RAY_DEFAULT_PORT = 6379  # the GCS port `ray start --head` listens on


class EngineError(SegopsError):
    """The scoring engine cannot start (e.g. the Ray cluster does not answer)."""


def check_source_folder(src: str | Path) -> tuple[Location, list[str]]:
    """(location, image names) to score; DatasetError for a missing folder or bucket, an
    empty folder or prefix, or an unreachable S3 endpoint (`segops.data.location`)."""
    return source_images(src)


def check_engine(engine: str, address: str | None = None, dashboard: bool = False) -> None:
    """ConfigError for an unknown engine; on the ray engine, EngineError for an address that
    does not answer (`check_ray_address`) or, without one, for a requested dashboard whose
    packages are missing (`check_ray_dashboard`)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r}: give one of {', '.join(ENGINES)}")
    if engine == "ray" and address:
        check_ray_address(address)
    elif engine == "ray" and dashboard:
        check_ray_dashboard()


def ray_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: `host:port`, `ray://host:port` or a bare host."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname:
        raise EngineError(f"Ray address {address!r}: give host:port or ray://host:port")
    default = 10001 if parsed.scheme == "ray" else RAY_DEFAULT_PORT
    return parsed.hostname, parsed.port or default


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """EngineError unless something accepts a TCP connection at the Ray address within
    `timeout` seconds (Ray's own connect retries for minutes)."""
    if address == "auto":
        return
    host, port = ray_endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise EngineError(
            f"Ray cluster at {address} does not answer ({host}:{port}: {exc or 'timed out'} "
            f"within {timeout:g} s): start it with `ray start --head`, fix --address, or drop "
            "--address to start a local one"
        ) from None


def check_ray_dashboard() -> None:
    """EngineError when a local Ray cluster could not start its dashboard (`ray[data]` comes
    without the dashboard's packages; Ray would fail only after the model is loaded)."""
    import ray._private.utils as ray_utils

    missing = getattr(ray_utils, "get_dashboard_dependency_error", lambda: None)()
    if missing:
        raise EngineError(
            f"the Ray dashboard needs packages this environment lacks ({missing}): "
            "pip install 'ray[default]', or drop --dashboard"
        )
