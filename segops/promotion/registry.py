"""Registry side effects: register a version (alias challenger), apply a promotion decision,
roll back. The decision itself is the pure `segops.promotion.decide.decide`.

MLflow keeps no alias history (moving an alias overwrites it), so every move is also appended
to our own log: the registered-model tag `segops.champion_history`, a JSON list of
`{"version", "action", "at", "reason"}`. Rollback replays it. Versions are found again by an
attempt key, so a retried registration does not create a second version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from segops.errors import SegopsError

if TYPE_CHECKING:
    from segops.config import Config

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "segops.champion_history"
ATTEMPT_TAG = "segops.attempt_key"
DECIDED_TAG = "promotion.promote"  # written last by `record_decision`
HISTORY_KEEP = 40  # entries kept in the tag (MLflow caps tag values at a few KB)


class RegistryError(SegopsError):
    """The registry does not hold what was asked for."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def now_iso() -> str:
    """The time now as UTC ISO 8601 with milliseconds (orders events within a second)."""
    now = time.time()
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now * 1000) % 1000:03d}+00:00"
    )


def _ensure_model(client: MlflowClient, name: str) -> None:
    with contextlib.suppress(MlflowException):  # already exists (possibly made concurrently)
        client.create_registered_model(name, description="segops segmentation model")


def register(
    model_uri: str, name: str, run_id: str, attempt_key: str, tags: dict[str, str]
) -> ModelRef:
    """Register `model_uri` as a new version of `name` with alias `challenger`.

    Idempotent per `attempt_key`: a retry returns the version made by the first try.
    """
    client = MlflowClient()
    _ensure_model(client, name)
    query = f"name = '{name}' and tags.`{ATTEMPT_TAG}` = '{attempt_key}'"
    found = client.search_model_versions(query)
    if found:
        version = found[0]
    else:
        tags = {ATTEMPT_TAG: attempt_key, **tags}
        # A tracking server accepts a logged model's `models:/m-...` source only with its id.
        model_id = (
            model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        )
        version = client.create_model_version(
            name, model_uri, run_id=run_id, tags=tags, model_id=model_id
        )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return ModelRef(name, str(version.version), run_id)


def resolve(uri_or_name: str) -> ModelRef:
    """`models:/name/3`, `models:/name@alias` (or without `models:/`) as a ModelRef."""
    text = uri_or_name.removeprefix("models:/")
    client = MlflowClient()
    try:
        if "@" in text:
            name, alias = text.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = text.partition("/")
            if not version:
                raise RegistryError(
                    f"{uri_or_name}: give a version or alias (name/3, name@champion)"
                )
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        raise RegistryError(f"{uri_or_name}: not in the registry ({exc.message})") from None
    return ModelRef(mv.name, str(mv.version), mv.run_id)


def champion(name: str) -> ModelRef | None:
    """The version holding alias `champion`, or None."""
    try:
        return resolve(f"models:/{name}@{CHAMPION}")
    except RegistryError:
        return None


def history(name: str) -> list[dict]:
    """Our append-only log of champion moves, oldest first."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def _append_history(name: str, version: str, action: str, reason: str) -> None:
    now = now_iso()
    entry = {"version": version, "action": action, "reason": reason, "at": now}
    entries = [*history(name), entry][-HISTORY_KEEP:]
    MlflowClient().set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries))


def champion_stack(entries: list[dict]) -> list[str]:
    """Replay the log: promotions push a version, rollbacks pop it; the top is the champion."""
    stack: list[str] = []
    for entry in entries:
        if entry["action"] == "promoted":
            stack.append(entry["version"])
        elif entry["action"] == "rolled_back" and stack and stack[-1] == entry["version"]:
            stack.pop()
    return stack


def promotion_lock_dir(cfg: Config) -> Path:
    """The one place where every champion move of `cfg`'s registry serialises (the gate and
    rollback): beside a local store's artifacts, else a per-user cache folder."""
    root = cfg.tracking.artifact_root
    return Path(root).parent if "://" not in root else Path.home() / ".cache" / "segops"


