"""Where scoring reads images and writes results: a local folder or an `s3://bucket/prefix`.

Both are flat: the files directly inside the folder or prefix, by name. A file is never seen
half-written: it is written to a local temporary file first, then renamed beside its final
name (folder) or uploaded under its final key (S3: an object appears whole or not at all).
Listings are fresh every time (`segops.data.fetch.s3_filesystem`: no listing cache), so a
rerun sees what an earlier run uploaded; the endpoint is probed once per prefix object, on its
first listing (an unreachable one fails in seconds, on every call, until it answers).

A location pickles as its URL and endpoint only (it travels to Ray actors); each process opens
its own filesystem on first use, with the credentials of its own environment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from segops.data.fetch import endpoint_url, is_remote, probe_endpoint, s3_filesystem
from segops.data.io import IMAGE_SUFFIXES, ReadError, image_from_bytes, read_image
from segops.errors import DatasetError

Fill = Callable[[Path], None]  # writes a file's content to the path it is given


def is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


class Folder:
    """A local folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.url = str(self.path)

    def join(self, name: str) -> str:
        return str(self.path / name)

    def listing(self) -> list[list[Any]]:
        """[name, size, mtime_ns] of each file directly inside, sorted; [] when missing."""
        if not self.path.is_dir():
            return []
        files = sorted(p for p in self.path.iterdir() if p.is_file())
        return [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in files]

    def names(self) -> set[str]:
        """Names of the files directly inside (no stat per file: resume on big folders)."""
        if not self.path.is_dir():
            return set()
        with os.scandir(self.path) as entries:
            return {e.name for e in entries if e.is_file()}

    def check(self) -> None:
        """DatasetError when the folder is missing (an input must exist)."""
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: no such file or folder")

    def prepare(self) -> None:
        """Make the folder (an output)."""
        self.path.mkdir(parents=True, exist_ok=True)

    def read_image(self, name: str) -> Any:
        return read_image(self.path / name)

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def write(self, name: str, fill: Fill) -> None:
        """`fill` a temporary file beside `name`, then rename it to `name`."""
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        try:
            fill(tmp)
            os.replace(tmp, self.path / name)
        finally:
            tmp.unlink(missing_ok=True)


class S3Prefix:
    """The objects directly under `s3://bucket/prefix/`, on `endpoint` (default
    `AWS_ENDPOINT_URL` of the process that opens it)."""

    def __init__(self, url: str, endpoint: str | None = None):
        self.url = url.rstrip("/")
        self.key = self.url.removeprefix("s3://")
        self.bucket = self.key.split("/")[0]
        self.endpoint = endpoint or endpoint_url()
        self._fs: Any = None
        self._probed = False  # the endpoint answered once: later listings skip the probe
        if not self.bucket:
            raise DatasetError(f"{url}: give s3://bucket/prefix")

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "endpoint": self.endpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["endpoint"])

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs = s3_filesystem(self.url, self.endpoint, "prefix")
        return self._fs

    def join(self, name: str) -> str:
        return f"{self.url}/{name}"

    def listing(self) -> list[list[Any]]:
        """[name, size, ETag] of each object directly under the prefix, sorted; [] when the
        prefix holds nothing. DatasetError for an unreachable endpoint or a missing bucket."""
        if not self._probed:
            probe_endpoint(self.url, self.endpoint, "prefix")
            self._probed = True
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.key, detail=True)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise DatasetError(f"{self.url}: no bucket {self.bucket!r} ({exc})") from None
            return []
        except (OSError, ValueError) as exc:  # botocore's errors arrive as OSError subclasses
            raise DatasetError(f"{self.url}: cannot list it ({exc})") from None
        files = [e for e in entries if e.get("type") == "file"]
        rows = [[PurePosixPath(e["name"]).name, e["size"], _etag(e)] for e in files]
        return sorted(rows)

    def names(self) -> set[str]:
        return {row[0] for row in self.listing()}

    def check(self) -> None:
        """Nothing to do: an empty listing says it all (S3 has no folders)."""

    def prepare(self) -> None:
        """DatasetError now for an unreachable endpoint or a missing bucket, not after scoring."""
        self.listing()

    def read_image(self, name: str) -> Any:
        try:
            data = self.fs.cat_file(f"{self.key}/{name}")
        except FileNotFoundError:
            raise ReadError("missing (deleted after the listing?)") from None
        except OSError as exc:
            raise ReadError(f"cannot be read ({exc})") from None
        return image_from_bytes(data)

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(f"{self.key}/{name}")

    def write(self, name: str, fill: Fill) -> None:
        """`fill` a local temporary file, then upload it under the final key."""
        fd, tmp = tempfile.mkstemp(prefix="segops-", suffix=f"-{name}")
        os.close(fd)
        try:
            fill(Path(tmp))
            self.fs.put_file(tmp, f"{self.key}/{name}")
        finally:
            os.unlink(tmp)


Location = Folder | S3Prefix


def _etag(entry: dict[str, Any]) -> str:
    return str(entry.get("ETag") or entry.get("etag") or "").strip('"')


def open_location(where: str | os.PathLike) -> Location:
    """The folder or `s3://` prefix `where` names."""
    return S3Prefix(str(where)) if is_remote(where) else Folder(where)


def source_images(src: str | os.PathLike) -> tuple[Location, list[str]]:
    """(location, names of the images to score): an image file alone, or the images directly
    inside a folder or prefix, sorted. DatasetError for a missing folder, an empty one, an
    unreachable endpoint or a missing bucket."""
    if not is_remote(src) and Path(src).is_file():
        return Folder(Path(src).parent), [Path(src).name]
    location = open_location(src)
    location.check()
    names = [row[0] for row in location.listing() if is_image(row[0])]
    if not names:
        raise DatasetError(f"{location.url}: no images (.png, .jpg, .tif) in this folder or prefix")
    return location, names
