"""Datasets on object storage: `segops run --dataset s3://bucket/prefix`.

A remote dataset is first downloaded, whole, into a staging folder of the flow run (outside the
versioned tree), to a temporary name renamed when complete; from there it is an ordinary
dataset outside `data/`: validated, then imported into `data/<name>/` and versioned
(`segops.data.place`). A dataset that fails validation is therefore never versioned, and an
interrupted download leaves nothing a later run could mistake for a dataset.

The endpoint and credentials come from the environment, as for the DVC remote on S3
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`); s3fs comes with
`pip install 'segops[team]'`. Scoring reads and writes `s3://` prefixes through the same
filesystem (`segops.data.location`).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from segops.errors import DatasetError

SCHEMES = ("s3://",)
PROBE_SECONDS = 5.0


def is_remote(dataset: str | os.PathLike | None) -> bool:
    """Whether `dataset` names object storage (`s3://...`) rather than a folder."""
    return dataset is not None and str(dataset).startswith(SCHEMES)


def remote_name(url: str) -> str:
    """The dataset's folder name: the last part of the prefix (`s3://b/x/nuclei/` -> nuclei)."""
    parts = [p for p in urlparse(url).path.split("/") if p]
    return parts[-1] if parts else urlparse(url).netloc


def endpoint_url() -> str | None:
    """The S3 endpoint of this process: `AWS_ENDPOINT_URL`, None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL") or None


def probe_endpoint(url: str, endpoint: str | None = None, what: str = "dataset") -> None:
    """A refused or silent endpoint (default `AWS_ENDPOINT_URL`) as a DatasetError in seconds
    (botocore retries for much longer)."""
    endpoint = endpoint or endpoint_url()
    if not endpoint:
        return
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=PROBE_SECONDS).close()
    except OSError as exc:
        raise DatasetError(
            f"{what} {url}: S3 endpoint {endpoint} unreachable ({exc}); check AWS_ENDPOINT_URL "
            "and that the server runs"
        ) from None


def s3_filesystem(url: str, endpoint: str | None = None, what: str = "dataset"):
    """A fresh s3fs filesystem on `endpoint` (default `AWS_ENDPOINT_URL`) with no listing
    cache; credentials from the environment. DatasetError when s3fs is not installed."""
    try:
        import s3fs  # lazy imports: s3fs/aiobotocore (~0.5 s) only for s3:// data; optional
    except ImportError:
        raise DatasetError(
            f"{what} {url}: reading s3:// needs s3fs: pip install 'segops[team]'"
        ) from None
    endpoint = endpoint or endpoint_url()
    # A fresh instance with no listing cache: fsspec shares instances (and their directory
    # listings) per process, so a prefix listed earlier would hide objects added since.
    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": endpoint} if endpoint else {}, skip_instance_cache=True
    )
    fs.invalidate_cache()
    return fs


def fetch_dataset(url: str, staging: str | Path) -> Path:
    """Download every object under `url` into `staging/<name>/`; returns that folder.

    DatasetError naming the URL for an unreachable endpoint, a missing bucket or prefix, an
    empty prefix, or an object key that would land outside the folder. A folder already
    complete from an earlier attempt of the same run is downloaded again (the remote may have
    changed); the old copy is replaced only once the new one is whole."""
    probe_endpoint(url)
    fs = s3_filesystem(url)
    prefix = url.removeprefix("s3://").rstrip("/")
    try:
        keys = [k for k in fs.find(prefix) if not k.endswith("/")]
    except (OSError, ValueError) as exc:  # botocore's errors arrive as OSError subclasses
        raise DatasetError(f"dataset {url}: cannot list it ({exc}); check the bucket") from None
    if not keys:
        raise DatasetError(
            f"dataset {url}: no objects under this prefix (check the bucket and the path)"
        )
    staging = Path(staging)
    staging.mkdir(parents=True, exist_ok=True)
    final = staging / remote_name(url)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=staging))
    try:
        for key in keys:
            rel = PurePosixPath(key[len(prefix) :].lstrip("/"))
            if ".." in rel.parts or rel.is_absolute():
                raise DatasetError(f"dataset {url}: object key {key!r} leaves the dataset folder")
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(key, str(dst))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except DatasetError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetError(f"dataset {url}: download failed ({exc}); nothing was kept") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
