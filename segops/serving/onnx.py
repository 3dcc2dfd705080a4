"""ONNX export of a trained network, and its parity with PyTorch on the evaluation split.

The file takes `image` (`[N, 3, H, W]` float32, normalised like the evaluation transform) and
returns `logits` (`[N, C, H, W]`). The batch axis is dynamic; H and W are fixed at
`data.image_size` unless `dynamic_hw=True` (see `export_onnx`). It is written by the
`torch.export`-based exporter (`dynamo=True`), which handles every model in the zoo.

`export_and_check` is the pipeline step: it never raises for a failed export or check, it returns
tags with `segops.onnx.status` = "failed" and the error, so a failure is recorded, not silent.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.utils.data import DataLoader

from segops.config import Config
from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.errors import DatasetError
from segops.inference import TrainedModel, load_trained, require_semantic_model
from segops.metrics.confusion import ConfusionMatrix
from segops.metrics.semantic import iou, nanmean

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
EXPORTER = "torch.onnx.export(dynamo=True)"
TAG_PREFIX = "segops.onnx."
ONNX_FILENAME = "model.onnx"
_ERROR_CHARS = 300


def export_onnx(trained: TrainedModel, out_path: str | Path, *, dynamic_hw: bool = False) -> Path:
    """Write `trained`'s network (eval mode, CPU, float32) as ONNX at `out_path`; returns the path.

    The file is checked with `onnx.checker`. With `dynamic_hw`, H and W are dynamic too; beware
    that `torch.export` specialises shape-dependent branches to the example's shape, so a U-Net
    then only accepts sides that divide by 2**depth like `data.image_size` does (others fail in
    onnxruntime, loudly).
    """
    require_semantic_model(trained, "ONNX export")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # so a failed export leaves no stale file that looks valid
    # A copy: the exporter must not move the caller's model off its device or change its mode.
    model = copy.deepcopy(trained.model).to("cpu", torch.float32).eval()
    size = trained.config.data.image_size
    # Batch 2, not 1: torch.export specialises sizes 0 and 1 to constants.
    example = torch.zeros(2, 3, size, size)
    dims = {0: torch.export.Dim("batch")}
    if dynamic_hw:
        dims |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    torch.onnx.export(
        model,
        (example,),
        out,
        dynamo=True,
        dynamic_shapes=(dims,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        external_data=False,  # one self-contained file to log with the model version
        verbose=False,  # the dynamo exporter otherwise prints progress lines to stdout
    )
    onnx.checker.check_model(str(out))
    return out


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset version the ONNX file at `path` declares."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@dataclass(frozen=True)
class OnnxParity:
    """PyTorch against onnxruntime on the same preprocessed batches of one split."""

    split: str
    n_images: int
    max_abs_logit_diff: float
    mean_iou_torch: float
    mean_iou_onnx: float
    mean_iou_diff: float  # |mean_iou_torch - mean_iou_onnx|
    argmax_agreement: float  # fraction of pixels whose predicted class is the same
    opset: int

    def to_tags(self) -> dict[str, str]:
        """Flat string tags `segops.onnx.<field>`, plus `segops.onnx.status` = "ok"."""
        tags = {TAG_PREFIX + k: _tag_value(v) for k, v in asdict(self).items()}
        return tags | {TAG_PREFIX + "status": "ok", TAG_PREFIX + "exporter": EXPORTER}


def _tag_value(value: object) -> str:
    return format(value, ".6g") if isinstance(value, float) else str(value)


class _Comparison:
    """Running maxima and confusion matrices of the two runtimes' outputs."""

    def __init__(self, num_classes: int) -> None:
        self.torch_cm, self.onnx_cm = ConfusionMatrix(num_classes), ConfusionMatrix(num_classes)
        self.max_diff, self.agree, self.pixels, self.images = 0.0, 0, 0, 0

    def update(self, want: torch.Tensor, got: torch.Tensor, masks: torch.Tensor) -> None:
        # np.maximum, not max(): a NaN from either runtime must show, not be skipped.
        self.max_diff = float(np.maximum(self.max_diff, float((want - got).abs().max())))
        pred_t, pred_o = want.argmax(1), got.argmax(1)
        self.torch_cm.update(pred_t, masks)
        self.onnx_cm.update(pred_o, masks)
        self.agree += int((pred_t == pred_o).sum())
        self.pixels += pred_t.numel()
        self.images += len(masks)

    def result(self, split: str, opset: int) -> OnnxParity:
        miou_t, miou_o = nanmean(iou(self.torch_cm.compute())), nanmean(iou(self.onnx_cm.compute()))
        agreement = self.agree / self.pixels
        diff = abs(miou_t - miou_o)
        return OnnxParity(split, self.images, self.max_diff, miou_t, miou_o, diff, agreement, opset)


