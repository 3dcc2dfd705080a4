"""Can a new model be gated against the champion of its registered name?

Checked first in a flow, before anything is validated, versioned, trained or registered: the
gate compares per-class metrics on the champion's evaluation data, so the champion and the
challenger must be of one kind (semantic or instance), predict the same classes and take images
of the same channel count.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from segops import tracking
from segops.errors import ConfigError
from segops.promotion.registry import champion, version_tags
from segops.record import TAGS

CLASSES_TAG, KIND_TAG = TAGS["classes"], TAGS["model_kind"]  # on runs and versions
CHANNELS_TAG = TAGS["channels"]
# Every version made before the channels tag existed was trained on images read as RGB.
UNRECORDED_CHANNELS = 3


def champion_contract(name: str) -> tuple[str, str, list[str], int] | None:
    """(uri, kind, classes, input channels) of `name`'s champion, None when it has none.

    Read from the version's tags; versions registered before the tags existed are read from
    the model's `model.json` (a download of the model)."""

    ref = champion(name)
    if ref is None:
        return None
    tags = version_tags(ref)
    channels = int(tags.get(CHANNELS_TAG, UNRECORDED_CHANNELS))
    if CLASSES_TAG in tags and KIND_TAG in tags:
        return ref.uri, tags[KIND_TAG], json.loads(tags[CLASSES_TAG]), channels

    with tempfile.TemporaryDirectory(prefix="segops-contract-") as tmp:
        local = tracking.download_model(ref.uri, tmp)
        meta = json.loads(next(Path(local).rglob("model.json")).read_text())
    return ref.uri, meta.get("kind", "semantic"), list(meta["classes"]), channels


def check_compatible(
    name: str, kind: str, classes: list[str], dataset: str, channels: int = UNRECORDED_CHANNELS
) -> None:
    """ConfigError, with the fix, when `name`'s champion differs in kind, classes or the
    channel count of its input images."""
    found = champion_contract(name)
    if found is None:
        return
    uri, their_kind, their_classes, their_channels = found
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
    if their_channels != channels:
        raise ConfigError(
            f"{uri}, the champion of {name!r}, was trained on {their_channels}-channel images; "
            f"this model takes {channels}-channel images from {dataset}: its first layer "
            f"differs and the gate cannot compare them. {fix}."
        )
