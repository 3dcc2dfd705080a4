"""A DVC remote read without a workspace: does it hold a dataset version, restore it by hash,
and the hash of one dataset inside a version. `segops reproduce` and `segops audit` need only
the `.dvc` text and the remote URL, so a version can be rebuilt months later in a fresh folder.

A version's objects live on the remote as `files/md5/<2 hex>/<rest>`; the `.dir` object is the
manifest (the sorted JSON list of `{"md5", "relpath"}` of every file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from segops.data.place import dir_md5, subtree_md5
from segops.errors import SegopsError

# lazy imports: dvc is imported inside the functions that talk to a remote: `segops run`'s
# preflight reads remote URLs through this module before anything needs DVC
# (docs/development.md "Imports").

if TYPE_CHECKING:  # dvc costs ~0.5 s to import: load it only when a function needs it
    from dvc_data.hashfile.db import HashFileDB

_URL_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*://")


class VersioningError(SegopsError):
    """DVC could not add, push, read or restore a dataset version."""


def quiet_dvc() -> None:
    # Importing dvc attaches stdout handlers at INFO to its loggers, so every add would print
    # "To track the changes with git, run: ..." into our CLI's output. Keep warnings only.
    for name in ("dvc", "dvc_objects", "dvc_data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def remote_has(dvc_text: str, remote_url: str) -> bool:
    """Return True when the remote holds the manifest and every file object of this version."""
    return not missing_objects(remote_odb(remote_url), _dvc_md5(dvc_text, "dvc_text"))


def restore_dataset(dvc_text: str, remote_url: str, dest: str | Path) -> Path:
    """Download the directory described by `dvc_text` from the remote into `dest`; return `dest`.

    Files are fetched by hash into a temporary sibling folder, the rebuilt directory's hash is
    checked against the `.dvc` md5, and only then is the folder renamed to `dest` (which must be
    absent or empty), so a failed restore leaves nothing behind.
    """
    md5 = _dvc_md5(dvc_text, "dvc_text")
    dest = Path(dest).resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise VersioningError(
            f"cannot restore into {dest}: it is not an empty folder; pass a new one"
        )
    odb = remote_odb(remote_url)
    missing = missing_objects(odb, md5)
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise VersioningError(
            f"remote {remote_url} lacks {len(missing)} object(s) (missing or corrupt) of dataset "
            f"version {md5}: {shown}. Run version_dataset again in a workspace that still has it "
            "(plain `dvc push` skips files of a manifest the remote holds), or use another remote."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.restore-", dir=dest.parent))
    try:
        entries = manifest(odb, md5) or []
        targets = [(tmp / e["relpath"]).resolve() for e in entries]
        if not all(t.is_relative_to(tmp.resolve()) for t in targets):
            raise VersioningError(f"manifest {md5} has paths outside the folder: not restoring")
        odb.fs.get([odb.oid_to_path(e["md5"]) for e in entries], [str(t) for t in targets])
        got = dir_md5(tmp)
        if got != md5:
            raise VersioningError(
                f"restored {dest} hashes to {got}, not {md5}: objects on {remote_url} are corrupt; "
                "push the version again from a workspace that has it"
            )
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _dvc_md5(text: str, where: str) -> str:
    """Return the md5 of the single directory output in a .dvc file's text."""
    try:
        outs = yaml.safe_load(text)["outs"]
        (out,) = outs
        md5, path = str(out["md5"]), str(out["path"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise VersioningError(f"{where}: not a .dvc file with one output ({exc!r})") from exc
    if not md5.endswith(".dir"):
        raise VersioningError(f"{where}: output {path} is a file, not a directory (md5 {md5})")
    if out.get("hash") != "md5":
        raise VersioningError(f"{where}: written by DVC 2; run `dvc cache migrate` and re-add it")
    return md5


REMOTE_URL_ENV = "SEGOPS_DVC_REMOTE_URL"


def remote_url_for(configured: str | None) -> str | None:
    """The URL a push goes to: SEGOPS_DVC_REMOTE_URL, when set, wins over
    `versioning.remote_url` (as MLFLOW_TRACKING_URI does over `tracking.uri`). An S3 endpoint
    and keys come from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
    return os.environ.get(REMOTE_URL_ENV) or configured


def absolute_url(url: str, base: Path) -> str:
    """Return `url` unchanged if it has a scheme (s3://...), else as an absolute local path."""
    if _URL_SCHEME.match(url):
        return url
    return str((base / Path(url).expanduser()).resolve())


def remote_odb(url: str) -> HashFileDB:
    """The object store of the DVC 3 remote at `url` (objects under files/md5/)."""
    from dvc.fs import get_cloud_fs
    from dvc_data.hashfile.db import get_odb

    quiet_dvc()
    try:
        cls, conf, fs_path = get_cloud_fs(None, url=absolute_url(url, Path.cwd()))
        fs = cls(**conf)
    except Exception as exc:
        raise VersioningError(f"cannot open DVC remote {url}: {exc}") from exc
    return get_odb(fs, fs.join(fs_path, "files", "md5"), hash_name="md5")


def manifest(odb: HashFileDB, md5: str) -> list[dict[str, str]] | None:
    """The .dir object's entries [{"md5", "relpath"}]; None if it is absent or corrupt."""
    try:
        raw = odb.fs.cat_file(odb.oid_to_path(md5))
    except FileNotFoundError:
        return None
    return json.loads(raw) if hashlib.md5(raw).hexdigest() == md5.removesuffix(".dir") else None


def missing_objects(odb: HashFileDB, md5: str) -> list[str]:
    """Hashes of this version's objects absent from `odb` (just the manifest's if it is bad)."""
    entries = manifest(odb, md5)
    if entries is None:
        return [md5]
    oids = sorted({e["md5"] for e in entries})
    # Plain existence checks: DVC's oids_exist on a local remote rehashes objects and deletes
    # any it finds corrupt, which an audit must not do.
    present = set(odb.list_oids_exists(oids))
    return [oid for oid in oids if oid not in present]


def dvc_text_md5(dvc_text: str, where: str = "dvc text") -> str:
    """The dataset version (md5 ending `.dir`) a `.dvc` file's text names."""
    return _dvc_md5(dvc_text, where)


def dataset_md5_on_remote(dvc_text: str, remote_url: str, sub: str) -> str:
    """The own hash of dataset folder `sub` (relative to the versioned folder) inside the
    version `dvc_text` names, read from the manifest on the remote (no file is downloaded)."""
    md5 = _dvc_md5(dvc_text, "dvc_text")
    entries = manifest(remote_odb(remote_url), md5)
    if entries is None:
        raise VersioningError(f"remote {remote_url} lacks the manifest {md5} (missing or corrupt)")
    return subtree_md5(entries, sub)
