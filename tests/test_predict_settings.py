"""Per-image cost of batched inference and the predict settings a user overrides (issues 16/17):
the input-size fast path and the class ids are bit-identical to the torchvision pipeline and
torch's argmax; on CPU a batch is bounded by `CPU_BATCH_PIXELS`; `segops predict --threads
--max-tile --overlap` and a served model's config override the model's `predict` section."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from segops.cli.main import app
from segops.config import load_config
from segops.data.transforms import eval_transform, to_tv
from segops.errors import ConfigError
from segops.inference import load_model_files, predict_masks, with_predict, with_tiles
from segops.inference.batched import class_ids
from segops.inference.inputs import CPU_BATCH_PIXELS, resized_input, tile_budget
from segops.scoring.source import checkpoint_source, load_source, with_settings
from segops.serving.pyfunc import SegmentationModel, predict_settings
from segops.train.checkpoint import save_checkpoint

RNG = np.random.default_rng(5)


def _model(folder, *overrides: str) -> tuple:
    """An untrained tiny U-Net as logged files and as a checkpoint (3 classes)."""
    from segops.models import build_model

    cfg = load_config(None, ["model.options={width: 4, depth: 2}", *overrides])
    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, width=4, depth=2)
    classes = ["a", "b", "c"]
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "model.json").write_text(json.dumps({"config": cfg.to_dict(), "classes": classes}))
    state = {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes}
    state |= {"model_name": "unet", "dataset_hash": "t", "config_hash": "t"}
    save_checkpoint(state, folder / "model.pt")
    return load_model_files(folder / "weights.pt", folder / "model.json", "cpu"), folder


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Trained on whole images resized to 32 px."""
    return _model(tmp_path_factory.mktemp("whole"), "data.image_size=32")


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Trained on 32-pixel crops (native resolution: tiles)."""
    return _model(tmp_path_factory.mktemp("crops"), "data.crop_size=32")


def test_an_input_size_image_skips_the_pipeline_with_the_same_bits(whole):
    trained, _ = whole
    aug = trained.config.augment
    for shape in [(32, 32, 3), (40, 24, 3)]:  # the fast path, and a resize
        image = RNG.integers(0, 256, shape, dtype=np.uint8)
        (tensor,) = to_tv(image)
        expected = eval_transform(aug, 32)(tensor).as_subclass(torch.Tensor)
        got = resized_input(trained, image)
        assert got.dtype == expected.dtype and got.is_contiguous()
        assert torch.equal(got, expected)


def test_class_ids_are_torch_argmax_ties_and_nan_included():
    probs = torch.from_numpy(RNG.integers(0, 3, (4, 16, 16)).astype(np.float32)) / 2  # ties
    assert np.array_equal(class_ids(probs), probs.argmax(0).byte().numpy())
    probs[2, 3, 4] = float("nan")
    assert np.array_equal(class_ids(probs), probs.argmax(0).byte().numpy())


def test_on_cpu_a_batch_holds_at_most_the_cpu_pixel_budget(whole):
    trained, _ = whole
    assert tile_budget(trained) == min(1024 * 1024, CPU_BATCH_PIXELS)
    assert tile_budget(with_tiles(trained, 0)) == CPU_BATCH_PIXELS
    big = with_tiles(trained, 1024)
    images = [RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    images += [RNG.integers(0, 256, (200, 200, 3), dtype=np.uint8) for _ in range(3)]  # tiles
    seen: list[tuple[int, ...]] = []
    hook = big.model.register_forward_hook(lambda _m, a, _o: seen.append(tuple(a[0].shape)))
    try:
        masks = predict_masks(big, images, batch_size=8)
    finally:
        hook.remove()
    assert seen[0] == (3, 3, 32, 32)  # the small images: one forward
    assert all(n == 1 or n * h * w <= CPU_BATCH_PIXELS for n, _, h, w in seen)
    assert max(n for n, *_ in seen[1:]) == 1  # a 224^2 tile is over a third of the budget
    single = [predict_masks(big, [image], 1)[0] for image in images]
    assert all(np.array_equal(a, b) for a, b in zip(masks, single, strict=True))


def test_with_predict_validates_and_applies_threads(crops):
    trained, _ = crops
    before = torch.get_num_threads()
    try:
        tuned = with_predict(trained, {"threads": 1, "max_tile": 64, "overlap": 0.25})
        assert (tuned.threads, torch.get_num_threads()) == (1, 1)
        assert tuned.config.predict.max_tile == 64 and tuned.config.predict.overlap == 0.25
        assert trained.config.predict.max_tile == 1024  # the original is unchanged
        with pytest.raises(ConfigError, match="overlap"):
            with_predict(trained, {"overlap": 1.5})
        with pytest.raises(ConfigError, match="tile"):
            with_predict(trained, {"tile": 3})
    finally:
        torch.set_num_threads(before)


def test_a_source_carries_the_settings_to_where_it_loads(crops):
    _, folder = crops
    source = with_settings(checkpoint_source(folder / "model.pt"), {"max_tile": 64, "x": None})
    assert source["predict"] == {"max_tile": 64}
    assert load_source(source, "cpu").config.predict.max_tile == 64
    plain = checkpoint_source(folder / "model.pt")
    assert with_settings(plain, {"threads": None}) == plain


def test_segops_predict_flags_override_the_models_predict_section(crops, tmp_path):
    trained, folder = crops
    src = tmp_path / "in"
    src.mkdir()
    images = [RNG.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(2)]
    for k, image in enumerate(images):
        Image.fromarray(image).save(src / f"i{k}.png")
    runner, before = CliRunner(), torch.get_num_threads()
    try:
        help_text = runner.invoke(app, ["predict", "--help"], terminal_width=200).output
        assert all(f in help_text for f in ("--threads", "--max-tile", "--overlap"))
        args = [
            "predict",
            str(src),
            str(tmp_path / "out"),
            "--checkpoint",
            str(folder / "model.pt"),
        ]
        args += ["--no-overlays", "--threads", "1", "--max-tile", "64", "--overlap", "0.25"]
        seen: list[tuple[int, ...]] = []  # the network's inputs, wherever it is loaded

        def record(_module, args, _out):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[1] == 3:
                seen.append(tuple(x.shape[-2:]))

        hook = torch.nn.modules.module.register_module_forward_hook(record)
        try:
            result = runner.invoke(app, args)
        finally:
            hook.remove()
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
        assert set(seen) == {(64, 64)}  # tiles of 64, not the whole 128 x 160 image
        tuned = with_tiles(trained, 64, 0.25)
        written = [np.asarray(Image.open(tmp_path / "out" / f"i{k}_mask.png")) for k in (0, 1)]
        assert all(
            np.array_equal(m, predict_masks(tuned, [i])[0])
            for m, i in zip(written, images, strict=True)
        )
        bad = runner.invoke(app, [*args[:5], "--threads", "0"])
        assert bad.exit_code != 0 and "--threads" in bad.output
    finally:
        torch.set_num_threads(before)


def test_the_served_model_takes_them_from_its_model_config(crops, monkeypatch):
    _, folder = crops
    config = {"max_tile": 64, "overlap": 0.25, "batch_size": 2, "max_pixels": None}
    assert predict_settings(config) == {"max_tile": 64, "overlap": 0.25}
    monkeypatch.setenv("SEGOPS_SERVE_MAX_TILE", "128")  # the environment first, as batch size
    assert predict_settings(config) == {"max_tile": "128", "overlap": 0.25}
    monkeypatch.delenv("SEGOPS_SERVE_MAX_TILE")
    artifacts = {"weights": str(folder / "weights.pt"), "meta": str(folder / "model.json")}
    served = SegmentationModel()
    served.load_context(SimpleNamespace(artifacts=artifacts, model_config=config))
    assert served.trained.config.predict.max_tile == 64 and served.batch_size == 2
    with pytest.raises(ConfigError, match="max_tile"):
        bad = SimpleNamespace(artifacts=artifacts, model_config={"max_tile": -1})
        SegmentationModel().load_context(bad)
