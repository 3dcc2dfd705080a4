"""The registry check before any work: a champion of other classes or another input channel
count stops the flow with the fix; the channel count is recorded in lineage."""

from __future__ import annotations

import dataclasses
import uuid

import mlflow
import pytest
from mlflow import MlflowClient

from segops.errors import ConfigError
from segops.promotion.compat import champion_contract, check_compatible
from segops.record import TAGS, LineageRecord

CLASSES = ["background", "nucleus"]


@pytest.fixture
def name(request, tmp_path) -> str:
    """A model name of this test alone in the session's MLflow store (tests/conftest.py):
    no store of its own to create, which costs seconds. Its runs go to an experiment whose
    artifacts lie in `tmp_path` (the default experiment's would be ./mlruns in the checkout)."""
    name = f"compat-{request.node.name}-{uuid.uuid4().hex[:8]}"
    MlflowClient().create_experiment(name, tmp_path.as_uri())  # _champion logs into it
    return name


def _champion(name: str, **tags: str) -> None:
    """A registered tiny version of `name` holding alias champion, with version `tags`."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name).experiment_id  # not set_experiment:
    with mlflow.start_run(experiment_id=experiment) as run:  # that would outlive this test
        mlflow.log_text("{}", "model/model.json")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id, tags=tags
    )
    client.set_registered_model_alias(name, "champion", version.version)


def _tags(channels: int | None) -> dict[str, str]:
    tags = {TAGS["model_kind"]: "semantic", TAGS["classes"]: '["background", "nucleus"]'}
    return tags if channels is None else tags | {TAGS["channels"]: str(channels)}


def test_a_champion_of_another_channel_count_stops_with_the_fix(name):
    _champion(name, **_tags(1))
    assert champion_contract(name)[1:] == ("semantic", CLASSES, 1)
    with pytest.raises(
        ConfigError,
        match=rf"champion of '{name}', was trained on 1-channel images; this model takes "
        r"3-channel images from data/rgb.*--set promotion.model_name=<name>",
    ):
        check_compatible(name, "semantic", CLASSES, "data/rgb", 3)
    check_compatible(name, "semantic", CLASSES, "data/grey", 1)  # same: no error


def test_a_champion_without_the_channels_tag_reads_as_rgb(name):
    _champion(name, **_tags(None))  # registered before segops.data.channels existed
    assert champion_contract(name)[3] == 3
    check_compatible(name, "semantic", CLASSES, "data/new", 3)
    with pytest.raises(ConfigError, match=r"trained on 3-channel images"):
        check_compatible(name, "semantic", CLASSES, "data/new", 1)
    with pytest.raises(ConfigError, match=r"predicts classes .*declares \['bg', 'fg'\]"):
        check_compatible(name, "semantic", ["bg", "fg"], "data/new", 3)


def test_channels_are_recorded_and_old_records_still_read():
    record = LineageRecord(
        *(["x"] * 6),
        classes=("bg", "fg"),
        model_kind="semantic",
        git_commit="c",
        git_dirty=False,
        validation_passed=True,
        flow_run_id="none",
        code_version="d",
        channels=3,
    )
    tags = record.to_tags()
    assert tags["segops.data.channels"] == "3"
    assert LineageRecord.from_tags(tags) == record
    del tags["segops.data.channels"]  # a version made before the tag: no error, no tag back
    old = LineageRecord.from_tags(tags)
    assert old == dataclasses.replace(record, channels=None) and old.to_tags() == tags


def test_the_flow_records_the_channels_of_its_contract():
    """registry_step's contract carries the readers' channel count (IMAGE_CHANNELS, asserted
    through the flow in tests/test_own_data.py) and the lineage tags record it."""
    from segops.data.io import IMAGE_CHANNELS
    from segops.steps.lineage import lineage_record
    from segops.steps.records import Contract, SourceState, Validated
    from segops.validation_report import ValidationReport
    from segops.versioning import DataVersion

    data = DataVersion(*["x"] * 6, 0, dataset="x", dataset_md5="x")
    validated = Validated(ValidationReport(True, "x", ()), "x")
    contract = Contract("semantic", tuple(CLASSES), IMAGE_CHANNELS)
    record = lineage_record(data, validated, "", SourceState("c", False), contract)
    tags = record.to_tags()
    assert IMAGE_CHANNELS == 3 and tags["segops.data.channels"] == "3"
