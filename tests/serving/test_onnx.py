from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_config

from segops.data.dataset import SegmentationDataset
from segops.data.manifest import load_dataset
from segops.evaluate.report import score_split
from segops.inference import TrainedModel, load_trained
from segops.metrics.semantic import iou, nanmean
from segops.models import build_model, list_models
from segops.serving.onnx import check_parity, export_and_check, export_onnx
from segops.train.loop import train

SIZE = 32  # the smallest side the torchvision backbones (output stride 8-32) accept
CLASSES = ("bg", "a", "b")
# The torchvision models take ~12 s each to export on two CPU cores; the U-Net ~3 s.
SMALL = ("unet", "segnet")  # built with {width: 4, depth: 2}: fast
ZOO = [
    pytest.param(e.name, marks=() if e.name in SMALL else pytest.mark.slow) for e in list_models()
]


def _untrained(name: str, tmp_path: Path) -> TrainedModel:
    options = "{width: 4, depth: 2}" if name in SMALL else "{}"
    cfg = tiny_config(tmp_path, tmp_path, f"model.name={name}", f"model.options={options}")
    torch.manual_seed(0)
    model = build_model(name, num_classes=len(CLASSES), **cfg.model.options).eval()
    return TrainedModel(model, cfg, CLASSES, tmp_path / "none.pt", torch.device("cpu"))


def assert_parity(trained: TrainedModel, path: Path, shapes: list[tuple[int, ...]]) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = torch.randn(shape, generator=gen)  # like a normalised image: zero mean, unit spread
        with torch.inference_mode():
            want = trained.model(x).numpy()
        (got,) = session.run(["logits"], {"image": x.numpy()})
        assert got.shape == want.shape == (shape[0], len(CLASSES), *shape[2:])
        # Relative to the logits' scale, since untrained heads give logits from ~0.02
        # (DeepLab-MobileNet) to ~4 (FCN): float32 reassociation stays near 1e-6 of it.
        tolerance = min(1e-4 * float(np.abs(want).max()) + 1e-6, 1e-3)
        assert np.abs(got - want).max() <= tolerance, shape
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.999, shape


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_exports_with_parity(name, tmp_path):
    trained = _untrained(name, tmp_path)
    path = export_onnx(trained, tmp_path / f"{name}.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Exported with batch 2; batches 1 and 3 prove the axis is really dynamic.
    assert_parity(trained, path, [(2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE), (3, 3, SIZE, SIZE)])
    assert trained.model.training is False  # the export worked on a copy


def test_dynamic_height_and_width(tmp_path):
    trained = _untrained("unet", tmp_path)
    path = export_onnx(trained, tmp_path / "unet.onnx", dynamic_hw=True)
    # Sides divisible by 2**depth, like the example's (see export_onnx's docstring).
    assert_parity(trained, path, [(2, 3, SIZE, SIZE), (1, 3, 48, 64)])


@pytest.fixture(scope="module")
def trained_unet(shapes_root, tmp_path_factory):
    cfg = tiny_config(shapes_root, tmp_path_factory.mktemp("run"))
    train(cfg)
    return cfg, Path(cfg.train.out_dir) / "checkpoints" / "best.pt"


def test_parity_on_the_evaluation_split(trained_unet, tmp_path):
    cfg, ckpt = trained_unet
    tags = export_and_check(ckpt, tmp_path, cfg)
    assert tags["segops.onnx.status"] == "ok", tags
    assert tags["segops.onnx.path"] == str(tmp_path / "model.onnx")
    assert Path(tags["segops.onnx.path"]).is_file()
    assert tags["segops.onnx.n_images"] == "10" and tags["segops.onnx.split"] == "val"
    assert float(tags["segops.onnx.max_abs_logit_diff"]) < 1e-4
    assert float(tags["segops.onnx.mean_iou_diff"]) < 1e-3
    assert int(tags["segops.onnx.opset"]) >= 17
    assert all(isinstance(v, str) for v in tags.values())


def test_parity_mean_iou_matches_the_evaluation(trained_unet, tmp_path):
    cfg, ckpt = trained_unet
    trained = load_trained(ckpt)
    parity = check_parity(trained, export_onnx(trained, tmp_path / "m.onnx"), cfg, batch_size=3)
    info = load_dataset(cfg.data, eval_split="val")
    mat, _ = score_split(
        trained, SegmentationDataset(info.root, info.split("val"), trained.transform()), 8
    )
    assert parity.mean_iou_torch == pytest.approx(nanmean(iou(mat)), abs=1e-12)
    assert parity.n_images == 10 and parity.argmax_agreement >= 0.999
    assert parity.mean_iou_diff == abs(parity.mean_iou_torch - parity.mean_iou_onnx)


def _boom(*args, **kwargs):
    raise RuntimeError("exporter exploded " + "x" * 500)


def test_failed_export_is_recorded_not_raised(trained_unet, tmp_path, monkeypatch):
    cfg, ckpt = trained_unet
    (tmp_path / "model.onnx").write_text("stale")  # a leftover must not pass for the export
    monkeypatch.setattr(torch.onnx, "export", _boom)
    tags = export_and_check(ckpt, tmp_path, cfg)
    assert tags["segops.onnx.status"] == "failed" and tags["segops.onnx.stage"] == "export"
    assert tags["segops.onnx.error"].startswith("RuntimeError: exporter exploded")
    assert len(tags["segops.onnx.error"]) == 300
    assert tags["segops.onnx.path"] == "" and not (tmp_path / "model.onnx").exists()


def test_failed_parity_and_missing_checkpoint_are_recorded(trained_unet, tmp_path, monkeypatch):
    cfg, ckpt = trained_unet
    tags = export_and_check(tmp_path / "missing.pt", tmp_path, cfg)
    assert tags["segops.onnx.status"] == "failed" and tags["segops.onnx.stage"] == "load"
    monkeypatch.setattr(ort, "InferenceSession", _boom)
    tags = export_and_check(ckpt, tmp_path, cfg)
    assert tags["segops.onnx.status"] == "failed" and tags["segops.onnx.stage"] == "parity"
    assert tags["segops.onnx.path"] == str(tmp_path / "model.onnx")  # written; kept to inspect
