from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import tiny_config
from PIL import Image
from typer.testing import CliRunner

from segops.cli.explain import explain
from segops.data.io import read_image
from segops.errors import ConfigError
from segops.explain import (
    default_layer,
    default_layer_name,
    explain_arrays,
    explain_images,
    gradcam,
    lookup_class,
)
from segops.inference import TrainedModel, load_trained
from segops.models import build_model, list_models
from segops.train.loop import train

ZOO = [
    pytest.param(e.name, marks=() if e.name in ("unet", "segnet") else pytest.mark.slow)
    for e in list_models()
]


@pytest.fixture(scope="module")
def checkpoint(shapes_root, tmp_path_factory) -> Path:
    cfg = tiny_config(shapes_root, tmp_path_factory.mktemp("run"), "train.epochs=4")
    train(cfg)
    return Path(cfg.train.out_dir) / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def images(shapes_root) -> list[Path]:
    return sorted((shapes_root / "images").glob("*.png"))[:3]


def test_heatmaps_have_the_image_size_and_are_not_constant(checkpoint, images):
    trained = load_trained(checkpoint)
    image = read_image(images[0])
    big = np.array(Image.fromarray(image).resize((56, 40)))  # not the model's input size
    for img in (image, big):
        for name in ("background", "ellipse"):
            heat = gradcam(trained, img, lookup_class(trained, name))
            assert heat.shape == img.shape[:2] and heat.dtype == np.float32
            assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)
            assert heat.std() > 0.01, name  # non-constant: some places matter more


def test_a_named_layer_is_explained_and_bad_names_are_clear(checkpoint, images):
    trained = load_trained(checkpoint)
    image = read_image(images[1])
    heat = gradcam(trained, image, 1, layer="down.1")
    assert heat.shape == image.shape[:2] and 0 <= heat.min() <= heat.max() <= 1
    with pytest.raises(ConfigError, match=r"unknown class 'dog'.*'background', 'ellipse'"):
        lookup_class(trained, "dog")
    with pytest.raises(ConfigError, match=r"no layer 'nope.3'.*'fuse.1'"):
        gradcam(trained, image, 1, layer="nope.3")


def _untrained(name: str, tmp_path: Path) -> TrainedModel:
    small = name in ("unet", "segnet")
    options = "{width: 4, depth: 2}" if small else "{}"
    cfg = tiny_config(tmp_path, tmp_path, f"model.name={name}", f"model.options={options}")
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **cfg.model.options).eval()
    return TrainedModel(model, cfg, ("bg", "a", "b"), tmp_path / "none.pt", torch.device("cpu"))


@pytest.mark.parametrize("name", ZOO)
def test_default_layer_resolves_for_every_zoo_model(name, tmp_path):
    trained = _untrained(name, tmp_path)
    layer = default_layer(name, trained.model)
    assert layer is trained.model.get_submodule(default_layer_name(name, trained.model))
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    heat = gradcam(trained, image, 1)
    assert heat.shape == (24, 40) and 0 <= heat.min() <= heat.max() <= 1


def test_explain_images_writes_overlays_at_original_size(checkpoint, images, tmp_path):
    trained = load_trained(checkpoint)
    written = explain_images(trained, images[:2], "rectangle", tmp_path / "out")
    assert [p.name for p in written] == [f"{p.stem}_gradcam_rectangle.png" for p in images[:2]]
    assert all(
        read_image(p).shape == read_image(i).shape for p, i in zip(written, images[:2], strict=True)
    )
    odd = np.zeros((20, 30, 3), np.uint8)
    (path,) = explain_arrays(trained, [("worst 1", odd)], "ellipse", tmp_path / "arr")
    assert path.name == "worst_1_gradcam_ellipse.png" and read_image(path).shape == (20, 30, 3)


def test_cli_writes_overlays_for_a_folder(checkpoint, images, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    app = typer.Typer()
    app.command()(explain)
    out = tmp_path / "expl"
    args = [str(checkpoint), str(folder), "--class", "triangle", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{p.stem}_gradcam_triangle.png" for p in images
    )
    result = CliRunner().invoke(app, [str(checkpoint), str(folder), "--class", "dog"])
    assert isinstance(result.exception, ConfigError) and "'triangle'" in str(result.exception)


def test_gradcam_works_inside_inference_mode(checkpoint, images):
    trained = load_trained(checkpoint)
    image = read_image(images[2])
    want = gradcam(trained, image, 1)
    with torch.inference_mode():  # as an evaluation loop may call it
        got = gradcam(trained, image, 1)
    np.testing.assert_allclose(got, want, atol=1e-6)
