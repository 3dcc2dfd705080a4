"""Can a new model be gated against the champion of its registered name?

Checked first in a flow, before anything is validated, versioned, trained or registered: the
gate compares per-class metrics on the champion's evaluation data, so the champion and the
challenger must be of one kind (semantic or instance) and predict the same classes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from segops.errors import ConfigError
from segops.record import TAGS

CLASSES_TAG, KIND_TAG = TAGS["classes"], TAGS["model_kind"]  # on runs and versions


def champion_contract(name: str) -> tuple[str, str, list[str]] | None:
    """(uri, kind, classes) of `name`'s champion, None when it has none.

    Read from the version's tags; versions registered before the tags existed are read from
    the model's `model.json` (a download of the model)."""
    from segops.promotion.registry import champion, version_tags

    ref = champion(name)
    if ref is None:
        return None
    tags = version_tags(ref)
    if CLASSES_TAG in tags and KIND_TAG in tags:
        return ref.uri, tags[KIND_TAG], json.loads(tags[CLASSES_TAG])
    from segops import tracking

    with tempfile.TemporaryDirectory(prefix="segops-contract-") as tmp:
        local = tracking.download_model(ref.uri, tmp)
        meta = json.loads(next(Path(local).rglob("model.json")).read_text())
    return ref.uri, meta.get("kind", "semantic"), list(meta["classes"])


def check_compatible(name: str, kind: str, classes: list[str], dataset: str) -> None:
    """ConfigError, with the fix, when `name`'s champion differs in kind or classes."""
    found = champion_contract(name)
    if found is None:
        return
    uri, their_kind, their_classes = found
    fix = (
        "Register this model under its own name: --set promotion.model_name=<name> (with "
        "promotion.model_name: auto, segops names it after the dataset folder)"
    )
    if their_kind != kind:
        raise ConfigError(
            f"{uri}, the champion of {name!r}, is a {their_kind} model and this one is {kind}: "
            f"the gate cannot compare them. {fix}, e.g. {name}-{kind}"
        )
    if list(their_classes) != list(classes):
        raise ConfigError(
            f"{uri}, the champion of {name!r}, predicts classes {list(their_classes)}; "
            f"{dataset} declares {list(classes)}: the gate cannot compare them. {fix}."
        )
