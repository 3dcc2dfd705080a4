"""`segops audit`, `segops reproduce` and `segops models history` (registered in main.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import ParamsOpt, SetOpt, config, echo

# lazy imports: each command imports its work (torch, MLflow, pandas, ...) when it runs:
# `segops --help` imports this module (docs/development.md "Imports").

ModelArg = Annotated[
    str, typer.Argument(help="models:/NAME@ALIAS or models:/NAME/VERSION (e.g. @champion)")
]


def _connect(params: Path, overrides: list[str] | None):
    from segops import tracking

    cfg = config(params, overrides)
    tracking.connect(cfg.tracking)
    return cfg


def _slug(uri: str) -> str:
    return uri.removeprefix("models:/").replace("/", "-v").replace("@", "-at-")


def audit(
    model: ModelArg,
    out: Annotated[
        Path | None, typer.Option(help="report folder (default: runs/audit/<model>)")
    ] = None,
    repo: Annotated[Path, typer.Option(help="git repository that must hold the commit")] = Path(
        "."
    ),
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="also read and re-hash every object of the data version on the DVC remote "
            "(finds overwritten or corrupt objects; reads the whole dataset)",
        ),
    ] = False,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Follow a registered model's lineage and check every link still resolves.

    Model version -> MLflow run -> dataset md5 and .dvc text -> data on the DVC remote -> git
    commit -> config -> validation report -> Prefect flow run -> environment -> metrics ->
    promotion decision, and the weights' hash. --deep re-hashes the data on the remote (link
    data.deep, with how long it took). Writes audit.md and audit.json; exits with 1 when a link
    is broken (each one named).
    """
    from segops.cli.report import print_audit
    from segops.lineage.audit import audit as run_audit

    _connect(params, overrides)
    report = run_audit(model, repo, deep=deep)
    paths = report.write(out or Path("runs") / "audit" / _slug(model))
    print_audit(report, paths)
    if not report.ok:
        raise typer.Exit(1)


def reproduce(
    model: ModelArg,
    out: Annotated[
        Path | None, typer.Option(help="a new folder (default: runs/reproduce/<model>)")
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="largest |mean IoU difference| accepted when weights differ")
    ] = 0.0,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Rebuild a registered model from its lineage; compare weights and metrics.

    Restores its data by hash from the DVC remote into a new folder, retrains with the
    recorded config and seed, evaluates, and compares with the record.

    Exits with 0 when the weights are identical (CPU, deterministic) or the mean IoU moved by
    no more than --tolerance; else 1. Writes reproduce.md and reproduce.json.
    """
    from segops.cli.progress import RichTrainProgress
    from segops.lineage.reproduce import reproduce as run_reproduce

    _connect(params, overrides)
    bars = RichTrainProgress()
    try:
        report = run_reproduce(model, out or Path("runs") / "reproduce" / _slug(model), [bars])
    finally:
        bars.close()
    echo(report.to_markdown())
    echo(f"report: {Path(report.out_dir) / 'reproduce.md'}")
    moved = abs(report.metrics.get("mean_iou", {}).get("diff", float("inf")))
    if not (report.weights_identical or moved <= tolerance):
        raise typer.Exit(1)


def models_history(
    name: Annotated[
        str | None, typer.Argument(help="registered model (promotion.model_name)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead")] = False,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Every version, promotion decision and rollback of a registered model, in time order.

    Each version shows its data version, mean IoU and the Prefect flow run that made it."""
    from segops.cli.report import print_history
    from segops.lineage.history import model_history

    cfg = _connect(params, overrides)
    events = model_history(name or cfg.promotion.model_name)
    if as_json:
        for event in events:
            print(json.dumps(event))
        return
    print_history(name or cfg.promotion.model_name, events)
