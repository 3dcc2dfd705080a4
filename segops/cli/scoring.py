"""`segops evaluate` and `segops predict`: score a registered model or a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config, echo
from segops.errors import SegopsError
from segops.scoring.source import checkpoint_source, registered_source, with_settings

# lazy imports: each command imports its work (torch, MLflow, Ray, rich's progress) when it
# runs; `segops --help` and argument errors answer without them (tests/test_architecture.py).

if TYPE_CHECKING:
    from segops.config import Config
    from segops.inference import TrainedModel


def evaluate(
    model: Annotated[
        str | None,
        typer.Argument(help="models:/NAME@alias or /NAME/3, or a checkpoint file (best.pt)"),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    dataset: DatasetOpt = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="a checkpoint (same as giving its path as MODEL)")
    ] = None,
    split: Annotated[str | None, typer.Option(help="train, val or test (evaluate.split)")] = None,
    out: Annotated[Path | None, typer.Option(help="default: beside the checkpoint, eval/")] = None,
) -> None:
    """Evaluate a registered model or a checkpoint: metrics.json, per-class and per-image CSVs,
    plots. A registered model is scored on the dataset it was trained on unless --dataset."""
    from segops.cli.progress import counter
    from segops.cli.report import print_eval_report
    from segops.evaluate.report import evaluate_model

    cfg = config(params, overrides, dataset)
    trained, default_out = _model_to_evaluate(model or checkpoint, cfg)
    if dataset is None and Path(trained.config.data.root).is_dir():
        cfg = cfg.model_copy(update={"data": trained.config.data})
    with counter("evaluating") as update:
        report = evaluate_model(trained, cfg, split, Path(out or default_out), progress=update)
    print_eval_report(report)


def _model_to_evaluate(model: str | Path | None, cfg: Config) -> tuple[TrainedModel, Path]:
    """The model `segops evaluate` scores, and where its results go by default."""
    from segops.inference import default_device, load_trained

    if model is not None and str(model).startswith("models:/"):
        from segops import tracking
        from segops.promotion.registry import resolve
        from segops.serving.registered import load_registered

        tracking.connect(cfg.tracking)
        ref = resolve(str(model))
        return load_registered(ref.uri), Path("runs") / "eval" / f"{ref.name}-v{ref.version}"
    path = Path(model or Path(cfg.train.out_dir) / "checkpoints" / "best.pt")
    if not path.is_file():
        raise SegopsError(
            f"no checkpoint at {path}: pass a registered model (segops evaluate "
            "models:/NAME@champion) or a checkpoint file; `segops models registered` shows "
            "each version's run folder"
        )
    return load_trained(path, default_device()), path.parent.parent / "eval"


def predict(
    src: Annotated[
        str, typer.Argument(help="an image file, a folder of images or s3://bucket/prefix")
    ],
    out: Annotated[
        str, typer.Argument(help="output folder or s3:// prefix for masks, overlays, tables")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="a registered model: models:/NAME@champion, /NAME/3, or NAME"),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="a checkpoint instead (runs/latest/checkpoints/best.pt)")
    ] = None,
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data)")] = "local",
    address: Annotated[
        str | None, typer.Option(help="an existing Ray cluster (host:port, ray://host:port)")
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs of a local Ray cluster (default: all)")
    ] = None,
    dashboard: Annotated[bool, typer.Option(help="start a local Ray cluster's dashboard")] = False,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="images per forward (predict.batch_size)")
    ] = None,
    overlays: Annotated[bool, typer.Option(help="also write <id>_overlay.png")] = True,
    overwrite: Annotated[bool, typer.Option(help="predict again images already done")] = False,
    threads: Annotated[
        str | None,
        typer.Option(
            help="torch CPU threads where the model scores (each Ray actor too): a number or "
            "auto (default: the model's predict.threads)"
        ),
    ] = None,
    max_tile: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="largest tile side at native resolution: an image that fits, padded to a "
            "multiple of 32, is predicted whole; 0: windows of the model's input size "
            "(default: the model's predict.max_tile)",
        ),
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=0.99,
            help="tiles' overlap, share of a side (default: the model's predict.overlap)",
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Predict masks at original size: <id>_mask.png (class ids), <id>_overlay.png,
    summary.csv (each class's pixel fraction per image), errors.csv (unreadable images).

    Images much larger than the model's input size are predicted with a sliding window. A
    rerun skips images whose outputs exist (--overwrite to redo them). --engine ray scores on
    Ray Data actors (one model load each), on the cluster at --address or a local one.
    s3:// input and output use AWS_ENDPOINT_URL and the AWS_* credentials of the environment.
    --threads, --max-tile and --overlap override the predict section saved with the model.
    """
    from segops.scoring.checks import check_ray_address, check_source_folder

    if model and checkpoint:
        raise typer.BadParameter("give --model or --checkpoint, not both")
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"--engine {engine!r}: give local or ray")
    check_source_folder(src)  # bad input in seconds, before torch, a model or a cluster
    if engine == "ray" and address:
        check_ray_address(address)
    from segops.scoring.job import JobOptions, predict_job

    settings = {"threads": _threads(threads), "max_tile": max_tile, "overlap": overlap}
    source = with_settings(_source(model, checkpoint, params, overrides), settings)
    options = JobOptions(engine, batch_size, overlays, overwrite, address, num_cpus, dashboard)
    with _rate_bar(f"predicting ({engine}) -> {out}") as update:
        summary = predict_job(source, src, out, options, update, _dashboard)
    echo(
        f"{summary.scored} images predicted ({summary.images_per_s:g} images/s), "
        f"{summary.skipped} already done, {summary.errors} unreadable (errors.csv)\n"
        f"masks in {out}; per-image class fractions: {summary.summary_csv}"
    )


def _source(
    model: str | None, checkpoint: Path | None, params: Path, overrides: list[str] | None
) -> dict:
    if not model:
        return checkpoint_source(checkpoint or Path("runs/latest/checkpoints/best.pt"))
    from segops import tracking

    tracking.connect(config(params, overrides).tracking)
    return registered_source(model)


def _threads(value: str | None) -> str | int | None:
    """--threads: auto or a positive number."""
    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"--threads {value!r}: give a positive number or auto")
    return int(value)


def _dashboard(url: str) -> None:
    echo(f"Ray dashboard: http://{url.removeprefix('http://')}")


@contextmanager
def _rate_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """One progress bar with images/s; yields `update(done, total)`. The bar's task starts at
    the first update (the job's `progress(0, total)` once the model is loaded and the engine
    up), so its elapsed time and images/s are those of scoring, not of loading."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segops.cli.progress import console

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, start=False, total=None, rate="")

        def update(done: int, total: int) -> None:
            (state,) = bar.tasks  # this bar's one task
            if not state.started:
                bar.start_task(task)
            elapsed = state.elapsed or 0.0
            rate = f"{done / elapsed:.1f} images/s" if done and elapsed > 0 else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield update
