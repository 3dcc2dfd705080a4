"""Dataset validation with Great Expectations (GX Core 1.x), suites defined in code.

`validate_dataset` scans the dataset once (`scan_dataset`), turns the scan into three frames,
one row per problem the loader refuses (`problem_frame`: symlinks, ids that are paths, unknown
ids, unreadable files, ...), one per sample (`sample_statistics`) and one per class
(`class_statistics`), runs one GX suite on each in a fresh ephemeral context, maps failing rows
back to sample ids and files, and writes validation.json and validation.md (see
segops.validation_report). A dataset passes only if the loader would accept it too. GX is
imported inside functions: it takes seconds.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from segops.config import Config, ValidationConfig
from segops.data.manifest import FLAG_COLUMNS, MANIFEST_COLUMNS, Scan, scan_dataset
from segops.data.problems import split_problem
from segops.validation_report import (
    MAX_LISTED,
    CheckResult,
    Problem,
    ValidationReport,
    write_report,
)
from segops.validation_wording import CHECK_NAMES, WORDING

# lazy imports: Great Expectations (seconds) is imported inside the functions that run suites:
# the pipeline imports this module before any validation runs (docs/development.md "Imports").

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation


def sample_statistics(scan: Scan) -> pd.DataFrame:
    """The per-sample frame the suite runs on: the scan's columns plus `foreground_fraction`
    (1 - background / class pixels, NaN when the mask has no class pixels) and
    `duplicate_across_splits` (the same image bytes are also in another split); index 0..n-1."""
    px = [f"px_{i}" for i in range(len(scan.layout.classes))]
    columns = [*MANIFEST_COLUMNS, *px, "px_ignore", *FLAG_COLUMNS]
    # An empty scan has no columns at all; the expectations still need to find them.
    frame = scan.frame.reindex(columns=columns) if scan.frame.empty else scan.frame.copy()
    frame = frame.reset_index(drop=True)
    # Pixels with a class id: ignore (255) and out-of-range values count for neither side.
    valid = frame[px].sum(axis=1).astype(float)
    background = frame["px_0"].astype(float) if px else 0.0
    frame["foreground_fraction"] = 1.0 - background / valid.where(valid > 0)
    # "" = bytes could not be read. Constant images (blank slices of different CT volumes)
    # are identical without being the same sample: they are not leakage.
    constant = frame["image_constant"].fillna(False).astype(bool)
    hashed = frame[(frame["image_sha256"].fillna("") != "") & ~constant]
    splits_seen = hashed.groupby("image_sha256")["split"].transform("nunique")
    leaked = (splits_seen > 1).reindex(frame.index, fill_value=False)
    frame["duplicate_across_splits"] = leaked.astype(bool)
    return frame


def class_statistics(scan: Scan, samples: pd.DataFrame) -> pd.DataFrame:
    """One row per class of `scan.layout.classes`: `id` (its name), `class_id`, and
    `train_pixels`, its pixel count summed over the train split of `samples`."""
    train = samples[samples["split"] == "train"]
    names = list(scan.layout.classes)
    pixels = [int(train[f"px_{i}"].sum()) for i in range(len(names))]
    frame = pd.DataFrame({"id": names, "class_id": range(len(names)), "train_pixels": pixels})
    return frame.astype({"id": "str", "class_id": "int64", "train_pixels": "int64"})


def problem_frame(scan: Scan) -> pd.DataFrame:
    """One row per scan problem: `file` (relative to the dataset root, "" for the dataset as a
    whole), `id` (the file, or "(dataset)") and `reason` (never null)."""
    parsed = [split_problem(line, scan.layout.root) for line in scan.problems]
    frame = pd.DataFrame(parsed, columns=["file", "reason"], dtype="str")
    frame.insert(0, "id", frame["file"].where(frame["file"] != "", "(dataset)"))
    return frame.astype("str")


def _problem_expectations() -> dict[str, Expectation]:
    """The expectation on the problem frame: it has no problem (every row fails)."""
    import great_expectations.expectations as gxe

    return {"dataset_loads": gxe.ExpectColumnValuesToBeNull(column="reason")}


def _sample_expectations(cfg: ValidationConfig) -> dict[str, Expectation]:
    """The expectations on the per-sample frame, by check name."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    # A size is only known for files that decoded; unreadable ones fail files_readable alone.
    # `==` builds a GX condition here (its `is_in` refuses booleans), hence the noqa.
    both_read = (Column("image_readable") == True) & (Column("mask_readable") == True)  # noqa: E712
    lo, hi = cfg.foreground_fraction
    return {
        "files_readable": gxe.ExpectColumnPairValuesToBeInSet(
            column_A="image_readable", column_B="mask_readable", value_pairs_set=[(True, True)]
        ),
        "sizes_match": gxe.ExpectColumnValuesToBeInSet(
            column="size_match", value_set=[True], row_condition=both_read
        ),
        "mask_values_valid": gxe.ExpectColumnValuesToBeBetween(
            column="invalid_values", min_value=0, max_value=0
        ),
        "no_leakage_across_splits": gxe.ExpectColumnValuesToBeInSet(
            column="duplicate_across_splits", value_set=[False]
        ),
        "required_splits_present": gxe.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=list(cfg.required_splits)
        ),
        "foreground_fraction_in_bounds": gxe.ExpectColumnValuesToBeBetween(
            column="foreground_fraction", min_value=lo, max_value=hi
        ),
    }