@contextlib.contextmanager
def promotion_lock(
    lock_dir: str | Path, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Serialise decide-and-move between processes sharing `lock_dir` (a local store).

    Two flows that finish together must not both promote against the same stale champion, and
    a rollback must not interleave with a promotion. `on_wait` is called once when another
    process holds the lock (before blocking until it is released).
    """
    path = Path(lock_dir) / ".promotion.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record_decision(ref: ModelRef, tags: dict[str, str], promote: bool, reason: str) -> None:
    """Write the decision's tags on the version; move `champion` to it only when `promote`.

    `promotion.promote` is written last: a version carrying it was decided completely (a
    process killed half-way leaves the version without it, and a rerun decides it again)."""
    client = MlflowClient()
    last = {k: v for k, v in tags.items() if k == DECIDED_TAG}
    for key, value in tags.items():
        if key != DECIDED_TAG:
            client.set_model_version_tag(ref.name, ref.version, key, value)
    if promote:
        client.set_registered_model_alias(ref.name, CHAMPION, ref.version)
        done = history(ref.name)[-1:]  # a rerun after a kill must not push it twice
        if not done or done[0]["version"] != ref.version or done[0]["action"] != "promoted":
            _append_history(ref.name, ref.version, "promoted", reason)
    for key, value in last.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)


def decided(ref: ModelRef) -> bool:
    """Whether version `ref` went through the gate (its decision was recorded completely)."""
    return DECIDED_TAG in version_tags(ref)


def rollback(name: str, reason: str, lock_dir: str | Path | None = None) -> ModelRef:
    """Move `champion` back to the champion before the current one; records why.

    With `lock_dir` (see `promotion_lock_dir`), waits for an in-flight promotion first."""
    if lock_dir is not None:
        with promotion_lock(lock_dir):
            return rollback(name, reason)
    current = champion(name)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back")
    stack = champion_stack(history(name))
    if len(stack) < 2 or stack[-1] != current.version:
        raise RegistryError(
            f"model {name!r}: no earlier champion to return to from version {current.version}"
        )
    previous = stack[-2]
    client = MlflowClient()
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current.version, "segops.rolled_back", reason)
    _append_history(name, current.version, "rolled_back", reason)
    return resolve(f"models:/{name}/{previous}")


def list_versions(name: str) -> list[dict]:
    """Every version of `name`, oldest first: version, aliases, tags, creation time (ms)."""
    client = MlflowClient()
    found = client.search_model_versions(f"name = '{name}'")
    # Search results do not carry aliases; the registered model holds alias -> version.
    aliases = client.get_registered_model(name).aliases if found else {}
    return [
        {
            "version": str(v.version),
            "aliases": sorted(a for a, ver in aliases.items() if str(ver) == str(v.version)),
            "tags": dict(v.tags),
            "created": v.creation_timestamp,
            "updated": v.last_updated_timestamp,
            "run_id": v.run_id,
        }
        for v in sorted(found, key=lambda v: int(v.version))
    ]


def find_version(name: str, tags: dict[str, str]) -> ModelRef | None:
    """The newest version of `name` whose tags include all of `tags`, or None."""
    client = MlflowClient()
    clauses = [f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
    try:
        found = client.search_model_versions(" and ".join(clauses))
    except MlflowException:  # no such registered model yet
        return None
    if not found:
        return None
    newest = max(found, key=lambda v: int(v.version))
    return ModelRef(newest.name, str(newest.version), newest.run_id)


def registered_runs(name: str, tags: dict[str, str]) -> set[str]:
    """Run ids of the versions of `name` whose tags include all of `tags`."""
    clauses = [f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
    try:
        return {v.run_id for v in MlflowClient().search_model_versions(" and ".join(clauses))}
    except MlflowException:  # no such registered model yet
        return set()


def version_tags(ref: ModelRef) -> dict[str, str]:
    """Tags of one registered version (promotion decision, lineage copies)."""
    return dict(MlflowClient().get_model_version(ref.name, ref.version).tags)


def set_version_tags(ref: ModelRef, tags: dict[str, str]) -> None:
    """Add `tags` to one registered version (report links, export results)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(ref.name, ref.version, key, value)
