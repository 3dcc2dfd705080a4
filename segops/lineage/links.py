"""The parts of a lineage audit: a link's verdict, the report, and what the checks share."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segops import tracking

OK, WARN, UNCHECKED, BROKEN = "ok", "warn", "unchecked", "broken"
TAG = "segops."


@dataclass(frozen=True)
class Link:
    name: str
    status: str  # ok | warn (resolves, with a caveat) | unchecked (cannot be checked here) | broken
    detail: str


@dataclass(frozen=True)
class AuditReport:
    model_uri: str  # as asked (may name an alias)
    version_uri: str  # models:/name/version it resolved to ("" if it did not)
    links: tuple[Link, ...]
    record: dict[str, Any] = field(default_factory=dict)  # the lineage values that were read

    @property
    def broken(self) -> list[str]:
        """Names of the links that no longer resolve."""
        return [link.name for link in self.links if link.status == BROKEN]

    @property
    def ok(self) -> bool:
        return not self.broken

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: verdict, broken link names, every link and the lineage record."""
        return {
            "model_uri": self.model_uri,
            "version_uri": self.version_uri,
            "ok": self.ok,
            "broken": self.broken,
            "links": [asdict(link) for link in self.links],
            "record": self.record,
        }

    def to_markdown(self) -> str:
        """A human-readable report: verdict, one table row per link, the record."""
        verdict = "intact" if self.ok else f"BROKEN ({', '.join(self.broken)})"
        rows = [f"| {link.name} | {link.status} | {link.detail} |" for link in self.links]
        record = "\n".join(f"- **{k}**: `{v}`" for k, v in self.record.items() if k != "config")
        return (
            f"# Lineage audit of {self.version_uri or self.model_uri}: {verdict}\n\n"
            "| link | status | detail |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"## Record\n\n{record}\n"
        )

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write audit.json and audit.md into `out_dir`; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "audit.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "audit.md").write_text(self.to_markdown())
        return out / "audit.json", out / "audit.md"


@dataclass
class Chain:
    """What the checks share: the version, its run's tags and a scratch folder."""

    version: Any  # promotion.registry.ModelRef
    version_tags: dict[str, str]
    run: dict[str, Any]  # tracking.find_run_or_none
    scratch: Path
    repo: Path
    record: dict[str, Any] = field(default_factory=dict)

    def tag(self, key: str) -> str:
        return self.run["tags"].get(TAG + key, "")

    def artifact(self, path: str) -> Path | None:

        return tracking.download_artifact(self.version.run_id, path, self.scratch / "artifacts")
