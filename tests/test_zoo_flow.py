"""Every model of the zoo and every dataset format through the real `retrain` flow (what
`segops run` calls): validated, versioned, trained, evaluated, registered, promoted to champion,
reported, then served through the champion's MLflow pyfunc (what `segops serve` loads).

One flow per (model, format) pair, chosen so that each model and each format appears at least
once here or in tests/test_instance_flow.py (maskrcnn_resnet50_fpn x folder_instance);
`test_every_model_and_format_has_a_flow_test` fails when a new one is added without a case.
Each layout is re-laid from the built-in shapes generator."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import dvc_workspace
from mlflow import MlflowClient
from PIL import Image

from segops.data.formats import VOC_CLASSES
from segops.data.shapes import CLASSES, generate_shapes
from segops.serving.pyfunc import decode_png, encode_png

pytestmark = pytest.mark.slow

# Pairs run by other flow tests: (model, format) -> the file that runs it.
ELSEWHERE = {("maskrcnn_resnet50_fpn", "folder_instance"): "tests/test_instance_flow.py"}

# Cityscapes label ids with train ids 0..18, in train-id order (segops.data.cityscapes).
CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


@pytest.fixture
def workspace(tmp_path, monkeypatch, own_mlflow):
    """A committed git + DVC workspace with a local remote and its own MLflow; no data yet."""
    ws = dvc_workspace(tmp_path, commit=True)
    monkeypatch.chdir(ws)
    return ws


# --- layouts, re-laid from the shapes generator -------------------------------------------


def _shapes(tmp: Path, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` 32x32 shapes samples (RGB image, class-id mask), generated under `tmp`."""
    root = generate_shapes(tmp, n=n, size=32, seed=seed)
    names = sorted(p.name for p in (root / "images").iterdir())
    return [
        (np.array(Image.open(root / "images" / f)), np.array(Image.open(root / "masks" / f)))
        for f in names
    ]


def _every_class_in_row0(mask: np.ndarray, ids: typing.Sequence[int]) -> np.ndarray:
    """`mask` with row 0 starting with one pixel of each id: a dataset that names more classes
    than the shapes draw (Cityscapes 19, VOC 21) has pixels of all of them in train, as the
    validation suite's classes_in_train requires."""
    out = mask.copy()
    out[0, : len(ids)] = ids
    return out


def folder(root: Path, scratch: Path) -> list[str]:
    generate_shapes(root, n=12, size=32, seed=4)
    return []


def folder_instance(root: Path, scratch: Path) -> list[str]:
    generate_shapes(root, n=12, size=32, seed=4, instances="folder")
    return []


def coco(root: Path, scratch: Path) -> list[str]:
    generate_shapes(root, n=12, size=32, seed=4, instances="coco", val_fraction=0.34)
    return ["data.coco_image_dir=images"]


def cityscapes(root: Path, scratch: Path) -> list[str]:
    """leftImg8bit/ + gtFine/ labelIds: shapes class c -> the label id of train id c."""
    samples = _shapes(scratch, 12, 4)
    lookup = np.array(CITYSCAPES_IDS[: len(CLASSES)], np.uint8)
    for i, (image, mask) in enumerate(samples):
        split, city = ("val", "frankfurt") if i % 3 == 2 else ("train", ("aachen", "bochum")[i % 2])
        sid = f"{city}_000000_{i:06d}"
        label_ids = _every_class_in_row0(lookup[mask], CITYSCAPES_IDS)
        for folder_name, suffix, array in (
            ("leftImg8bit", "leftImg8bit", image),
            ("gtFine", "gtFine_labelIds", label_ids),
        ):
            (root / folder_name / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder_name / split / city / f"{sid}_{suffix}.png")
    return []


