"""The validation verdict (segops.validation builds it): every check, and every problem.

`checks` holds one CheckResult per check of segops.validation.CHECK_NAMES; `problems` one
Problem (file + reason) per thing the loader refuses (symlinks, ids that are paths, unreadable
files, ...). `success` is true only when every check passed and there is no problem, so
`segops validate`, the flow's validate step and the loader agree.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MAX_LISTED = 50  # rows, files and problems shown per check: enough to act on, few to read


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
class Problem:
    """One thing the loader refuses: `file` relative to the dataset root ("" = the dataset as
    a whole) and `reason`, which starts with a short cause (`symlink`, `missing`, `0 bytes`,
    `truncated PNG`, ...) and then says what to do."""

    file: str
    reason: str

    @property
    def short(self) -> str:
        """`file: cause`, the reason cut before what to do."""
        return f"{self.file or '(dataset)'}: {self.reason.split(';')[0]}"


@dataclass(frozen=True)
class ValidationReport:
    success: bool
    dataset: str
    checks: tuple[CheckResult, ...]
    problems: tuple[Problem, ...] = ()

    def failures(self) -> list[CheckResult]:
        """The checks that failed or errored, in report order."""
        return [check for check in self.checks if not check.success]

    def problem_summary(self, limit: int = 5) -> str:
        """One line naming the failing files and why, for an error message: the problems
        first, then the files of failed checks; "" when the report passed."""
        items = [p.short for p in self.problems]
        for check in self.failures():
            named = [f for f in check.files if f not in {p.file for p in self.problems}]
            if named or not items:
                shown = ", ".join(named[:limit]) or check.reason.split(":")[0]
                items.append(f"{check.expectation}: {shown}")
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        return "; ".join(items[:limit]) + more

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists); `from_dict` reads it back."""
        checks = [{**asdict(c), "rows": list(c.rows), "files": list(c.files)} for c in self.checks]
        problems = [asdict(p) for p in self.problems]
        return {
            "success": self.success,
            "dataset": self.dataset,
            "checks": checks,
            "problems": problems,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """The report that `to_dict` wrote (reports without problems read as none)."""
        checks = tuple(
            CheckResult(**{**c, "rows": tuple(c["rows"]), "files": tuple(c["files"])})
            for c in data["checks"]
        )
        problems = tuple(Problem(**p) for p in data.get("problems", []))
        return cls(bool(data["success"]), str(data["dataset"]), checks, problems)

    def to_markdown(self) -> str:
        """A table of every check, the failing rows and files of each failed check, then every
        problem with its file and reason."""
        passed = sum(check.success for check in self.checks)
        counted = f"{passed} of {len(self.checks)} checks passed"
        if self.problems:
            counted += f"; {len(self.problems)} problem(s) the loader refuses"
        lines = [
            f"# Dataset validation {'passed' if self.success else 'FAILED'}",
            "",
            f"`{self.dataset}`: {counted}.",
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
        if self.problems:
            lines += ["", "## Problems", ""]
            lines += [
                f"- `{p.file or '(dataset)'}`: {p.reason}" for p in self.problems[:MAX_LISTED]
            ]
            if len(self.problems) > MAX_LISTED:
                lines.append(f"- ... and {len(self.problems) - MAX_LISTED} more (validation.json)")
        return "\n".join(lines) + "\n"


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `out_dir`/validation.json and validation.md; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "validation.json", out / "validation.md"
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    md_path.write_text(report.to_markdown())
    return json_path, md_path
