"""Where a deployment's worker gets the code: a git clone of one recorded commit.

A deployment must run on any worker (another host, a container, a Kubernetes pod), so it
records no path of the machine that made it: the pull step clones the repository at the commit
deployed, the flow run starts in that clone, and the params file, dataset and DVC workspace are
paths relative to it. The worker image (docker/Dockerfile) has git for this.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from segops.errors import SegopsError

CLONE_STEP = "prefect.deployments.steps.git_clone"


class SourceError(SegopsError):
    """The code to deploy cannot be pinned: no repository, no commit, or a path outside it."""


@dataclass(frozen=True)
class CodeSource:
    """A git repository every worker can clone, and the commit to run."""

    repository: str
    commit: str

    def pull_steps(self) -> list[dict]:
        """Prefect pull steps: clone `repository` at `commit`; the run then starts in the clone."""
        step = {"id": "clone", "repository": self.repository, "commit_sha": self.commit}
        return [{CLONE_STEP: step}]


def _git(root: Path, *args: str) -> str | None:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def checkout_root(start: Path | str = ".") -> Path:
    """The root of the git checkout holding `start`."""
    top = _git(Path(start), "rev-parse", "--show-toplevel")
    if top is None:
        raise SourceError(
            f"{Path(start).resolve()} is not in a git checkout: a deployment clones the code "
            "from a repository; run this inside your clone of the project"
        )
    return Path(top)


def is_host_path(url: str) -> bool:
    """Whether `url` names a folder of this machine (a clone from it works only here)."""
    return url.startswith(("/", "./", "../", "~")) or bool(re.match(r"[A-Za-z]:[\\/]", url))


def code_source(root: Path, repository: str | None = None, commit: str | None = None) -> CodeSource:
    """Pin the code: `repository` (default: the `origin` remote's URL) at `commit` (default
    HEAD), resolved to a full SHA. An `origin` that is a folder of this machine is refused;
    pass `repository` (e.g. a file:// URL of a folder every worker mounts) to override."""
    url = repository or _git(root, "remote", "get-url", "origin")
    if not url:
        raise SourceError(
            f"{root} has no `origin` remote: pass --repo URL, the git URL workers clone from"
        )
    if repository is None and is_host_path(url):
        raise SourceError(
            f"origin of {root} is {url}, a folder of this machine: workers elsewhere cannot "
            "clone it. Pass --repo URL (file:///... only for a folder every worker mounts)"
        )
    sha = _git(root, "rev-parse", "--verify", f"{commit or 'HEAD'}^{{commit}}")
    if sha is None:
        raise SourceError(f"{commit or 'HEAD'} is not a commit of {root}")
    return CodeSource(url, sha)


def relative_to_checkout(path: Path | str, root: Path, what: str) -> str:
    """`path` as a POSIX path relative to `root` (the clone on the worker mirrors it)."""
    full = Path(path).expanduser().resolve()
    try:
        return full.relative_to(root.resolve()).as_posix() or "."
    except ValueError:
        raise SourceError(
            f"{what} {path} is outside the checkout {root}: a deployment runs in a fresh clone "
            "on the worker, so it can only name files of the repository"
        ) from None


def check_committed(root: Path, commit: str, relative: str, what: str) -> None:
    """Refuse a file the worker's clone will not have: absent from `commit`."""
    if _git(root, "cat-file", "-e", f"{commit}:{relative}") is None:
        raise SourceError(
            f"{what} {relative} is not in commit {commit[:12]}: the worker clones that commit. "
            "Commit (and push) it first"
        )
