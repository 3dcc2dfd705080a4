"""Version the dataset directory with DVC: add, push, read back, audit and restore by hash.

A dataset version is the `md5` (ending `.dir`) in `<path>.dvc`: the hash of a manifest that lists
every file's md5. Pushing copies the manifest and the files into the remote as
`files/md5/<2 hex>/<rest>`. `restore_dataset` and `remote_has` need only the `.dvc` text and the
remote URL, so `segops reproduce` can rebuild the data months later in a fresh folder.

DVC is driven through its Python API (`dvc.repo.Repo`): typed exceptions, the real count of
uploaded objects, no process start. Work on a workspace is serialised by a thread lock in-process
(DVC's Repo is not thread-safe) and by `.dvc/tmp/segops.lock` across processes (DVC's own lock
does not cover config edits), and DVC's repo lock waits as `dvc --wait-for-lock` does.
Never run `dvc gc` here: without git it deletes older versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from segops.config import VersioningConfig
from segops.data.place import dir_md5
from segops.errors import SegopsError

if TYPE_CHECKING:  # dvc costs ~0.5 s to import: load it only when a function needs it
    from dvc.repo import Repo
    from dvc_data.hashfile.db import HashFileDB

# Parallel DVC calls in one repo fail on its lock or corrupt shared state: serialise ours.
_LOCK = threading.Lock()
_URL_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*://")


class VersioningError(SegopsError):
    """DVC could not add, push, read or restore a dataset version."""


@dataclass(frozen=True)
class DataVersion:
    path: str  # tracked directory, relative to the workspace
    md5: str  # directory hash from the .dvc file, ending ".dir"
    dvc_file: str  # the .dvc file, relative to the workspace
    dvc_text: str  # full text of the .dvc file
    remote: str  # remote pushed to ("" if not pushed)
    remote_url: str  # its URL as configured
    pushed: int  # objects uploaded by this call (files + the .dir manifest; 0 when unchanged)
    dataset: str = ""  # the dataset trained on, relative to the workspace (data/shapes)
    dataset_md5: str = ""  # its own DVC directory hash (what `dvc add <dataset>` would write)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_workspace(start: str | Path = ".") -> Path:
    """Return the DVC workspace root: the first folder at or above `start` holding `.dvc/`."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise VersioningError(
        f"no DVC workspace at or above {here}: run `dvc init` in the project root "
        "(`dvc init --no-scm` outside git), or call segops.versioning.ensure_workspace"
    )


def ensure_workspace(workspace: str | Path) -> Path:
    """Run `dvc init` in `workspace` unless it has `.dvc/` already; return its resolved path."""
    root = Path(workspace).resolve()
    if (root / ".dvc").is_dir():
        return root
    from dvc.repo import Repo

    _quiet_dvc()
    root.mkdir(parents=True, exist_ok=True)
    git_root = next((p for p in (root, *root.parents) if (p / ".git").exists()), None)
    with _LOCK:
        try:  # inside git below its root DVC needs --subdir; outside git it needs --no-scm
            Repo.init(
                str(root), no_scm=git_root is None, subdir=git_root not in (None, root)
            ).close()
        except Exception as exc:
            if not (root / ".dvc").is_dir():  # else another process initialised it first
                raise VersioningError(f"`dvc init` failed in {root}: {exc}") from exc
    return root


def configure_remote(workspace: str | Path, name: str, url: str) -> None:
    """Add remote `name` (or change its URL, keeping its other options) and make it the default.

    A relative local path is resolved against the workspace and written absolute: DVC would
    otherwise read it relative to `.dvc/`.
    """
    root = find_workspace(workspace)
    with _locked(root):
        _set_remote(root, name, url)


def version_dataset(
    workspace: str | Path, cfg: VersioningConfig, dataset: str | Path | None = None
) -> DataVersion:
    """`dvc add` cfg.path and, if cfg.push, push it; return the version written to `<path>.dvc`.

    `dataset`, a folder inside cfg.path, is the dataset trained on: its own hash is read from
    the new manifest (`DataVersion.dataset_md5`). A tree holding symbolic links is refused
    before DVC reads it: a link could send a file from outside the dataset to the remote.
    All or nothing: if the add or the push fails, the previous `.dvc` text is put back (or the new
    file removed) and a VersioningError names the step, the path and the fix.
    """
    root = find_workspace(workspace)
    rel = _relative(root, cfg.path)
    sub = _dataset_subdir(root, rel, dataset)
    _refuse_links(root / rel)
    dvc_file = root / f"{rel}.dvc"
    with _locked(root), _remote_for_call(root, cfg.remote, cfg.remote_url):
        previous = dvc_file.read_text() if dvc_file.is_file() else None
        with _open_repo(root) as repo:
            _step("add", rel, dvc_file, previous, lambda: repo.add(str(root / rel)))
            md5 = _dvc_md5(dvc_file.read_text(), str(dvc_file))
            own = _own_md5(repo, md5, rel, sub)
            if not cfg.push:
                return _version(root, rel, "", "", 0, own)
            name = cfg.remote.lower()
            pushed = _step(
                "push", rel, dvc_file, previous, lambda: _push(repo, dvc_file, name, md5)
            )
            url = str(repo.config["remote"][name]["url"])
    return _version(root, rel, name, url, pushed, own)


