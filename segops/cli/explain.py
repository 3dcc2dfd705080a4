"""`segops explain MODEL IMAGE --class NAME`: Grad-CAM heatmap overlays (registered in main.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segops.cli.common import ParamsOpt, SetOpt, config, echo

# lazy imports: each command imports its work (torch, MLflow, pandas, ...) when it runs:
# `segops --help` imports this module (docs/development.md "Imports").


def _load(model: str, params: Path, overrides: list[str] | None):
    """A `TrainedModel` from a `models:/` URI (via the tracking store) or a checkpoint file."""
    if model.startswith("models:/"):
        from segops import tracking
        from segops.serving.registered import load_registered

        tracking.connect(config(params, overrides).tracking)
        return load_registered(model)
    from segops.inference import load_trained

    return load_trained(Path(model))


def explain(
    model: Annotated[
        str,
        typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint .pt file"),
    ],
    image: Annotated[Path, typer.Argument(help="an image file or a folder of images")],
    class_name: Annotated[str, typer.Option("--class", help="the class to explain, by name")],
    out: Annotated[Path, typer.Option(help="folder for the overlays")] = Path("explanations"),
    layer: Annotated[
        str | None,
        typer.Option(
            help="dotted module path to explain, e.g. net.backbone.layer4 "
            "(default: one per architecture)"
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Grad-CAM: where the model finds evidence for --class, as heatmaps over the images.

    Writes <stem>_gradcam_<class>.png per image (at its own size) into --out. The explained
    score is the class's logits summed over the pixels predicted as that class (all pixels
    when there are none).
    """
    from segops.explain import explain_images
    from segops.predict import list_images

    trained = _load(model, params, overrides)
    written = explain_images(trained, list_images(image), class_name, out, layer)
    echo(f"wrote {len(written)} Grad-CAM overlay(s) for class {class_name!r} to {out}")