def _class_expectations() -> dict[str, Expectation]:
    """The expectation on the per-class frame, by check name."""
    import great_expectations.expectations as gxe

    return {
        "classes_in_train": gxe.ExpectColumnValuesToBeBetween(column="train_pixels", min_value=1)
    }


def _new_context() -> AbstractDataContext:
    """A fresh in-memory GX context without progress bars; a name can be added to it once."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _raised(exception_info: dict | None) -> str | None:
    """The message of an exception GX caught, or None. GX gives one flat dict, or, when a
    metric failed (e.g. a missing column), a dict of such dicts keyed by metric id."""
    info = exception_info or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message") or "unknown error")
    return None


def _check_result(
    name: str, gx_type: str, result: Any, frame: pd.DataFrame, params: dict[str, Any]
) -> CheckResult:
    """Our verdict from one ExpectationValidationResult; failing indices become ids and files."""
    error = _raised(result.exception_info)
    if error:
        reason = f"GX could not evaluate it ({error}); the frame segops built is wrong: report it."
        return CheckResult(name, gx_type, False, True, reason)
    wording = WORDING[name]
    if result.success:
        return CheckResult(name, gx_type, True, False, wording.ok.format(**params))
    details = result.result or {}
    failed = frame.loc[details.get("unexpected_index_list") or []]
    ids = [str(i) for i in failed["id"]]
    # Row-wise checks name rows; a set-to-contain check names what the column lacks.
    items = ids or [str(v) for v in details.get("partial_missing_list") or []]
    shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
    reason = wording.fail.format(n=len(items), items=shown, **params)
    files = tuple(wording.files(failed)[:MAX_LISTED])
    return CheckResult(name, gx_type, False, False, reason, tuple(ids[:MAX_LISTED]), files)


def _run_suite(
    context: AbstractDataContext,
    name: str,
    frame: pd.DataFrame,
    expectations: dict[str, Expectation],
    params: dict[str, Any],
) -> list[CheckResult]:
    """Run `expectations` (check name -> GX expectation) as one suite named `name` on `frame`
    through a Checkpoint; one CheckResult per check, in the order given. `params` fill the
    reasons' placeholders."""
    import great_expectations as gx

    source = context.data_sources.add_pandas(name)
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = gx.ExpectationSuite(name=name)
    for check, expectation in expectations.items():
        # GX may reorder results (errored ones first): the meta tag maps them back.
        suite.add_expectation(expectation.copy(update={"meta": {"check": check}}))
    definition = gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
    checkpoint = gx.Checkpoint(
        name=name,
        validation_definitions=[context.validation_definitions.add(definition)],
        result_format="COMPLETE",  # every failing index, not the first 20
    )
    run = context.checkpoints.add(checkpoint).run(batch_parameters={"dataframe": frame})
    (suite_result,) = run.run_results.values()
    found = {r.expectation_config.meta["check"]: r for r in suite_result.results}
    return [
        _check_result(check, type(exp).__name__, found[check], frame, params)
        for check, exp in expectations.items()
    ]


def _params(cfg: Config, scan: Scan) -> dict[str, Any]:
    """The settings the reasons quote, so a reader sees what the data was held to."""
    n = len(scan.layout.classes)
    lo, hi = cfg.validation.foreground_fraction
    return {
        "class_ids": f"class ids 0..{n - 1}" if n else "class ids (classes.txt names none)",
        "splits": ", ".join(cfg.validation.required_splits) or "none",
        "lo": lo,
        "hi": hi,
    }


def validate_dataset(cfg: Config, out_dir: str | Path | None = None) -> ValidationReport:
    """Scan `cfg.data`, run every check in CHECK_NAMES with GX, write the report to `out_dir`
    (default `cfg.validation.report_dir`) and return it. Raises DatasetError only when the
    layout itself cannot be read; bad samples and files become failed checks and problems
    (file + reason), and any problem fails the report."""
    scan = scan_dataset(cfg.data, eval_split=None)
    problems = problem_frame(scan)
    samples = sample_statistics(scan)
    context = _new_context()
    (loads,) = _run_suite(context, "problems", problems, _problem_expectations(), {})
    found = [replace(loads, rows=())]  # its rows would repeat its files
    found += _run_suite(
        context, "samples", samples, _sample_expectations(cfg.validation), _params(cfg, scan)
    )
    classes = class_statistics(scan, samples)
    found += _run_suite(context, "classes", classes, _class_expectations(), {})
    checks = tuple(sorted(found, key=lambda c: CHECK_NAMES.index(c.expectation)))
    listed = tuple(Problem(f, r) for f, r in zip(problems["file"], problems["reason"], strict=True))
    success = all(c.success for c in checks) and not listed
    report = ValidationReport(success, str(scan.layout.root), checks, listed)
    write_report(report, out_dir if out_dir is not None else cfg.validation.report_dir)
    return report
