"""`segops evaluate` and `segops predict`: score a registered model or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from segops.cli.common import DatasetOpt, ParamsOpt, SetOpt, config, echo
from segops.errors import SegopsError

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
    src: Annotated[Path, typer.Argument(help="an image file or a folder of images")],
    out: Annotated[Path, typer.Argument(help="output folder for masks and overlays")],
    model: Annotated[
        str | None, typer.Option(help="a registered model: models:/NAME@champion or /NAME/3")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="a checkpoint instead (runs/latest/checkpoints/best.pt)")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Predict masks at original size: <id>_mask.png (class ids), <id>_overlay.png, summary.csv.

    Images much larger than the model's input size are predicted with a sliding window.
    summary.csv has one row per image with each class's pixel fraction.
    """
    from segops.cli.progress import counter
    from segops.predict import predict_images

    if model and checkpoint:
        raise typer.BadParameter("give --model or --checkpoint, not both")
    if model:
        from segops import tracking
        from segops.serving.registered import load_registered

        tracking.connect(config(params, overrides).tracking)
        trained = load_registered(model)
    else:
        from segops.inference import load_trained

        trained = load_trained(checkpoint or Path("runs/latest/checkpoints/best.pt"))
    with counter(f"predicting -> {out}") as update:
        summary = predict_images(trained, src, out, progress=update)
    echo(f"wrote masks and overlays to {out}; per-image class fractions: {summary}")
