"""GX checks: each kind of bad input fails exactly its check and names its ids and files."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segops.config import load_config
from segops.data.manifest import scan_dataset
from segops.errors import DatasetError
from segops.validation import (
    CHECK_NAMES,
    ValidationReport,
    _new_context,
    _params,
    _run_suite,
    _sample_expectations,
    class_statistics,
    sample_statistics,
    validate_dataset,
)


def _config(root, tmp_path, *extra):
    return load_config(
        None, [f"data.root={root}", f"validation.report_dir={tmp_path / 'report'}", *extra]
    )


def _write_mask(root, sid, mask):
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{sid}.png")


def _write_splits(root, **splits):
    (root / "splits").mkdir(exist_ok=True)
    for name, ids in splits.items():
        (root / "splits" / f"{name}.txt").write_text("\n".join(ids) + "\n")


def _only_failure(report, name, loader=False):
    """Assert that `name` is the one check that failed (not errored), besides dataset_loads
    when the `loader` refuses the same files too; return it."""
    failing = {name, "dataset_loads"} if loader else {name}
    assert {c.expectation: c.success for c in report.checks} == {
        n: n not in failing for n in CHECK_NAMES
    }
    assert report.success is False
    assert all(not c.errored for c in report.failures())
    assert bool(report.problems) is loader
    (failed,) = [c for c in report.failures() if c.expectation == name]
    return failed


def test_valid_dataset_passes_all_eight_checks(folder_dataset, tmp_path):
    report = validate_dataset(_config(folder_dataset, tmp_path))
    assert report.success is True
    assert report.dataset == str(folder_dataset)
    assert [c.expectation for c in report.checks] == list(CHECK_NAMES)
    assert len(CHECK_NAMES) == 8
    assert report.problems == ()
    assert all(c.success and not c.errored for c in report.checks)
    assert all(c.rows == () and c.files == () for c in report.checks)
    assert report.failures() == []
    by_name = {c.expectation: c for c in report.checks}
    assert (
        by_name["mask_values_valid"].reason
        == "Every mask holds only class ids 0..2 or 255 (ignore)."
    )
    assert by_name["required_splits_present"].gx_type == "ExpectColumnDistinctValuesToContainSet"
    assert by_name["files_readable"].gx_type == "ExpectColumnPairValuesToBeInSet"
    assert by_name["dataset_loads"].gx_type == "ExpectColumnValuesToBeNull"


def test_generated_shapes_dataset_passes(shapes_root, tmp_path):
    assert validate_dataset(_config(shapes_root, tmp_path)).success is True


def test_unreadable_image(folder_dataset, tmp_path):
    (folder_dataset / "images" / "s2.png").write_bytes(b"not a png")
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "files_readable", loader=True)
    assert (failed.rows, failed.files) == (("s2",), ("images/s2.png",))
    assert failed.reason.startswith("1 sample(s) have a missing or unreadable image or mask (s2)")
    assert [(p.file, p.reason.split(":")[0]) for p in report.problems] == [
        ("images/s2.png", "not an image")
    ]


def test_missing_mask_counts_as_unreadable(folder_dataset, tmp_path):
    (folder_dataset / "masks" / "s3.png").unlink()
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "files_readable", loader=True)
    assert (failed.rows, failed.files) == (("s3",), ("masks/s3.png",))
    assert report.problem_summary() == "masks/s3.png: missing mask for image s3.png"


def test_size_mismatch(folder_dataset, tmp_path):
    _write_mask(folder_dataset, "s4", np.zeros((10, 10)))
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "sizes_match", loader=True)
    assert (failed.rows, failed.files) == (("s4",), ("images/s4.png", "masks/s4.png"))


def test_mask_value_not_a_class_id(folder_dataset, tmp_path):
    mask = np.zeros((12, 16))
    mask[2:6, 3:9], mask[0, 0] = 1, 7
    _write_mask(folder_dataset, "s5", mask)
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "mask_values_valid", loader=True)
    assert (failed.rows, failed.files) == (("s5",), ("masks/s5.png",))
    assert "neither class ids 0..2 nor 255 (s5)" in failed.reason


def test_duplicate_image_across_splits_names_both_sides(folder_dataset, tmp_path):
    for src, dst in [("s0", "s8"), ("s1", "s9")]:  # s0/s8 leak into val; s1/s9 both in train
        for folder in ("images", "masks"):
            shutil.copy(
                folder_dataset / folder / f"{src}.png", folder_dataset / folder / f"{dst}.png"
            )
    _write_splits(
        folder_dataset, train=["s0", "s1", "s2", "s3", "s4", "s5", "s9"], val=["s6", "s7", "s8"]
    )
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "no_leakage_across_splits")
    assert (failed.rows, failed.files) == (("s0", "s8"), ("images/s0.png", "images/s8.png"))
    assert failed.reason.startswith("2 sample(s) have the same image bytes")


def test_identical_blank_images_in_two_splits_are_not_leakage(folder_dataset, tmp_path):
    blank = np.zeros((12, 16, 3), np.uint8)  # e.g. all-air CT slices of two patients
    for sid in ("s0", "s8"):
        Image.fromarray(blank).save(folder_dataset / "images" / f"{sid}.png")
        shutil.copy(folder_dataset / "masks" / "s1.png", folder_dataset / "masks" / f"{sid}.png")
    _write_splits(
        folder_dataset, train=["s0", "s1", "s2", "s3", "s4", "s5"], val=["s6", "s7", "s8"]
    )
    report = validate_dataset(_config(folder_dataset, tmp_path))
    assert report.success, report.to_markdown()


def test_empty_required_split(folder_dataset, tmp_path):
    _write_splits(folder_dataset, train=[f"s{i}" for i in range(8)])
    report = validate_dataset(_config(folder_dataset, tmp_path))
    failed = _only_failure(report, "required_splits_present")
    assert (failed.rows, failed.files) == ((), ())
    assert failed.reason.startswith("1 required split(s) have no samples (val): ")


def test_class_missing_from_training(folder_dataset, tmp_path):
    (folder_dataset / "classes.txt").write_text("bg\na\nb\nc\n")  # c: in no mask at all
    _write_splits(folder_dataset, train=["s0", "s2", "s4", "s6"], val=["s1", "s3", "s5", "s7"])
    failed = _only_failure(validate_dataset(_config(folder_dataset, tmp_path)), "classes_in_train")
    assert (failed.rows, failed.files) == (("b", "c"), ())
    assert failed.reason.startswith("2 class(es) have no pixels in the train split (b, c): ")


def test_foreground_fraction_out_of_bounds(folder_dataset, tmp_path):
    _write_mask(folder_dataset, "s3", np.zeros((12, 16)))  # fraction 0.0
    _write_mask(folder_dataset, "s5", np.ones((12, 16)))  # fraction 1.0; the rest are 0.25
    cfg = _config(folder_dataset, tmp_path, "validation.foreground_fraction=[0.1, 0.9]")
    failed = _only_failure(validate_dataset(cfg), "foreground_fraction_in_bounds")
    assert (failed.rows, failed.files) == (("s3", "s5"), ("masks/s3.png", "masks/s5.png"))
    assert "outside [0.1, 0.9] (s3, s5)" in failed.reason


def test_sample_statistics_foreground_excludes_ignore(folder_dataset, tmp_path):
    _write_mask(folder_dataset, "s6", np.pad(np.ones((4, 12)), ((7, 1), (3, 1))))
    mask = np.full((12, 16), 255)
    mask[6:], mask[7:11, 3:15] = 0, 1  # 96 class pixels, 48 of them foreground
    _write_mask(folder_dataset, "s7", mask)
    _write_mask(folder_dataset, "s1", np.full((12, 16), 255))  # no class pixels at all
    scan = scan_dataset(_config(folder_dataset, tmp_path).data, eval_split=None)
    stats = sample_statistics(scan).set_index("id")
    fraction = stats["foreground_fraction"]
    assert fraction["s0"] == 0.25 and fraction["s6"] == 0.25 and fraction["s7"] == 0.5
    assert math.isnan(fraction["s1"])
    assert not stats["duplicate_across_splits"].any()
    classes = class_statistics(scan, stats.reset_index())
    assert list(classes["id"]) == ["bg", "a", "b"] and list(classes["class_id"]) == [0, 1, 2]


def test_report_files_round_trip(folder_dataset, tmp_path):
    (folder_dataset / "masks" / "s3.png").unlink()
    cfg = _config(folder_dataset, tmp_path)
    report = validate_dataset(cfg)
    loaded = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert loaded["success"] is False and loaded["dataset"] == str(folder_dataset)
    assert [c["success"] for c in loaded["checks"]] == [c.success for c in report.checks]
    assert ValidationReport.from_dict(loaded) == report
    markdown = (tmp_path / "report" / "validation.md").read_text()
    assert markdown == report.to_markdown()
    assert markdown.startswith("# Dataset validation FAILED\n")
    assert "6 of 8 checks passed; 1 problem(s) the loader refuses." in markdown
    assert "## Problems\n\n- `masks/s3.png`: missing mask for image s3.png\n" in markdown
    assert (
        "| files_readable | **FAIL** | `ExpectColumnPairValuesToBeInSet` | 1 sample(s)" in markdown
    )
    assert "| sizes_match | pass | `ExpectColumnValuesToBeInSet` |" in markdown
    assert "- rows: `s3`\n- files: `masks/s3.png`" in markdown
    other = validate_dataset(cfg, out_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "validation.json").is_file() and other == report


def test_errored_expectation_is_a_hard_failure(folder_dataset, tmp_path):
    cfg = _config(folder_dataset, tmp_path)
    scan = scan_dataset(cfg.data, eval_split=None)
    frame = sample_statistics(scan).drop(columns=["size_match"])
    expectations = _sample_expectations(cfg.validation)
    results = _run_suite(_new_context(), "samples", frame, expectations, _params(cfg, scan))
    by_name = {c.expectation: c for c in results}
    assert list(by_name) == list(expectations)
    errored = by_name.pop("sizes_match")
    assert (errored.success, errored.errored) == (False, True)
    assert 'The column "size_match" in BatchData does not exist' in errored.reason
    assert all(c.success and not c.errored for c in by_name.values())
    report = ValidationReport(False, str(folder_dataset), tuple(results))
    assert "| sizes_match | **ERROR** |" in report.to_markdown()


def test_unreadable_layout_raises_and_writes_nothing(tmp_path):
    with pytest.raises(DatasetError, match="cannot read dataset at"):
        validate_dataset(_config(tmp_path / "nowhere", tmp_path))
    assert not (tmp_path / "report").exists()


def test_importing_the_module_does_not_import_great_expectations():
    code = "import sys, segops.validation; print('great_expectations' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
