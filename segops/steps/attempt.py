"""Which attempt a flow runs: none when a registered version was already made from the same
data, config and code; else an interrupted attempt of the same inputs, or a fresh one
(`segops.resume` holds the policy)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from segops.config import Config, build_config
from segops.record import PREFIX
from segops.resume import choose_attempt, identity
from segops.steps.records import Attempt, Existing
from segops.steps.registration import registered_metrics

if TYPE_CHECKING:
    from segops.versioning import DataVersion

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


def unchanged_step(cfg: Config, data: DataVersion) -> Existing | None:
    """The registered version already made from this data, config and code, or None.

    Compares the dataset's own hash and path, the config hash (locations and promotion settings
    excluded) and the code version with the tags of the versions of `promotion.model_name`.
    Also says whether the version was `decided` (went through the gate: a flow killed between
    register and promote leaves it undecided), its `attempt_key`, `out_dir`, `checkpoint`,
    `metrics` (the evaluation's headline figures copied to the version) and whether it was
    `exported` to ONNX (the flow exports after the gate: one killed in between left no tags).
    """
    from segops import tracking
    from segops.promotion.registry import ATTEMPT_TAG, DECIDED_TAG, find_version, version_tags

    tracking.connect(cfg.tracking)
    ref = find_version(cfg.promotion.model_name, identity(cfg, data.to_dict()))
    if ref is None:
        return None
    tags = version_tags(ref)
    key = tags.get(ATTEMPT_TAG, "")
    out_dir = tags.get(PREFIX + "run_dir") or str(Path(cfg.train.out_dir).parent / key)
    return Existing(
        ref=ref,
        decided=DECIDED_TAG in tags,
        attempt_key=key,
        out_dir=out_dir,
        checkpoint=str(Path(out_dir) / "checkpoints" / "best.pt"),
        metrics=registered_metrics(tags),
        exported=PREFIX + "onnx.status" in tags,
    )


def choose_attempt_step(cfg: Config, data: DataVersion, fresh_key: str) -> Attempt:
    """The attempt this flow runs, claimed (see `segops.resume.choose_attempt`): an
    interrupted attempt of the same inputs, with its outputs folder, else `fresh_key`."""
    found = choose_attempt(cfg.to_dict(), data.to_dict(), fresh_key, fresh_key)
    return Attempt(
        attempt_key=found["attempt_key"],
        config=build_config(found["config"], "pipeline config"),
        resumed=found["resumed"],
        failed=tuple(found["failed"]),
        notes=tuple(found["notes"]),
    )
