"""Grad-CAM explanations of semantic segmentation models (captum's `LayerGradCam`).

Segmentation nets output a map of logits, while Grad-CAM needs one score per image. The score
explained for class `c` is the sum of class `c`'s logits over the pixels the model predicts as
`c` (at its input size); when it predicts `c` nowhere, the sum over all pixels. Its gradient
with respect to a layer's activations, averaged per channel, weighs those activations; the
weighted sum over channels, with negatives set to zero (ReLU), is the class activation map.

The image goes through the model the way `predict_image` resizes it (the evaluation transform,
at `data.image_size`); the map is resized bilinearly back to the image's own size and scaled so
that its maximum is 1 (an all-zero map stays zero). Which layer is explained matters: by
default the last decoder block before the classifier for U-Net and SegNet, the backbone's last
stage for the torchvision models (`default_layer`); any module can be named by its dotted path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from segops.config import Config
from segops.data.formats import load_sample, ref_from_row
from segops.data.io import ReadError, read_image
from segops.data.manifest import load_dataset
from segops.data.transforms import to_tv
from segops.errors import ConfigError, DatasetError
from segops.inference import TrainedModel, require_semantic_model

# lazy imports: captum (~1.5 s: it pulls sympy) and matplotlib are imported where a map is
# computed or drawn: the evaluation step imports this module and skips instance models before
# any Grad-CAM, and layer and class lookups need neither (docs/development.md "Imports").

_MOBILENET_BACKBONE = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
_RESNET_BACKBONE = ("fcn_resnet50", "deeplabv3_resnet50")


def _last_child(model: nn.Module, path: str) -> str:
    """`path.<name of its last child>`: e.g. the last feature block kept in a backbone."""
    *_, last = (name for name, _ in model.get_submodule(path).named_children())
    return f"{path}.{last}"


def default_layer_name(model_name: str, model: nn.Module) -> str:
    """The dotted path of the layer Grad-CAM explains by default for `model_name`.

    U-Net: its last decoder block (`fuse.<depth-1>`); SegNet: its last decoder block
    (`decoder.<depth-1>`); FCN and DeepLabV3 on ResNet: `net.backbone.layer4`; the MobileNetV3
    models: the backbone's last feature block. ConfigError for a model without a default.
    """
    if model_name == "unet":
        return f"fuse.{len(model.fuse) - 1}"
    if model_name == "segnet":
        return f"decoder.{len(model.decoder) - 1}"
    if model_name in _RESNET_BACKBONE:
        return "net.backbone.layer4"
    if model_name in _MOBILENET_BACKBONE:
        return _last_child(model, "net.backbone")
    raise ConfigError(
        f"no default Grad-CAM layer for model {model_name!r}; name one by its dotted path"
    )


def default_layer(model_name: str, model: nn.Module) -> nn.Module:
    """The module Grad-CAM explains by default for `model_name` (see `default_layer_name`)."""
    return model.get_submodule(default_layer_name(model_name, model))


def _default_or_none(trained: TrainedModel) -> str | None:
    """`default_layer_name` for `trained`, or None for a model without a default."""
    try:
        return default_layer_name(trained.config.model.name, trained.model)
    except ConfigError:
        return None


def resolve_layer(trained: TrainedModel, layer: str | None = None) -> nn.Module:
    """The module at dotted path `layer` in `trained.model`, or the default when None.

    Raises ConfigError naming the model's top-level modules when the path does not exist, and
    for an instance model (Grad-CAM here explains a class's pixel logits).
    """
    require_semantic_model(trained, "Grad-CAM")
    if layer is None:
        return default_layer(trained.config.model.name, trained.model)
    try:
        return trained.model.get_submodule(layer)
    except AttributeError:
        top = [name for name, _ in trained.model.named_children()]
        raise ConfigError(
            f"no layer {layer!r} in model {trained.config.model.name!r}; give a dotted path "
            f"such as {_default_or_none(trained)!r} (top-level modules: {top})"
        ) from None


def lookup_class(trained: TrainedModel, class_name: str) -> int:
    """The index of `class_name` among the model's classes; ConfigError listing them if absent."""
    if class_name not in trained.classes:
        raise ConfigError(
            f"unknown class {class_name!r}; this model's classes are {list(trained.classes)}"
        )
    return trained.classes.index(class_name)


def _model_input(trained: TrainedModel, image: np.ndarray) -> torch.Tensor:
    """`[1, 3, S, S]` float tensor: `image` resized and normalised as for prediction."""
    (tensor,) = to_tv(image)
    tensor = trained.transform()(tensor).as_subclass(torch.Tensor)
    return tensor.unsqueeze(0).to(trained.device)


def _class_score(model: nn.Module, mask: torch.Tensor, index: int):
    """A forward function: per image, the sum of class `index`'s logits where `mask` is set."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return (model(x)[:, index] * mask).sum((1, 2))  # [N]

    return forward


@torch.inference_mode(False)  # gradients are needed even when called under inference mode
@torch.enable_grad()
def gradcam(
    trained: TrainedModel, image: np.ndarray, class_index: int, layer: str | None = None
) -> np.ndarray:
    """Grad-CAM heatmap of class `class_index` for an HxWx3 uint8 image.

    Returns an HxW float32 array in [0, 1] at the image's own size (1 where the layer's
    evidence for the class is strongest). `layer` is a dotted module path; None takes
    `default_layer`. See the module docstring for the score that is explained.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if not 0 <= class_index < len(trained.classes):
        raise ConfigError(f"class index {class_index} out of range for {list(trained.classes)}")
    model, module = trained.model, resolve_layer(trained, layer)
    x = _model_input(trained, image)
    with torch.no_grad():
        mask = (model(x).argmax(1) == class_index).float()
    if not mask.any():
        mask = torch.ones_like(mask)
    cam = LayerGradCam(_class_score(model, mask, class_index), module).attribute(
        x, relu_attributions=True
    )
    cam = LayerAttribution.interpolate(cam.detach().float(), image.shape[:2], "bilinear")[0, 0]
    top = float(cam.max())
    heat = cam / top if top > 0 else torch.zeros_like(cam)
    return heat.clamp(0, 1).cpu().numpy().astype(np.float32)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8: the heatmap in the `jet` colour map blended over the image."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3] * 255
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    return blend.round().clip(0, 255).astype(np.uint8)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def overlay_name(stem: str, class_name: str) -> str:
    """`<stem>_gradcam_<class>.png`; other characters than letters, digits, `_.-` become `_`."""
    return f"{_safe(stem)}_gradcam_{_safe(class_name)}.png"