def read_version(workspace: str | Path, path: str = "data") -> DataVersion:
    """Return the version in `<path>.dvc` without running DVC (pushed=0).

    `remote`/`remote_url` are the workspace's default remote: where a push would go, not proof
    that it went there (ask `remote_has`).
    """
    from dvc.config import Config

    root = find_workspace(workspace)
    conf = Config(str(root / ".dvc"))
    name = conf["core"].get("remote", "")
    url = str(conf["remote"].get(name, {}).get("url", "")) if name else ""
    return _version(root, _relative(root, path), name, url, 0)


def dvc_text_md5(dvc_text: str, where: str = "dvc text") -> str:
    """The dataset version (md5 ending `.dir`) a `.dvc` file's text names."""
    return _dvc_md5(dvc_text, where)


def remote_has(dvc_text: str, remote_url: str) -> bool:
    """Return True when the remote holds the manifest and every file object of this version."""
    return not _missing(_remote_odb(remote_url), _dvc_md5(dvc_text, "dvc_text"))


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
    odb = _remote_odb(remote_url)
    missing = _missing(odb, md5)
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
        entries = _manifest(odb, md5) or []
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


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the workspace against other threads and other segops processes."""
    from dvc.lock import make_lock  # zc.lockfile (flock): the OS drops it if the process dies

    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    with _LOCK, make_lock(str(root / ".dvc" / "tmp" / "segops.lock"), wait=True):
        yield


@contextmanager
def _open_repo(root: Path) -> Iterator[Repo]:
    """A DVC Repo on `root`; the caller holds `_locked(root)`."""
    from dvc.repo import Repo

    _quiet_dvc()
    # `_wait_for_lock` is what the CLI's --wait-for-lock sets: wait for `dvc` run by hand.
    with Repo(str(root), _wait_for_lock=True) as repo:
        yield repo


@contextmanager
def _remote_for_call(root: Path, name: str, url: str | None) -> Iterator[None]:
    """Set remote `name` to `url` (if given) for the body; if the body fails, put
    `.dvc/config` back byte for byte, so a bad `versioning.remote_url` is not kept."""
    if not url:
        yield
        return
    conf = root / ".dvc" / "config"
    saved = conf.read_bytes() if conf.is_file() else None
    try:
        _set_remote(root, name, url)
        yield
    except BaseException as exc:
        if saved is None:
            conf.unlink(missing_ok=True)
        else:
            conf.write_bytes(saved)
        if isinstance(exc, VersioningError):
            note = f" .dvc/config was put back as it was: remote {name} is not set to {url}."
            raise VersioningError(f"{exc}{note}") from exc
        raise


def _set_remote(root: Path, name: str, url: str) -> None:
    from dvc.config import Config

    if not name.strip() or not url.strip():
        raise VersioningError(f"remote name and URL must be non-empty (got {name!r}, {url!r})")
    with Config(str(root / ".dvc")).edit() as conf:
        # DVC looks remotes up by lower-cased name (`dvc remote add` lower-cases them too).
        conf["remote"].setdefault(name.lower(), {})["url"] = _absolute_url(url, root)
        conf["core"]["remote"] = name.lower()


def _quiet_dvc() -> None:
    # Importing dvc attaches stdout handlers at INFO to its loggers, so every add would print
    # "To track the changes with git, run: ..." into our CLI's output. Keep warnings only.
    for name in ("dvc", "dvc_objects", "dvc_data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _step(
    step: str, rel: str, dvc_file: Path, previous: str | None, action: Callable[[], Any]
) -> Any:
    """Run `action`; on failure put `dvc_file` back to `previous` and raise VersioningError."""
    try:
        return action()
    except Exception as exc:
        if previous is None:
            dvc_file.unlink(missing_ok=True)
        else:
            dvc_file.write_text(previous)
        fix = (
            f"check that {rel}/ exists and is not tracked by git (`git rm -r --cached {rel}`)"
            if step == "add"
            else "check the remote (versioning.remote/remote_url, `dvc remote list`), its "
            "credentials and free space"
        )
        kept = "left unchanged" if previous is not None else "not written"
        raise VersioningError(
            f"dvc {step} of {rel} failed ({type(exc).__name__}: {exc}); {rel}.dvc was "
            f"{kept}. Fix: {fix}, then run again."
        ) from exc


def _push(repo: Repo, dvc_file: Path, remote: str, md5: str) -> int:
    """Push one .dvc target; return the number of objects uploaded."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.transfer import transfer

    pushed = repo.push(targets=[str(dvc_file)], remote=remote)
    # `dvc push` trusts a remote holding the .dir manifest to hold all its files, so objects
    # deleted from the remote are never sent again: check each one and send what is missing.
    odb = repo.cloud.get_remote_odb(remote)
    if _missing(odb, md5):
        result = transfer(repo.cache.repo, odb, [HashInfo("md5", md5)], shallow=False)
        if result.failed:
            raise OSError(f"could not upload {len(result.failed)} object(s) of {md5}")
        pushed += len(result.transferred)
    return pushed


