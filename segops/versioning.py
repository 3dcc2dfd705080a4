"""Version the dataset directory with DVC in a workspace: add, push, read back. Reading a
remote without a workspace (audit, restore by hash) is `segops.dvc_remote`, re-exported here.

A dataset version is the `md5` (ending `.dir`) in `<path>.dvc`: the hash of a manifest that lists
every file's md5; a dataset's own hash is that of its folder's part of the manifest.

DVC is driven through its Python API (`dvc.repo.Repo`): typed exceptions, the real count of
uploaded objects, no process start. Work on a workspace is serialised by a thread lock in-process
(DVC's Repo is not thread-safe) and by `.dvc/tmp/segops.lock` across processes (DVC's own lock
does not cover config edits), and DVC's repo lock waits as `dvc --wait-for-lock` does. Never
run `dvc gc` here: without git it deletes older versions. A remote URL given for a call goes in
`.dvc/config.local` (untracked), never credentials: those come from the environment."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segops.config import VersioningConfig
from segops.data.place import find_symlinks, subtree_md5
from segops.dvc_remote import (  # re-exported: the remote half of the versioning room
    VersioningError,
    _dvc_md5,
    absolute_url,
    dataset_md5_on_remote,
    dvc_text_md5,
    missing_objects,
    quiet_dvc,
    remote_has,
    remote_url_for,
    restore_dataset,
)

# lazy imports: dvc is imported inside the functions that run it: `segops run`'s preflight finds
# the workspace through this module before anything needs DVC (docs/development.md "Imports").
if TYPE_CHECKING:  # dvc costs ~0.5 s to import: load it only when a function needs it
    from dvc.repo import Repo

__all__ = ["DataVersion", "VersioningError", "dataset_md5_on_remote", "dvc_text_md5"]
__all__ += ["configure_remote", "ensure_workspace", "find_workspace", "read_version"]
__all__ += ["remote_has", "restore_dataset", "version_dataset"]

# Parallel DVC calls in one repo fail on its lock or corrupt shared state: serialise ours.
_LOCK = threading.Lock()


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

    quiet_dvc()
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
    """Add remote `name` (or change its URL, keeping its other options), made the default; a
    relative local path is written absolute (DVC would read it relative to `.dvc/`)."""
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
    file removed) and a one-line VersioningError names the step, the path, the dataset, the fix."""
    root = find_workspace(workspace)
    rel = _relative(root, cfg.path)
    sub = _dataset_subdir(root, rel, dataset)
    _refuse_links(root / rel)
    dvc_file = root / f"{rel}.dvc"
    with _locked(root), _remote_for_call(root, cfg.remote, remote_url_for(cfg.remote_url)):
        previous = dvc_file.read_text() if dvc_file.is_file() else None
        with _open_repo(root) as repo:
            named = f" (dataset {rel}/{sub})" if sub else ""  # the folder trained on
            _step("add", rel, dvc_file, previous, lambda: repo.add(str(root / rel)), named)
            md5 = _dvc_md5(dvc_file.read_text(), str(dvc_file))
            own = _own_md5(repo, md5, rel, sub)
            if not cfg.push:
                return _version(root, rel, "", "", 0, own)
            name = cfg.remote.lower()
            url = str(repo.config["remote"].get(name, {}).get("url", "not configured"))
            push = lambda: _push(repo, dvc_file, name, md5)  # noqa: E731
            pushed = _step("push", rel, dvc_file, previous, push, f" to remote '{name}' ({url})")
    return _version(root, rel, name, url, pushed, own)


def read_version(workspace: str | Path, path: str = "data") -> DataVersion:
    """Return the version in `<path>.dvc` without running DVC (pushed=0). `remote`/`remote_url`
    are the default remote: where a push would go, not proof that it went (ask `remote_has`)."""
    from dvc.config import Config

    root = find_workspace(workspace)
    conf = Config(str(root / ".dvc"))
    name = conf["core"].get("remote", "")
    url = str(conf["remote"].get(name, {}).get("url", "")) if name else ""
    return _version(root, _relative(root, path), name, url, 0)


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

    quiet_dvc()
    # `_wait_for_lock` is what the CLI's --wait-for-lock sets: wait for `dvc` run by hand.
    with Repo(str(root), _wait_for_lock=True) as repo:
        yield repo