def explain_arrays(
    trained: TrainedModel,
    samples: Iterable[tuple[str, np.ndarray]],
    class_name: str,
    out_dir: str | Path,
    layer: str | None = None,
) -> list[Path]:
    """Write a Grad-CAM overlay per `(stem, HxWx3 uint8 image)` pair into `out_dir`.

    For images already in memory (e.g. the evaluation's worst ones). Files are named
    `<stem>_gradcam_<class>.png`, at each image's size; returns their paths in order.
    ConfigError for an unknown class (listing the model's classes) or layer.
    """

    index = lookup_class(trained, class_name)
    resolve_layer(trained, layer)  # a bad layer fails before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, image in samples:
        heat = gradcam(trained, image, index, layer)
        path = out / overlay_name(stem, class_name)
        Image.fromarray(heatmap_overlay(image, heat)).save(path)
        written.append(path)
    return written


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except ReadError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def explain_images(
    trained: TrainedModel,
    images: list[Path],
    class_name: str,
    out_dir: str | Path,
    layer: str | None = None,
) -> list[Path]:
    """Write `<stem>_gradcam_<class>.png` overlays for image files; returns their paths.

    Same as `explain_arrays` on the decoded files; an unreadable file is a DatasetError.
    """
    samples = ((Path(p).stem, _read(Path(p))) for p in images)
    return explain_arrays(trained, samples, class_name, out_dir, layer)


def weakest_class(metrics: dict) -> str:
    """The class (not id 0, the background) with the lowest IoU among those present."""
    absent = set(metrics.get("absent_classes", []))
    scored = [(v["iou"], name) for name, v in list(metrics["per_class"].items())[1:]]
    present = [(iou, name) for iou, name in scored if name not in absent and iou == iou]
    return min(present)[1] if present else next(iter(metrics["per_class"]))


def explain_worst(
    trained: TrainedModel, cfg: Config, eval_dir: str | Path, k: int = 3
) -> list[Path]:
    """Grad-CAM overlays of the `k` lowest-IoU images of an evaluation, for its weakest class.

    Reads `metrics.json` and `per_image.csv` in `eval_dir`, writes into
    `eval_dir/explanations/` and returns the files' paths.
    """

    eval_dir = Path(eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    worst = pd.read_csv(eval_dir / "per_image.csv", dtype={"id": str}).nsmallest(k, "iou")
    info = load_dataset(cfg.data, eval_split=metrics["split"], write_splits=False)
    rows = {str(r["id"]): r for r in info.split(metrics["split"]).to_dict("records")}
    samples = [(i, load_sample(info.root, ref_from_row(rows[i]))[0]) for i in worst["id"]]
    return explain_arrays(trained, samples, weakest_class(metrics), eval_dir / "explanations")
