"""Errors that segops raises for problems a user can fix.

Each carries a message that says what went wrong, where (file, key, row) and what to do.
"""

from __future__ import annotations


class SegopsError(Exception):
    """Base class: the CLI prints these without a traceback. A flow does not retry them
    (the same input fails the same way) unless `transient` says a rerun may pass."""

    transient = False


class ConfigError(SegopsError):
    """A params file or override is invalid."""


class DatasetError(SegopsError):
    """A dataset on disk is malformed. `problems` lists one line per file or rule."""

    def __init__(self, summary: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        shown = "\n".join(f"  - {p}" for p in self.problems[:25])
        more = len(self.problems) - 25
        if more > 0:
            shown += f"\n  ... and {more} more"
        super().__init__(f"{summary}\n{shown}" if shown else summary)


class CheckpointError(SegopsError):
    """A checkpoint is missing, corrupt, or incompatible with the run that wants it."""
