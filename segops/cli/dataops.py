"""`segops data add`: add checked image/mask pairs to the dataset and version it with DVC.

Registered by segops.cli.main (`data_app.command("add")(data_add)`); heavy imports stay inside
the function so that `segops --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config, echo

# lazy imports: each command imports its work (torch, MLflow, pandas, ...) when it runs:
# `segops --help` imports this module (docs/development.md "Imports").


def _outside_version(root: Path, workspace: Path, tracked: Path) -> bool:
    """True when the dataset root is not inside the folder DVC versions."""
    return not root.resolve().is_relative_to((workspace / tracked).resolve())


def data_add(
    src: Annotated[
        Path, typer.Argument(help="folder with images/ and masks/ (classes.txt optional)")
    ],
    split: Annotated[
        str, typer.Option(help="split the new ids join: train, val or test")
    ] = "train",
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
    workspace: Annotated[Path, typer.Option(help="DVC workspace (repository root)")] = Path("."),
    version: Annotated[
        bool, typer.Option("--version/--no-version", help="dvc add + push a new data version")
    ] = True,
) -> None:
    """Add new image/mask pairs to the dataset (checked first; all or nothing) and version it.

    The new DVC data version makes the next `segops run` retrain."""
    from segops.data.add import add_pairs

    cfg = config(params, overrides, dataset)
    result = add_pairs(src, cfg.data.root, split)
    where = f"splits/{split}.txt" if result.split_file else "no split files; loader assigns"
    echo(f"added {result.count} pairs to {result.root} ({where})")
    if not version:
        echo("not versioned (--no-version); `segops run` versions it, then retrains")
        return
    from segops.versioning import version_dataset

    if _outside_version(result.root, workspace, cfg.versioning.path):
        echo(f"warning: {result.root} is outside versioning.path {cfg.versioning.path}")
    v = version_dataset(workspace, cfg.versioning)
    echo(f"data version {v.md5} ({v.pushed} objects pushed to {v.remote or 'no remote'})")
    echo("`segops run` will now retrain on this data version")
