"""Dataset validation with Great Expectations (GX Core 1.x), suites defined in code.

`validate_dataset` scans the dataset once (`scan_dataset`), turns the scan into two frames, one
row per sample (`sample_statistics`) and one row per class (`class_statistics`), runs one GX
suite on each in a fresh ephemeral context, maps failing rows back to sample ids and files, and
writes validation.json and validation.md. GX is imported inside functions: it takes seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from segops.config import IGNORE_INDEX, Config, ValidationConfig
from segops.data.manifest import FLAG_COLUMNS, MANIFEST_COLUMNS, Scan, scan_dataset

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations import Expectation

CHECK_NAMES = (
    "files_readable",
    "sizes_match",
    "mask_values_valid",
    "no_leakage_across_splits",
    "required_splits_present",
    "classes_in_train",
    "foreground_fraction_in_bounds",
)
MAX_LISTED = 50  # rows and files kept per check: enough to act on, few enough to read


@dataclass(frozen=True)
class CheckResult:
    """One expectation's verdict. `rows` holds the failing rows' ids (sample ids; class names
    for classes_in_train); `files` the failing samples' paths relative to the dataset root."""

    expectation: str
    gx_type: str
    success: bool
    errored: bool
    reason: str
    rows: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    dataset: str
    checks: tuple[CheckResult, ...]

    def failures(self) -> list[CheckResult]:
        """The checks that failed or errored, in report order."""
        return [check for check in self.checks if not check.success]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists); `from_dict` reads it back."""
        checks = [{**asdict(c), "rows": list(c.rows), "files": list(c.files)} for c in self.checks]
        return {"success": self.success, "dataset": self.dataset, "checks": checks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """The report that `to_dict` wrote."""
        checks = tuple(
            CheckResult(**{**c, "rows": tuple(c["rows"]), "files": tuple(c["files"])})
            for c in data["checks"]
        )
        return cls(bool(data["success"]), str(data["dataset"]), checks)

    def to_markdown(self) -> str:
        """A table of every check, then the failing rows and files of each failed check."""
        passed = sum(check.success for check in self.checks)
        lines = [
            f"# Dataset validation {'passed' if self.success else 'FAILED'}",
            "",
            f"`{self.dataset}`: {passed} of {len(self.checks)} checks passed.",
            "",
            "| check | result | GX expectation | reason |",
            "|---|---|---|---|",
        ]
        for c in self.checks:
            verdict = "pass" if c.success else "**ERROR**" if c.errored else "**FAIL**"
            reason = c.reason.replace("|", "\\|")
            lines.append(f"| {c.expectation} | {verdict} | `{c.gx_type}` | {reason} |")
        for c in self.failures():
            if c.rows or c.files:
                lines += ["", f"## {c.expectation}", ""]
                lines += [f"- rows: {', '.join(f'`{r}`' for r in c.rows)}"] if c.rows else []
                lines += [f"- files: {', '.join(f'`{f}`' for f in c.files)}"] if c.files else []
        return "\n".join(lines) + "\n"


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
    hashed = frame[frame["image_sha256"].fillna("") != ""]  # "" = bytes could not be read
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
    return pd.DataFrame(
        {
            "id": pd.Series(names, dtype="str"),
            "class_id": pd.Series(range(len(names)), dtype="int64"),
            "train_pixels": pd.Series(pixels, dtype="int64"),
        }
    )


def _paths(*columns: str) -> Callable[[pd.DataFrame], list[str]]:
    """Lists the `columns` paths of each failing row, row by row."""
    return lambda failed: [str(row[c]) for _, row in failed.iterrows() for c in columns]


def _unreadable_paths(failed: pd.DataFrame) -> list[str]:
    """Only the file of each pair that could not be read (a missing mask counts)."""
    return [
        str(row[c])
        for _, row in failed.iterrows()
        for c in ("image", "mask")
        if not row[f"{c}_readable"]
    ]


@dataclass(frozen=True)
class _Check:
    name: str  # our name, one of CHECK_NAMES
    expectation: Expectation
    ok: str  # the reason when it passes
    fail: str  # format string: {n} failing items, {items} the first few of them
    files: Callable[[pd.DataFrame], list[str]] = lambda failed: []


def _sample_checks(cfg: ValidationConfig, num_classes: int) -> list[_Check]:
    """The checks on the per-sample frame, in CHECK_NAMES order."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    # A size is only known for files that decoded; unreadable ones fail files_readable alone.
    # `==` builds a GX condition here (its `is_in` refuses booleans), hence the noqa.
    both_read = (Column("image_readable") == True) & (Column("mask_readable") == True)  # noqa: E712
    ids = f"class ids 0..{num_classes - 1}" if num_classes else "class ids (classes.txt has none)"
    lo, hi = cfg.foreground_fraction
    return [
        _Check(
            "files_readable",
            gxe.ExpectColumnPairValuesToBeInSet(
                column_A="image_readable", column_B="mask_readable", value_pairs_set=[(True, True)]
            ),
            "every image and mask exists and decodes",
            "{n} sample(s) have a missing or unreadable image or mask ({items}): restore or "
            "re-export the files listed, or delete those samples",
            _unreadable_paths,
        ),
        _Check(
            "sizes_match",
            gxe.ExpectColumnValuesToBeInSet(
                column="size_match", value_set=[True], row_condition=both_read
            ),
            "every mask has the size of its image",
            "{n} sample(s) have a mask whose size differs from its image ({items}): re-export "
            "those masks at their image's size",
            _paths("image", "mask"),
        ),
        _Check(
            "mask_values_valid",
            gxe.ExpectColumnValuesToBeBetween(column="invalid_values", min_value=0, max_value=0),
            f"every mask holds only {ids} or {IGNORE_INDEX} (ignore)",
            f"{{n}} mask(s) hold values that are neither {ids} nor {IGNORE_INDEX} ({{items}}): "
            "fix those masks or name the missing classes in classes.txt",
            _paths("mask"),
        ),
        _Check(
            "no_leakage_across_splits",
            gxe.ExpectColumnValuesToBeInSet(column="duplicate_across_splits", value_set=[False]),
            "no image appears in more than one split",
            "{n} sample(s) have the same image bytes as a sample in another split ({items}): "
            "keep each image in one split only",
            _paths("image"),
        ),
        _Check(
            "required_splits_present",
            gxe.ExpectColumnDistinctValuesToContainSet(
                column="split", value_set=list(cfg.required_splits)
            ),
            f"the required splits {', '.join(cfg.required_splits)} all have samples",
            "{n} required split(s) have no samples ({items}): list ids in splits/<split>.txt, "
            "or change data.val_fraction/test_fraction or validation.required_splits",
        ),
        _Check(
            "foreground_fraction_in_bounds",
            gxe.ExpectColumnValuesToBeBetween(
                column="foreground_fraction", min_value=lo, max_value=hi
            ),
            f"every mask's foreground fraction is within [{lo}, {hi}]",
            f"{{n}} mask(s) have a foreground fraction outside [{lo}, {hi}] ({{items}}): check "
            "those masks, or widen validation.foreground_fraction",
            _paths("mask"),
        ),
    ]


