"""Interrupted attempts: which one a rerun of the same inputs continues, and who holds which.

A flow killed during training (kill -9, a lost node) leaves its MLflow run RUNNING, its
checkpoints under `runs/<attempt_key>/` and no registered version; one whose training raised
leaves the run FAILED. A rerun with the same data identity (the dataset's own md5 and path),
config hash and code version adopts that attempt key, so training resumes from its `last.pt`
in the same folder and logs into the same MLflow run; the other orphaned RUNNING runs of that
identity are marked FAILED.

Liveness: a flow holds an exclusive `flock` on `<out_dir>/.attempt.lock` while it runs. The
kernel drops it when the process dies, `kill -9` included, so a run whose lock can be taken
is orphaned, and a run whose lock is held (a live flow on this host) is left alone. Runs of
another host are judged by their lock file on this one (see the note in `choose_attempt`).
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import IO, Any

from segops.config import Config, build_config, config_hash
from segops.errors import CheckpointError
from segops.lineage import code  # code.code_version: tests replace it

# lazy imports: MLflow (segops.tracking, segops.promotion) and torch (checkpoints) are imported
# inside the functions: flows/retrain.py imports this module when `segops run` starts
# (docs/development.md "Imports").

TAG = "segops."
LOCK_FILE = ".attempt.lock"
_held: dict[str, IO[str]] = {}  # attempt folders this process holds, by resolved path


def identity(cfg: Config, data_version: dict[str, Any]) -> dict[str, str]:
    """The tags that make two attempts "the same inputs": the dataset's own md5 and path, the
    config hash (locations and promotion settings excluded) and the code version."""
    return {
        TAG + "dataset.md5": data_version["dataset_md5"],
        TAG + "dataset.path": data_version["dataset"],
        TAG + "config_hash": config_hash(cfg),
        TAG + "code.version": code.code_version(),
    }


def at_dir(config: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """`config` with its outputs (checkpoints, eval, validation report) under `out_dir`."""
    out = Path(out_dir)
    return config | {
        "train": {**config["train"], "out_dir": str(out)},
        "validation": {**config["validation"], "report_dir": str(out / "validation")},
    }


def claim(out_dir: str | Path) -> bool:
    """Hold the attempt folder's lock for this process; False when another process holds it."""
    key = str(Path(out_dir).resolve())
    if key in _held:
        return True
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fh = open(Path(out_dir) / LOCK_FILE, "a")  # noqa: SIM115 (held until release_attempts)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return False
    _held[key] = fh
    return True


def release_attempts() -> None:
    """Release every attempt lock this process holds (at the end of a flow, however it ends)."""
    while _held:
        _held.popitem()[1].close()  # closing the file drops its flock


def _orphaned(out_dir: Path) -> bool:
    """True when no live process holds the attempt folder's lock."""
    if str(out_dir.resolve()) in _held:
        return False
    if not (out_dir / LOCK_FILE).is_file():
        return True
    with open(out_dir / LOCK_FILE, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def _candidates(cfg: Config, config: dict[str, Any], data_version: dict[str, Any]) -> list[dict]:
    """Unregistered RUNNING or FAILED runs of the same inputs, with their attempt folders,
    the one with a checkpoint first, then newest first."""
    from segops import tracking
    from segops.promotion.registry import registered_runs

    store = tracking.connect(cfg.tracking)
    same = identity(cfg, data_version)
    registered = registered_runs(cfg.promotion.model_name, same)
    found = []
    for run in tracking.runs_tagged(store, same):
        key = run["tags"].get(tracking.ATTEMPT_TAG)
        if run["status"] not in ("RUNNING", "FAILED") or not key or run["run_id"] in registered:
            continue
        default = Path(config["train"]["out_dir"]).parent / key
        out = Path(run["tags"].get(TAG + "run_dir") or default)
        found.append(run | {"attempt_key": key, "out_dir": out})
    found.sort(key=lambda r: (r["out_dir"] / "checkpoints" / "last.pt").is_file(), reverse=True)
    return found  # a stable sort: newest first within each group


def _check_last(out_dir: Path) -> str | None:
    """Move a `last.pt` that fails its hash check aside (training then starts over in the same
    run); returns a note, or None when it is fine or absent."""
    from segops.train.checkpoint import load_checkpoint

    last = out_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return None
    try:
        load_checkpoint(last)
    except CheckpointError as exc:
        for suffix in ("", ".sha256"):
            with contextlib.suppress(FileNotFoundError):
                Path(f"{last}{suffix}").replace(f"{last}{suffix}.corrupt")
        return f"{last} could not be resumed ({exc}); moved aside, training starts over"
    return None


def choose_attempt(
    config: dict[str, Any], data_version: dict[str, Any], fresh_key: str, flow_run_id: str = ""
) -> dict[str, Any]:
    """The attempt this flow runs, claimed: an interrupted attempt of the same inputs (see the
    module docstring), else `fresh_key`. Marks the other orphaned RUNNING runs of the same
    inputs FAILED. Returns `attempt_key`, `config` (outputs under the attempt's folder),
    `resumed` (the adopted run id, or None), `failed` (run ids marked FAILED) and `notes`.

    The lock is a local file: with flows on several hosts sharing one tracking server, a run
    that is alive on another host looks orphaned here. Run one flow per identity at a time
    there (e.g. a Prefect concurrency limit per model).
    """
    from segops import tracking

    cfg = build_config(config, "pipeline config")
    adopted: dict | None = None
    failed: list[str] = []
    notes: list[str] = []
    for run in _candidates(cfg, config, data_version):
        if not _orphaned(run["out_dir"]):
            continue  # a live flow on this host: not ours to touch
        if adopted is None and claim(run["out_dir"]):
            adopted = run
            continue
        if run["status"] == "RUNNING":
            tracking.finish_run(run["run_id"], failed=True)
            failed.append(run["run_id"])
    if adopted is None:
        out = Path(config["train"]["out_dir"])
        claim(out)
        return {
            "attempt_key": fresh_key,
            "config": config,
            "resumed": None,
            "failed": failed,
            "notes": notes,
        }
    note = _check_last(adopted["out_dir"])
    notes += [note] if note else []
    resumed_by = adopted["tags"].get(TAG + "resumed_by", "")
    by = ",".join(filter(None, [resumed_by, flow_run_id or fresh_key]))
    tracking.set_tags(adopted["run_id"], {TAG + "resumed_by": by[-5000:]})
    return {
        "attempt_key": adopted["attempt_key"],
        "config": at_dir(config, adopted["out_dir"]),
        "resumed": adopted["run_id"],
        "failed": failed,
        "notes": notes,
    }
