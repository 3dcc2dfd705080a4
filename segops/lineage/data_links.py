"""The data links of a lineage audit: the `.dvc` text, the remote holding it, the dataset
trained on inside that version, and (deep) every remote object re-hashed."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from segops.dvc_remote import (
    VersioningError,
    dataset_md5_on_remote,
    dvc_text_md5,
    manifest,
    remote_has,
    remote_odb,
)
from segops.errors import DatasetError
from segops.lineage.links import BROKEN, OK, UNCHECKED, Chain, Link


def dvc_file(chain: Chain) -> Link:

    md5 = chain.tag("data.md5")
    chain.record |= {"data.md5": md5, "data.path": chain.tag("data.path")}
    local = chain.artifact("lineage/data.dvc")
    if local is None:
        return Link("data.dvc", BROKEN, "artifact lineage/data.dvc is missing from the run")
    text = local.read_text()
    chain.record["data.dvc"] = text
    try:
        found = dvc_text_md5(text, "lineage/data.dvc")
    except VersioningError as exc:
        return Link("data.dvc", BROKEN, str(exc))
    if found != md5:
        return Link("data.dvc", BROKEN, f"lineage/data.dvc names {found}, the tag says {md5}")
    return Link("data.dvc", OK, f"dataset version {md5}")


def data_remote(chain: Chain) -> Link:

    url, text = chain.tag("data.remote_url"), chain.record.get("data.dvc")
    chain.record["data.remote_url"] = url
    if not text or not url:
        return Link("data.remote", BROKEN, "no .dvc text or remote URL recorded to fetch from")
    try:
        present = remote_has(text, url)
    except VersioningError as exc:
        return Link("data.remote", BROKEN, str(exc))
    if not present:
        return Link(
            "data.remote",
            BROKEN,
            f"remote {url} lacks objects of {chain.record['data.md5']}: push the version again "
            "from a workspace that has it (segops.versioning.version_dataset)",
        )
    return Link("data.remote", OK, f"every object of the dataset is on {url}")


def dataset(chain: Chain) -> Link:
    """The dataset trained on (its own hash and path) is inside the recorded data version."""

    md5, path = chain.tag("dataset.md5"), chain.tag("dataset.path")
    chain.record |= {"dataset.md5": md5, "dataset.path": path}
    if not md5:
        return Link("dataset", UNCHECKED, "recorded before datasets had their own hash")
    text, url, tree = (
        chain.record.get("data.dvc"),
        chain.tag("data.remote_url"),
        chain.tag("data.path"),
    )
    if not text or not url or not path.startswith(f"{tree}/"):
        return Link("dataset", BROKEN, f"{path} is not in a recorded data version of {tree}/")
    try:
        found = dataset_md5_on_remote(text, url, path.removeprefix(f"{tree}/"))
    except VersioningError as exc:  # no manifest to read: data.remote names that break
        return Link("dataset", UNCHECKED, f"cannot read the data version: {exc}")
    except DatasetError as exc:
        return Link("dataset", BROKEN, str(exc))
    if found != md5:
        return Link("dataset", BROKEN, f"{path} in that version hashes to {found}, not {md5}")
    return Link("dataset", OK, f"{path} ({md5}) is in data version {chain.record['data.md5']}")


def data_deep(chain: Chain) -> Link:
    url, text = chain.tag("data.remote_url"), chain.record.get("data.dvc")
    if not text or not url:
        return Link("data.deep", UNCHECKED, "no .dvc text or remote URL recorded (data.remote)")
    return deep_check(text, url)


def deep_check(dvc_text: str, remote_url: str) -> Link:
    """Read every object of the data version on the remote, md5 it and compare with its name:
    link `data.deep`, broken (naming them) when objects are corrupt or missing."""

    start = time.monotonic()
    try:
        md5 = dvc_text_md5(dvc_text)
        odb = remote_odb(remote_url)
        entries = manifest(odb, md5)  # None when missing or not matching its hash
    except (VersioningError, OSError, ValueError) as exc:
        return Link("data.deep", BROKEN, f"cannot read the manifest on {remote_url}: {exc}")
    if entries is None:
        return Link("data.deep", BROKEN, f"manifest {md5} on {remote_url} is missing or corrupt")
    oids = sorted({e["md5"] for e in entries})
    with ThreadPoolExecutor(8) as pool:
        got = dict(zip(oids, pool.map(lambda oid: _object_md5(odb, oid), oids), strict=True))
    took = f"{len(oids) + 1} objects re-hashed in {time.monotonic() - start:.2f} s"
    bad = {"corrupt": [o for o in oids if got[o] not in (o, None)]}
    bad["missing"] = [o for o in oids if got[o] is None]
    if not any(bad.values()):
        return Link("data.deep", OK, f"every object on {remote_url} matches its hash ({took})")
    named = "; ".join(
        f"{k}: {', '.join(v[:10])}{' ...' * (len(v) > 10)}" for k, v in bad.items() if v
    )
    fix = "delete the corrupt objects from the remote, then version the data again"
    return Link("data.deep", BROKEN, f"{remote_url}: {named} ({took}). Fix: {fix}")


def _object_md5(odb: Any, oid: str) -> str | None:
    """md5 of the object stored under `oid` (read in 1 MiB chunks); None when it is absent."""
    digest = hashlib.md5()
    try:
        with odb.fs.open(odb.oid_to_path(oid), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()
