"""`segops plan DATASET`: fingerprint a dataset and write a params file planned from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import ParamsOpt, SetOpt, config, echo

# lazy imports: each command imports its work (torch, MLflow, pandas, ...) when it runs:
# `segops --help` imports this module (docs/development.md "Imports").


def plan(
    dataset: Annotated[Path, typer.Argument(help="dataset folder to plan for")],
    out: Annotated[Path, typer.Option("--out", "-o", help="plan file to write")] = Path(
        "plan.yaml"
    ),
    budget_minutes: Annotated[
        float, typer.Option(min=0.1, help="training time budget; sets train.epochs")
    ] = 10.0,
    fmt: Annotated[
        str | None, typer.Option("--format", help="dataset layout (default: data.format)")
    ] = None,
    probe: Annotated[
        bool,
        typer.Option(help="time a few training steps here (--no-probe: train.epochs unplanned)"),
    ] = True,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Fingerprint DATASET (splits, sizes, channels, class shares, intensities) and write a
    params file with crop/image size, model, batch size, epochs for the budget, class weights
    and normalisation, each with its reason. Use it with `segops run --plan FILE`."""
    from rich.markdown import Markdown

    from segops.cli.progress import console
    from segops.plan.planfile import plan_markdown, write_plan
    from segops.plan.planner import plan_dataset

    extra = [f"data.format={fmt}"] if fmt else []
    cfg = config(params, [*(overrides or []), *extra], dataset)
    planned = plan_dataset(cfg, budget_minutes=budget_minutes, probe=probe)
    console.print(Markdown(plan_markdown(planned)))
    write_plan(planned, out)
    echo(f"wrote {out}; train with it: segops run --plan {out}")
