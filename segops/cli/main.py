"""`segops`: build datasets, train, evaluate, predict. Run `segops COMMAND --help` for details.

Every command reads `params.yaml` (or `--params FILE`) and accepts `--set section.key=value`
overrides; the resolved config is saved with what the command writes.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from segops.cli import lifecycle, lineage
from segops.cli.common import DatasetOpt, ParamsOpt, PlanOpt, SetOpt, config, echo, with_plan
from segops.cli.dataops import data_add
from segops.cli.explain import explain
from segops.cli.plan import plan
from segops.cli.promotion import promote
from segops.cli.schedule import schedule
from segops.cli.scoring import evaluate, predict
from segops.cli.serve import export, serve
from segops.cli.stack import stack_app
from segops.errors import SegopsError
from segops.quiet import quiet_defaults

# lazy imports: each command imports its work (torch, MLflow, pandas, the segops rooms that load
# them, rich) when it runs: `segops --help` imports this module (docs/development.md "Imports").

app = typer.Typer(
    help="segops: image segmentation as a repeatable, auditable production process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


# What every retrain run's tasks import (the steps load them lazily; `segops --help` must not).
FLOW_IMPORTS = (
    "mlflow",
    "great_expectations",
    "dvc.repo",
    "segops.train.run",  # torch, torchvision, the model zoo
    "segops.evaluate.report",
)
DB_STORE = ("mlflow.store.tracking.sqlalchemy_store",)  # a SQLite or PostgreSQL tracking store
INSTANCES_HELP = (
    "none; folder (masks/ = instance ids + instances.csv: data.format=folder_instance); "
    "coco (annotations/instances_<split>.json: data.format=coco data.coco_image_dir=images)"
)


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path | None, typer.Argument(help="output folder (default: data.root)")] = None,
    n: Annotated[int | None, typer.Option(help="number of samples (default: shapes.n)")] = None,
    size: Annotated[int | None, typer.Option(help="image side in pixels (shapes.size)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (shapes.seed)")] = None,
    instances: Annotated[str, typer.Option(help=INSTANCES_HELP)] = "none",
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Generate the built-in `shapes` dataset (folder layout); same seed, same bytes."""
    from segops.cli.progress import counter
    from segops.data.shapes import generate_shapes

    cfg = config(params, overrides)
    out = out or cfg.data.root
    n, size = n or cfg.shapes.n, size or cfg.shapes.size
    seed = cfg.shapes.seed if seed is None else seed
    if instances not in ("none", "folder", "coco"):
        raise typer.BadParameter("choose none, folder or coco", param_hint="--instances")
    kind = None if instances == "none" else instances
    with counter(f"shapes -> {out}") as update:
        generate_shapes(
            out,
            n=n,
            size=size,
            seed=seed,
            progress=lambda i: update(i, n),
            instances=kind,
            val_fraction=cfg.data.val_fraction,
            split_seed=cfg.data.split_seed,
        )
    echo(f"wrote {n} samples ({size}x{size}, seed {seed}) to {out}")


@data_app.command("inspect")
def data_inspect(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
) -> None:
    """Check a dataset and show split counts, class frequencies and image sizes."""
    from segops.cli.report import print_dataset_summary
    from segops.data.manifest import load_dataset

    cfg = config(params, overrides, dataset)
    info = load_dataset(cfg.data, eval_split=None, write_splits=False)
    print_dataset_summary(info)


@app.command()
def train(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
    resume: Annotated[
        bool, typer.Option(help="continue from <train.out_dir>/checkpoints/last.pt")
    ] = False,
    nproc: Annotated[int | None, typer.Option(help="DDP ranks (torchrun), batch per rank")] = None,
) -> None:
    """Check the dataset, then train; checkpoints every epoch, keeps the best by val mean IoU
    (semantic models) or val mask AP (instance models such as maskrcnn_resnet50_fpn)."""
    from segops.cli.progress import RichTrainProgress, counter
    from segops.data.manifest import load_dataset
    from segops.train.run import check_model_config, train_configured

    ranks = [f"train.distributed.nproc_per_node={nproc}"] if nproc else []  # DDP under torchrun
    cfg = config(params, [*(overrides or []), *ranks], dataset)
    check_model_config(cfg)
    with counter("checking dataset") as update:
        info = load_dataset(cfg.data, eval_split="val", progress=update)
    bars = RichTrainProgress()
    try:
        result = train_configured(cfg, resume=resume, callbacks=[bars], dataset=info)
    finally:
        bars.close()
    echo(
        f"best val mean IoU {result.best_miou:.4f} at epoch {result.best_epoch} "
        f"({result.epochs_run} epochs{', stopped early' if result.stopped_early else ''})\n"
        f"best checkpoint: {result.best_checkpoint}\nhistory: {result.history_csv}"
    )