def voc(root: Path, scratch: Path) -> list[str]:
    """VOCdevkit/VOC2012: JPEG images, palette PNG classes (shapes class c -> VOC id c) and
    ImageSets/Segmentation/{train,val}.txt."""
    samples = _shapes(scratch, 12, 4)
    voc_root = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_root / sub).mkdir(parents=True)
    palette = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for i, (image, mask) in enumerate(samples):
        sid = f"2007_{i:06d}"
        splits["val" if i % 3 == 2 else "train"].append(sid)
        Image.fromarray(image).save(voc_root / "JPEGImages" / f"{sid}.jpg", quality=95)
        labels = Image.fromarray(_every_class_in_row0(mask, range(len(VOC_CLASSES)))).convert("P")
        labels.putpalette(palette.ravel().tolist())
        labels.save(voc_root / "SegmentationClass" / f"{sid}.png")
    for split, ids in splits.items():
        (voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return []


def nifti(root: Path, scratch: Path) -> list[str]:
    """images/ + labels/ <case>.nii.gz: 4 cases of 3 shapes slices each (grey int16 volumes,
    uint8 label volumes), classes.txt; split by case."""
    samples = _shapes(scratch, 12, 4)
    for folder_name in ("images", "labels"):
        (root / folder_name).mkdir(parents=True)
    for case in range(4):
        chunk = samples[case * 3 : case * 3 + 3]
        grey = np.stack([im.mean(axis=2) for im, _ in chunk], axis=2).astype(np.int16) * 4 - 400
        labels = np.stack([m for _, m in chunk], axis=2).astype(np.uint8)
        for folder_name, volume in (("images", grey), ("labels", labels)):
            image = nib.Nifti1Image(volume, np.eye(4))
            image.to_filename(root / folder_name / f"case_{case}.nii.gz")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return []


def coco_instances(root: Path, scratch: Path) -> list[str]:
    generate_shapes(root, n=15, size=64, seed=5, instances="coco", val_fraction=0.34)
    return ["data.coco_image_dir=images"]


# --- cases --------------------------------------------------------------------------------

SEMANTIC = ["data.image_size=32", "train.batch_size=4", "evaluate.batch_size=4"]
SMALL_NET = "model.options={width: 8, depth: 2}"
MASKRCNN = [
    "data.image_size=64",
    "model.options={min_size: 64, max_size: 64, trainable_backbone_layers: 0, "
    "box_score_thresh: 0.0}",
    "train.batch_size=2",
    "train.lr=0.0005",
    "evaluate.batch_size=2",
]


@dataclass(frozen=True)
class Case:
    model: str
    format: str
    # writes the dataset under its root (sources in scratch); returns extra overrides
    layout: Callable[[Path, Path], list[str]]
    overrides: tuple[str, ...] = ()
    metric: str = "mean_iou"

    @property
    def id(self) -> str:
        return f"{self.model}-{self.layout.__name__}"


CASES = [
    Case("segnet", "cityscapes", cityscapes, (*SEMANTIC, SMALL_NET)),
    Case("fcn_resnet50", "nifti", nifti, tuple(SEMANTIC)),
    Case("deeplabv3_resnet50", "coco", coco, tuple(SEMANTIC)),
    Case("deeplabv3_mobilenet_v3_large", "voc", voc, tuple(SEMANTIC)),
    Case("lraspp_mobilenet_v3_large", "folder", folder, tuple(SEMANTIC)),
    Case("unet", "folder_instance", folder_instance, (*SEMANTIC, SMALL_NET)),
    Case("maskrcnn_resnet50_fpn_v2", "coco", coco_instances, tuple(MASKRCNN), "mask_ap"),
]


def test_every_model_and_format_has_a_flow_test():
    """A model or format without a flow test fails here, not in production."""
    from segops.data.registry import format_names
    from segops.models import list_models

    pairs = {(c.model, c.format) for c in CASES} | set(ELSEWHERE)
    assert len(pairs) == len(CASES) + len(ELSEWHERE), "a pair is run twice"
    repo = Path(__file__).resolve().parents[1]
    for (model, fmt), path in ELSEWHERE.items():
        text = (repo / path).read_text()
        assert f'model.name={model}"' in text and f'data.format={fmt}"' in text, path
    assert {m for m, _ in pairs} == {e.name for e in list_models(kind=None)}
    assert {f for _, f in pairs} == set(format_names())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_model_trains_registers_promotes_and_serves(harness, workspace, case):
    from flows.retrain import retrain

    root = workspace / "data" / case.format
    extra = case.layout(root, workspace.parent / "source")
    name = f"zoo-{case.id}"
    out = retrain(
        params=None,
        overrides=[
            f"data.root={root}",
            f"data.format={case.format}",
            "data.val_fraction=0.34",
            f"model.name={case.model}",
            *case.overrides,
            *extra,
            "train.epochs=1",
            "train.warmup_epochs=0",
            "train.device=cpu",
            f"train.out_dir={workspace / 'runs' / 'latest'}",
            "evaluate.worst_k=2",
            f"versioning.path={workspace / 'data'}",
            f"tracking.artifact_root={workspace / 'mlflow' / 'artifacts'}",
            f"promotion.model_name={name}",
            "promotion.bootstrap_samples=200",
        ],
        workspace=str(workspace),
    )

    assert out["skipped"] is False
    assert out["model"]["version"] == "1" and out["decision"]["promote"] is True
    assert out["decision"]["metric"] == case.metric
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    run = client.get_run(out["model"]["run_id"])
    assert 0.0 <= run.data.metrics[case.metric] <= 1.0
    assert run.data.params["model.name"] == case.model
    assert run.data.params["data.format"] == case.format
    assert out["report"]["error"] is None, out["report"]
    if case.metric == "mask_ap":  # Mask R-CNN is served by PyTorch and not explained
        assert out["onnx"]["segops.onnx.status"] == "skipped"
        assert run.data.tags["segops.explanations"].startswith("skipped")
    else:
        assert out["onnx"]["segops.onnx.status"] == "ok", out["onnx"]
        assert run.data.tags["segops.explanations"].startswith("2 Grad-CAM overlays")

    served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    params = {"score_threshold": 0.0} if case.metric == "mask_ap" else None
    row = served.predict(pd.DataFrame({"image": [encode_png(image)]}), params=params).iloc[0]
    assert decode_png(row["mask"]).shape == (40, 56)
    if case.metric == "mask_ap":
        assert len(row["masks"]) == len(row["classes"]) == len(row["scores"]) > 0
        assert set(row["classes"]) <= set(CLASSES[1:])
        assert all(decode_png(m).shape == (40, 56) for m in row["masks"])
