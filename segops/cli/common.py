"""Options and helpers every `segops` command shares (stdlib and typer only: imported at start)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# lazy imports: config(), plans and progress bars are imported when a command calls them:
# `segops --help` imports this module (docs/development.md "Imports").

if TYPE_CHECKING:
    from segops.config import Config

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params file (one section per step)")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override, e.g. --set train.epochs=3 (repeatable)"),
]
DatasetOpt = Annotated[
    Path | None, typer.Option("--dataset", "-d", help="dataset root (overrides data.root)")
]

PlanOpt = Annotated[
    Path | None,
    typer.Option(help="plan file from `segops plan`: layered params.yaml < plan < --set"),
]


def with_plan(plan: Path | None, overrides: list[str] | None) -> list[str]:
    """The plan file's values as overrides, before `overrides` (so a --set beats the plan)."""
    if plan is None:
        return list(overrides or [])
    from segops.plan.planfile import plan_overrides

    return [*plan_overrides(plan), *(overrides or [])]


def config(params: Path, overrides: list[str] | None, dataset: Path | None = None) -> Config:
    """The resolved config: `params` (may be absent if it is the default) plus overrides."""
    from segops.config import load_config

    extra = [f"data.root={dataset}"] if dataset else []
    path = params if params.exists() or params != Path("params.yaml") else None
    return load_config(path, [*(overrides or []), *extra])


def echo(text: str) -> None:
    """Print to the console shared with the progress bars (no highlighting)."""
    from segops.cli.progress import console

    console.print(text, highlight=False)