models_app = typer.Typer(
    help="The model zoo (no subcommand) and the registry (subcommands).",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")


@models_app.callback()
def models(ctx: typer.Context) -> None:
    """List the models that `model.name` can take (see subcommands for the registry)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Column, Table

    from segops.cli.progress import console
    from segops.models import list_models

    table = Table(
        Column("name", no_wrap=True), "kind", "description", "pretrained (model.pretrained)"
    )
    for entry in list_models(kind=None):
        table.add_row(entry.name, entry.kind, entry.summary, entry.pretrained)
    console.print(table)


@models_app.command("registered")
def models_registered(
    name: Annotated[
        str | None, typer.Argument(help="registered model (promotion.model_name)")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Registered versions: aliases, key metrics, data version and promotion decision."""
    from segops import tracking
    from segops.cli.report import print_registered

    cfg = config(params, overrides)
    tracking.connect(cfg.tracking)
    print_registered(name or cfg.promotion.model_name)


@app.command()
def validate(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
) -> None:
    """Run the Great Expectations suite on a dataset; writes validation.json and .md."""
    from segops.validation import validate_dataset

    cfg = config(params, overrides, dataset)
    report = validate_dataset(cfg)
    echo(report.to_markdown())
    if not report.success:
        raise typer.Exit(1)


@app.command()
def run(
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", "-d", help="dataset folder, or s3://bucket/prefix (overrides data.root)"
        ),
    ] = None,
    workspace: Annotated[Path, typer.Option(help="DVC workspace (repository root)")] = Path("."),
    force: Annotated[
        bool, typer.Option(help="retrain even if this data, config and code made a version")
    ] = False,
    plan: PlanOpt = None,
) -> None:
    """Run the `retrain` Prefect flow: data to a registered, gated model.

    Validate, version (DVC), train, evaluate, register, promote. Skips training when a
    registered version was made from the same data md5, config hash and code version (--force
    retrains). Uses PREFECT_API_URL and MLFLOW_TRACKING_URI when set, else local stores."""

    from segops.cli.report import print_run_result
    from segops.promotion.decide import check_metric
    from segops.train.precheck import check_model_fast

    overrides = with_plan(plan, overrides)  # the plan's values travel as the first overrides
    # Fail fast on a bad config, model/data or promotion metric, before Prefect starts
    # (without importing torch for a known model with default options).
    from segops.data.fetch import is_remote

    local = None if dataset is None or is_remote(dataset) else Path(dataset)
    cfg = config(params, overrides, local)  # an s3:// dataset is checked once downloaded
    check_metric(cfg.promotion.metric, check_model_fast(cfg))
    from segops.preflight import check_stores

    check_stores(cfg, workspace)  # seconds, not minutes of retries, for a store that is down
    echo(lifecycle.prefect_api_line())
    retrain = importlib.import_module("flows.retrain").retrain
    # What the flow's tasks import anyway, imported while the temporary API starts (if any).
    store = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri
    imports = FLOW_IMPORTS + (() if store.startswith(("http:", "https:")) else DB_STORE)
    lifecycle.freeze_heap(imports, importlib.import_module("flows.runtime").temporary_api())
    path = str(params) if params.exists() or params != Path("params.yaml") else None
    try:
        result = retrain(
            params=path,
            overrides=list(overrides or []),
            dataset=dataset if dataset is None or is_remote(dataset) else str(local),
            workspace=str(workspace),
            force=force,
        )
    finally:
        try:  # the run's logs and events, while the API still answers; never masks an error
            importlib.import_module("flows.runtime").drain()
        except Exception as exc:  # the flow's own outcome is what counts
            echo(f"warning: Prefect's logs and events were not all delivered ({exc})")
        lifecycle.arm_fast_exit()  # the flow ended, its files are written: skip the teardown
    print_run_result(result)


data_app.command("add")(data_add)
app.command()(promote)
app.command()(evaluate)
app.command()(predict)
app.command()(schedule)
app.command()(serve)
app.command()(export)
app.command()(explain)
app.command()(plan)
app.command()(lineage.audit)
app.command()(lineage.reproduce)
models_app.command("history")(lineage.models_history)
app.add_typer(stack_app, name="stack")


def main() -> None:
    """Console entry point: user errors print one clear message and exit with status 2."""

    quiet_defaults()
    lifecycle.own_process()
    try:
        app()
    except SegopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        lifecycle.leave(2)
    except SystemExit as exc:
        lifecycle.leave(exc.code)
    lifecycle.leave(0)


if __name__ == "__main__":
    main()