@torch.inference_mode()
def check_parity(
    trained: TrainedModel,
    onnx_path: str | Path,
    cfg: Config,
    split: str | None = None,
    batch_size: int | None = None,
) -> OnnxParity:
    """Run `split` (default `cfg.evaluate.split`) of `cfg.data` through `trained` and the ONNX
    file (onnxruntime, CPUExecutionProvider) with identical batches; returns the OnnxParity.

    PyTorch runs on `trained.device`. Raises DatasetError for an empty split or other classes.
    """
    split = split or cfg.evaluate.split
    info = load_dataset(cfg.data, eval_split=split)
    if tuple(info.classes) != tuple(trained.classes):
        raise DatasetError(f"{info.root} declares classes {list(info.classes)}, not the model's")
    ds = SegmentationDataset(info.root, info.split(split), trained.transform())
    if len(ds) == 0:
        raise DatasetError(f"split {split!r} of {info.root} has no images")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    comparison = _Comparison(len(trained.classes))
    for images, masks in DataLoader(ds, batch_size=batch_size or cfg.evaluate.batch_size):
        want = trained.model(images.to(trained.device)).float().cpu()
        feed = {INPUT_NAME: np.ascontiguousarray(images.numpy(), dtype=np.float32)}
        got = torch.from_numpy(session.run([OUTPUT_NAME], feed)[0])
        comparison.update(want, got, masks)
    return comparison.result(split, onnx_opset(onnx_path))


def _failure(stage: str, exc: Exception, path: Path | None) -> dict[str, str]:
    message = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
    return {
        TAG_PREFIX + "status": "failed",
        TAG_PREFIX + "stage": stage,
        TAG_PREFIX + "error": message,
        TAG_PREFIX + "exporter": EXPORTER,
        TAG_PREFIX + "path": str(path) if path is not None else "",
    }


def export_and_check(
    checkpoint_or_trained: str | Path | TrainedModel, out_dir: str | Path, cfg: Config
) -> dict[str, str]:
    """Export to `<out_dir>/model.onnx` and check parity on `cfg`'s evaluation split.

    Returns flat string tags: on success `OnnxParity.to_tags()` plus `segops.onnx.path`; on
    any failure (loading, export, checker, onnxruntime, data) `segops.onnx.status` = "failed",
    `segops.onnx.stage`, `segops.onnx.error` ("Type: message", 300 chars at most) and the path
    (or "" when no file was written). Never raises an Exception.
    """
    path: Path | None = None
    stage = "load"
    try:
        trained = checkpoint_or_trained
        if not isinstance(trained, TrainedModel):
            trained = load_trained(trained, "cpu")
        stage = "export"
        path = export_onnx(trained, Path(out_dir) / ONNX_FILENAME)
        stage = "parity"
        parity = check_parity(trained, path, cfg)
    except Exception as exc:  # recorded, not raised: the caller logs it as the step's outcome
        return _failure(stage, exc, path)  # path is None unless the export itself succeeded
    return parity.to_tags() | {TAG_PREFIX + "path": str(path)}