@contextmanager
def _remote_for_call(root: Path, name: str, url: str | None) -> Iterator[None]:
    """Remote `name` = `url` (if given) for the body; put back byte for byte if it fails."""
    if not url:
        yield
        return
    conf = root / ".dvc" / "config.local"
    saved = conf.read_bytes() if conf.is_file() else None
    try:
        _set_remote(root, name, url, level="local")
        yield
    except BaseException as exc:
        conf.unlink(missing_ok=True)
        if saved is not None:
            conf.write_bytes(saved)
        if isinstance(exc, VersioningError):
            note = " .dvc/config.local was put back as it was."
            raise VersioningError(f"{exc}{note}") from exc
        raise


def _set_remote(root: Path, name: str, url: str, level: str = "repo") -> None:
    """Make `name` = `url` the default remote at `level` (repo or local); no credentials."""
    from dvc.config import Config

    if not name.strip() or not url.strip():
        raise VersioningError(f"remote name and URL must be non-empty (got {name!r}, {url!r})")
    with Config(str(root / ".dvc")).edit(level) as conf:
        # DVC looks remotes up by lower-cased name (`dvc remote add` lower-cases them too).
        conf["remote"].setdefault(name.lower(), {})["url"] = absolute_url(url, root)
        conf["core"]["remote"] = name.lower()


def _step(
    step: str, rel: str, dvc_file: Path, previous: str | None, action: Callable[[], Any], at=""
) -> Any:
    """Run `action`; if it fails, put `dvc_file` back to `previous`, raise a one-line error."""
    try:
        return action()
    except Exception as exc:
        if previous is None:
            dvc_file.unlink(missing_ok=True)
        else:
            dvc_file.write_text(previous)
        kept = "left unchanged" if previous is not None else "not written"
        why = " ".join(str(exc).split())  # one line: DVC's own messages span several
        fix = _FIXES.get(type(exc).__name__, _FIXES[step]).format(rel=rel)
        raise VersioningError(
            f"dvc {step} of {rel}{at} failed: {type(exc).__name__}: {why}. {rel}.dvc was "
            f"{kept}. {fix}, then run again."
        ) from exc


_FIXES = {  # what to do when a DVC step fails: by DVC's exception, else by step
    "OutputAlreadyTrackedError": "Git tracks files in {rel}/, which DVC versions: untrack them "
    "(`git rm -r --cached {rel}`, then commit)",
    "OverlappingOutputPathsError": "A .dvc file or dvc.yaml stage tracks part of {rel}/: "
    "`dvc remove` it as DVC says, so that {rel}/ is versioned as one tree",
    "add": "Check that {rel}/ exists and that every file in it can be read",
    "push": "Check that the remote is up and reachable from here (versioning.remote/remote_url, "
    "`dvc remote list`), its credentials and free space",
}


def _push(repo: Repo, dvc_file: Path, remote: str, md5: str) -> int:
    """Push one .dvc target; return the number of objects uploaded."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.transfer import transfer

    pushed = repo.push(targets=[str(dvc_file)], remote=remote)
    # `dvc push` trusts a remote holding the .dir manifest to hold all its files, so objects
    # deleted from the remote are never sent again: check each one and send what is missing.
    odb = repo.cloud.get_remote_odb(remote)
    if missing_objects(odb, md5):  # a failed upload is a ConnectionError: flows retry it
        result = transfer(repo.cache.repo, odb, [HashInfo("md5", md5)], shallow=False)
        if result.failed:
            raise ConnectionError(f"could not upload {len(result.failed)} object(s) of {md5}")
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
    full, tree = (root / dataset).resolve(), (root / rel).resolve()  # absolute `dataset` wins
    if not full.is_relative_to(tree) or full == tree:
        raise VersioningError(
            f"dataset {dataset} is not a folder inside the versioned tree {rel}/: import it "
            f"first (segops run --dataset does: it copies it into {rel}/<name>/)"
        )
    return full.relative_to(tree).as_posix()


def _refuse_links(tree: Path) -> None:
    links = find_symlinks(tree)
    if links:
        raise VersioningError(
            f"{tree} holds symbolic links ({', '.join(map(str, links))}): DVC would copy "
            "what they point to into the data version and the remote. Replace each link by "
            "the real file (cp -L) or remove it, then run again."
        )


def _own_md5(repo: Repo, md5: str, rel: str, sub: str) -> tuple[str, str]:
    """(`rel/sub`, its own directory hash), read from the new manifest in the local cache."""
    if not sub:
        return "", ""
    entries = json.loads(Path(repo.cache.repo.oid_to_path(md5)).read_text())
    return f"{rel}/{sub}", subtree_md5(entries, sub)


def _relative(root: Path, path: str | Path) -> str:
    full = (root / path).resolve()
    if not full.is_relative_to(root) or full == root:
        raise VersioningError(f"versioning.path {path} must be a folder inside {root}")
    return full.relative_to(root).as_posix()
