"""model.json: the contract built from a checkpoint's description, and clear errors reading one."""

from __future__ import annotations

import json

import pytest

from segops.serving.contract import (
    SCHEMA,
    ContractError,
    build_contract,
    read_contract,
    write_contract,
)

META = {
    "config": {"data": {"image_size": 64, "crop_size": 128}, "augment": {"mean": [0.5] * 3}},
    "classes": ["background", "cell"],
    "model_name": "maskrcnn",
    "kind": "instance",
}


def test_an_instance_contract_names_its_fields_and_says_why_lineage_is_missing(tmp_path):
    contract = build_contract(META, {}, {"mask_ap": 0.25, "loss": 1.0})
    assert contract["schema"] == SCHEMA and contract["model_name"] == "maskrcnn"
    assert contract["metrics"] == {"mask_ap": 0.25}  # headline metrics only
    assert contract["input"]["crop_size"] == 128 and contract["input"]["channels"] == 3
    assert {"boxes", "scores", "masks"} <= set(contract["output"]["instance_fields"])
    assert contract["output"]["params"]["score_threshold"].startswith("float")
    assert contract["lineage"]["available"] is False
    assert "segops.dataset.md5" in contract["lineage"]["reason"]
    path = write_contract(tmp_path / "model.json", contract)
    assert read_contract(path) == json.loads(json.dumps(contract))
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no model.json"),
        ("{not json", "not a JSON model contract"),
        (json.dumps({"config": {}, "classes": []}), "lacks schema, input, output"),
        (
            json.dumps(
                dict.fromkeys(("schema", "input", "output", "metrics", "versions", "lineage"), "x")
            ),
            "schema 'x'",
        ),
    ],
)
def test_reading_a_bad_contract_names_the_file_and_the_fix(tmp_path, content, says):
    path = tmp_path / "model.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ContractError, match=says) as err:
        read_contract(path)
    assert str(path) in str(err.value)