def _version(
    root: Path, rel: str, remote: str, url: str, pushed: int, own: tuple[str, str] = ("", "")
) -> DataVersion:
    dvc_file = root / f"{rel}.dvc"
    if not dvc_file.is_file():
        raise VersioningError(f"{dvc_file} not found: version the dataset first (`dvc add {rel}`)")
    text = dvc_file.read_text()
    md5 = _dvc_md5(text, str(dvc_file))
    return DataVersion(rel, md5, f"{rel}.dvc", text, remote, url, pushed, *own)


def _dataset_subdir(root: Path, rel: str, dataset: str | Path | None) -> str:
    """`dataset`'s path inside the versioned folder `rel` ("" when not given)."""
    if dataset is None:
        return ""
    full = (root / dataset).resolve() if not Path(dataset).is_absolute() else Path(dataset)
    tree = (root / rel).resolve()
    if not full.resolve().is_relative_to(tree) or full.resolve() == tree:
        raise VersioningError(
            f"dataset {dataset} is not a folder inside the versioned tree {rel}/: import it "
            f"first (segops run --dataset does: it copies it into {rel}/<name>/)"
        )
    return full.resolve().relative_to(tree).as_posix()


def _refuse_links(tree: Path) -> None:
    from segops.data.place import find_symlinks

    links = find_symlinks(tree)
    if links:
        raise VersioningError(
            f"{tree} holds symbolic links ({', '.join(map(str, links))}): DVC would copy "
            "what they point to into the data version and the remote. Replace each link by "
            "the real file (cp -L) or remove it, then run again."
        )


def _own_md5(repo: Repo, md5: str, rel: str, sub: str) -> tuple[str, str]:
    """(`rel/sub`, its own directory hash), read from the new manifest in the local cache."""
    from segops.data.place import subtree_md5

    if not sub:
        return "", ""
    entries = json.loads(Path(repo.cache.repo.oid_to_path(md5)).read_text())
    return f"{rel}/{sub}", subtree_md5(entries, sub)


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


def _relative(root: Path, path: str | Path) -> str:
    full = (root / path).resolve()
    if not full.is_relative_to(root) or full == root:
        raise VersioningError(f"versioning.path {path} must be a folder inside {root}")
    return full.relative_to(root).as_posix()


def _absolute_url(url: str, base: Path) -> str:
    """Return `url` unchanged if it has a scheme (s3://...), else as an absolute local path."""
    if _URL_SCHEME.match(url):
        return url
    return str((base / Path(url).expanduser()).resolve())


def _remote_odb(url: str) -> HashFileDB:
    """The object store of the DVC 3 remote at `url` (objects under files/md5/)."""
    from dvc.fs import get_cloud_fs
    from dvc_data.hashfile.db import get_odb

    _quiet_dvc()
    try:
        cls, conf, fs_path = get_cloud_fs(None, url=_absolute_url(url, Path.cwd()))
        fs = cls(**conf)
    except Exception as exc:
        raise VersioningError(f"cannot open DVC remote {url}: {exc}") from exc
    return get_odb(fs, fs.join(fs_path, "files", "md5"), hash_name="md5")


def _manifest(odb: HashFileDB, md5: str) -> list[dict[str, str]] | None:
    """The .dir object's entries [{"md5", "relpath"}]; None if it is absent or corrupt."""
    try:
        raw = odb.fs.cat_file(odb.oid_to_path(md5))
    except FileNotFoundError:
        return None
    return json.loads(raw) if hashlib.md5(raw).hexdigest() == md5.removesuffix(".dir") else None


def _missing(odb: HashFileDB, md5: str) -> list[str]:
    """Hashes of this version's objects absent from `odb` (just the manifest's if it is bad)."""
    entries = _manifest(odb, md5)
    if entries is None:
        return [md5]
    oids = sorted({e["md5"] for e in entries})
    # Plain existence checks: DVC's oids_exist on a local remote rehashes objects and deletes
    # any it finds corrupt, which an audit must not do.
    present = set(odb.list_oids_exists(oids))
    return [oid for oid in oids if oid not in present]
