"""The lineage record: one typed value, one spelling of its tags, a clear error when a tag is
missing."""

from __future__ import annotations

import dataclasses

import pytest

from segops.record import TAGS, LineageError, LineageRecord

RECORD = LineageRecord(
    dataset_path="data/nuclei",
    dataset_md5="a" * 32 + ".dir",
    data_path="data",
    data_md5="b" * 32 + ".dir",
    dvc_file="data.dvc",
    remote_url="/srv/dvc",
    classes=("background", "nucleus"),
    model_kind="semantic",
    git_commit="c" * 40,
    git_dirty=False,
    validation_passed=True,
    flow_run_id="none",
    code_version="d" * 64,
)


def test_every_field_has_one_tag_and_the_tags_round_trip():
    assert set(TAGS) == {f.name for f in dataclasses.fields(LineageRecord)}
    tags = RECORD.to_tags()
    assert tags["segops.data.classes"] == '["background", "nucleus"]'
    assert tags["segops.git.dirty"] == "false" and tags["segops.validation.passed"] == "true"
    assert LineageRecord.from_tags(tags | {"segops.other": "x"}) == RECORD


def test_a_missing_tag_is_one_clear_error_naming_it():
    tags = RECORD.to_tags()
    del tags["segops.dataset.md5"], tags["segops.model.kind"]
    with pytest.raises(LineageError, match=r"models:/m/1 lacks .*segops\.dataset\.md5, segops"):
        LineageRecord.from_tags(tags, "models:/m/1")


def test_the_flow_writes_the_record():
    from segops.steps.lineage import lineage_record
    from segops.steps.records import Contract, SourceState, Validated
    from segops.validation_report import ValidationReport
    from segops.versioning import DataVersion

    data = DataVersion(
        path="data",
        md5=RECORD.data_md5,
        dvc_file="data.dvc",
        dvc_text="outs: ...",
        remote="local",
        remote_url="/srv/dvc",
        pushed=0,
        dataset="data/nuclei",
        dataset_md5=RECORD.dataset_md5,
    )
    found = lineage_record(
        data,
        Validated(ValidationReport(True, "data/nuclei", ()), "validation.json"),
        "",
        SourceState(commit=RECORD.git_commit, dirty=False),
        Contract(kind="semantic", classes=("background", "nucleus"), channels=3),
    )
    assert LineageRecord.from_tags(found.to_tags()) == found
    expected = dataclasses.replace(RECORD, channels=3)
    assert dataclasses.replace(found, code_version=RECORD.code_version) == expected


def test_the_model_report_shows_the_lineage_record_and_the_decision():
    from segops.steps.report import _report_lineage

    record = RECORD
    run = record.to_tags() | {"segops.seed": "0", "segops.other": "not shown", "mlflow.user": "u"}
    shown = _report_lineage(run, {"promotion.promote": "true", "promotion.other": "no"})
    assert shown == {tag.removeprefix("segops."): v for tag, v in record.to_tags().items()} | {
        "seed": "0",
        "promotion.promote": "true",
    }
