"""The dataset's steps: fetch (from object storage), validate, place in the versioned tree,
version with DVC."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from segops.config import Config, build_config
from segops.steps.records import Placed, Validated

if TYPE_CHECKING:
    from segops.versioning import DataVersion

# lazy imports: the flow module (and `segops run`, which imports it) must not pay for torch,
# MLflow, DVC and ONNX before a step runs (docs/development.md "Imports").


def fetch_step(url: str, staging: str) -> str:
    """A dataset on object storage (`s3://bucket/prefix`) downloaded whole into `staging`
    (a folder of this flow run, outside the versioned tree); returns the local folder, which
    the flow then validates and imports like any dataset outside `data/`."""
    from segops.data.fetch import fetch_dataset

    return str(fetch_dataset(url, staging))


def validate_step(cfg: Config) -> Validated:
    """Great Expectations suite on the dataset; the report and where its JSON is.

    On success the dataset is also loaded once by the core, which writes missing split files:
    the split is part of the data and must exist before the data is versioned.
    """
    from segops.data.manifest import load_dataset
    from segops.validation import validate_dataset

    report = validate_dataset(cfg)
    if report.success:
        load_dataset(cfg.data, eval_split=cfg.evaluate.split)
    return Validated(report, str(Path(cfg.validation.report_dir) / "validation.json"))


def place_step(cfg: Config) -> Placed:
    """The dataset inside the versioned tree: `cfg` with `data.root` there (a dataset outside
    it is imported into `<versioning.path>/<folder>/` first) and a one-line message."""
    from segops.data.place import place_dataset

    placed = place_dataset(cfg.data.root, cfg.versioning.path)
    raw = cfg.to_dict()
    moved = build_config(raw | {"data": {**raw["data"], "root": placed.root}}, "pipeline config")
    return Placed(config=moved, message=placed.message)


def version_step(cfg: Config, workspace: str = ".") -> DataVersion:
    """DVC: add and push the dataset directory."""
    from segops.versioning import version_dataset

    return version_dataset(workspace, cfg.versioning, cfg.data.root)