def _class_checks() -> list[_Check]:
    """The check on the per-class frame."""
    import great_expectations.expectations as gxe

    return [
        _Check(
            "classes_in_train",
            gxe.ExpectColumnValuesToBeBetween(column="train_pixels", min_value=1),
            "every class has pixels in the train split",
            "{n} class(es) have no pixels in the train split ({items}): add training samples "
            "that contain them, or remove them from classes.txt",
        )
    ]


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


def _check_result(check: _Check, result: Any, frame: pd.DataFrame) -> CheckResult:
    """Our verdict from one ExpectationValidationResult; failing indices become ids and files."""
    gx_type = type(check.expectation).__name__
    error = _raised(result.exception_info)
    if error:
        reason = f"GX could not evaluate it ({error}); the frame segops built is wrong: report it"
        return CheckResult(check.name, gx_type, False, True, reason)
    if result.success:
        return CheckResult(check.name, gx_type, True, False, check.ok)
    details = result.result or {}
    failed = frame.loc[details.get("unexpected_index_list") or []]
    # Row-wise checks name rows; dataset-level ones (a set to contain) name what is missing.
    items = [str(i) for i in failed["id"]] or [
        str(v) for v in details.get("partial_missing_list") or []
    ]
    shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
    reason = check.fail.format(n=len(items), items=shown)
    rows = tuple(str(i) for i in failed["id"][:MAX_LISTED])
    return CheckResult(
        check.name, gx_type, False, False, reason, rows, tuple(check.files(failed)[:MAX_LISTED])
    )


def _run_suite(
    context: AbstractDataContext, name: str, frame: pd.DataFrame, checks: list[_Check]
) -> list[CheckResult]:
    """Run `checks` as one GX suite named `name` on `frame`; one CheckResult per check, in order."""
    import great_expectations as gx

    source = context.data_sources.add_pandas(name)
    batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = gx.ExpectationSuite(name=name)
    for check in checks:
        # GX may reorder results (errored ones first): the meta tag maps them back.
        suite.add_expectation(check.expectation.copy(update={"meta": {"check": check.name}}))
    definition = gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
    checkpoint = gx.Checkpoint(
        name=name,
        validation_definitions=[context.validation_definitions.add(definition)],
        result_format="COMPLETE",  # every failing index, not the first 20
    )
    run = context.checkpoints.add(checkpoint).run(batch_parameters={"dataframe": frame})
    (suite_result,) = run.run_results.values()
    found = {r.expectation_config.meta["check"]: r for r in suite_result.results}
    return [_check_result(check, found[check.name], frame) for check in checks]


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `out_dir`/validation.json and validation.md; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "validation.json", out / "validation.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    md_path.write_text(report.to_markdown())
    return json_path, md_path


def validate_dataset(cfg: Config, out_dir: str | Path | None = None) -> ValidationReport:
    """Scan `cfg.data`, run every check in CHECK_NAMES with GX, write the report to `out_dir`
    (default `cfg.validation.report_dir`) and return it. Raises DatasetError only when the
    layout itself cannot be read; bad samples become failed checks."""
    scan = scan_dataset(cfg.data, eval_split=None)
    samples = sample_statistics(scan)
    context = _new_context()
    found = _run_suite(
        context, "samples", samples, _sample_checks(cfg.validation, len(scan.layout.classes))
    )
    found += _run_suite(context, "classes", class_statistics(scan, samples), _class_checks())
    checks = tuple(sorted(found, key=lambda c: CHECK_NAMES.index(c.expectation)))
    report = ValidationReport(all(c.success for c in checks), str(scan.layout.root), checks)
    write_report(report, out_dir if out_dir is not None else cfg.validation.report_dir)
    return report
