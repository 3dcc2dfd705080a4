"""`segops plan`: fingerprint, decisions with reasons, the plan file and `run --plan` layering."""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_sample
from typer.testing import CliRunner

from segops.config import load_config
from segops.data.shapes import generate_shapes
from segops.errors import ConfigError, DatasetError
from segops.plan.decide import (
    Decision,
    decide_batch,
    decide_class_weights,
    decide_epochs,
    decide_input,
    decide_model,
    make_plan,
)
from segops.plan.fingerprint import Fingerprint
from segops.plan.planfile import plan_markdown, plan_overrides, render_plan, write_plan
from segops.plan.planner import plan_dataset
from segops.plan.scale import decide_scale

TRAIN, VAL = [f"t{i}" for i in range(6)], ["v0", "v1"]


def _fp(
    height=(64, 64, 64),
    width=(64, 64, 64),
    short=64,
    same=True,
    fractions=(0.5, 0.5),
    extent=0.0,
    extents=(),
):
    """A fingerprint with only the fields a rule reads set to something other than filler."""
    return Fingerprint(
        root="ds",
        classes=tuple(f"c{i}" for i in range(len(fractions))),
        samples={"train": 80, "val": 20},
        height=height,
        width=width,
        short_side=short,
        same_size=same,
        channels=3,
        class_fractions=tuple(fractions),
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        intensity_images=80,
        object_extent=extent,
        class_extents=extents,
    )


@pytest.fixture
def rare_dataset(tmp_path) -> tuple[Path, np.ndarray]:
    """8 images of 200x160 (w x h), classes bg/big/rare (rare: 0.3% of the pixels), split
    files given; returns the root and the training images' pixels as [N, 3] in [0, 1]."""
    root, rng, pixels = tmp_path / "rare", np.random.default_rng(1), []
    for sid in TRAIN + VAL:
        image = np.stack(
            [rng.integers(lo, lo + 100, (160, 200), dtype=np.uint8) for lo in (20, 80, 150)], -1
        )
        mask = np.zeros((160, 200), np.uint8)
        mask[:60, :] = 1
        mask[100:110, 100:110] = 2
        write_sample(root, sid, image, mask)
        if sid in TRAIN:
            pixels.append(image.reshape(-1, 3) / 255.0)
    (root / "classes.txt").write_text("bg\nbig\nrare\n")
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "splits/val.txt").write_text("\n".join(VAL) + "\n")
    return root, np.concatenate(pixels)


def _config(root: Path):
    return load_config(None, [f"data.root={root}"])


@pytest.mark.parametrize(
    "height, width, short, same, crop, image_size",
    [
        ((64, 64, 64), (64, 64, 64), 64, True, None, 64),  # shapes: today's defaults
        ((96, 96, 96), (128, 128, 128), 96, True, 32, None),  # half the shorter side on CPU
        ((160, 160, 160), (200, 200, 200), 160, True, 64, None),
        ((256, 256, 256), (256, 256, 256), 256, True, 128, None),  # 256-px tiles: 128 crops
        ((300, 600, 900), (400, 800, 1200), 600, False, 256, None),  # CPU cap
        ((12, 12, 40), (16, 16, 60), 12, False, None, 16),  # small, mixed: resized whole
        ((20, 20, 300), (20, 20, 300), 20, False, None, 32),  # median under the least crop
    ],
)
def test_decide_input(height, width, short, same, crop, image_size):
    side, decisions = decide_input(_fp(height, width, short, same), "cpu")
    values = {d.key: d.value for d in decisions}
    assert values["data.crop_size"] == crop
    assert values.get("data.image_size") == image_size
    assert side == (crop or image_size)
    assert all(d.reason for d in decisions)


@pytest.mark.parametrize(
    "extent, extents, crop, factor, side",
    [
        (32, (0, 32, 34, 25, 31), 64, 0.5, 64),  # shapes at 128 px: objects ~32 px
        (16, (0, 17, 18, 13, 16), 64, None, 64),  # a quarter of the window: native
        (60, (0, 60, 10), 64, None, 64),  # the 10-px class would fall under 8 px
        (100, (0, 100, 40), 64, 0.25, 32),  # as small as allowed; the crop fits 32-px images
        (20, (0, 20), 128, None, 128),  # 256-px tiles of ~20-px nuclei: native
    ],
)
def test_decide_scale_fits_objects_in_the_window(extent, extents, crop, factor, side):
    fp = _fp((128,) * 3, (128,) * 3, 128, True, extent=extent, extents=extents)
    got, (crop_decision, scale) = decide_scale(fp, Decision("data.crop_size", crop, "native"))
    assert (scale.key, scale.value, got, crop_decision.value) == ("data.scale", factor, side, side)
    assert "typical object extent" in scale.reason


def test_large_shapes_are_planned_at_half_size(tmp_path):
    root = generate_shapes(tmp_path / "large", n=12, size=128, seed=7)
    plan = plan_dataset(_config(root), probe=False)
    assert plan.value("data.crop_size") == 64 and plan.value("data.scale") == 0.5
    assert plan.fingerprint.object_extent > 16  # 64-px windows: objects over a quarter
    cfg = load_config(write_plan(plan, tmp_path / "plan.yaml"))
    assert (cfg.data.crop_size, cfg.data.scale) == (64, 0.5)
    assert "typical object extent" in render_plan(plan)


def test_decide_input_gpu_cap():
    assert decide_input(_fp((900,) * 3, (900,) * 3, 900, True), "cuda")[0] == 512


@pytest.mark.parametrize("side, levels", [(16, 2), (32, 3), (64, 4), (128, 5), (256, 6), (512, 6)])
def test_unet_levels_keep_eight_pixels(side, levels):
    options = decide_model(side, "cpu")[1].value
    assert options == {"width": 16, "levels": levels}  # levels - 1 downsamplings
    assert side // 2 ** (levels - 1) >= 8


@pytest.mark.parametrize(
    "side, n_train, device, batch",
    [
        (64, 100, "cpu", 8),
        (128, 100, "cpu", 8),
        (256, 100, "cpu", 2),
        (128, 3, "cpu", 3),
        (512, 100, "cuda", 8),
        (256, 100, "cuda", 32),
        (64, 1, "cpu", 1),
    ],
)
def test_decide_batch(side, n_train, device, batch):
    assert decide_batch(side, n_train, device).value == batch


@pytest.mark.parametrize(
    "fractions, weights, said",
    [
        ((0.9, 0.097, 0.003), "balanced", "'c2' has 0.30%"),
        ((0.9, 0.07, 0.03), "none", "'c2' has 3.00%"),
        ((0.6, 0.3, 0.1), "none", "'c2' has 10.00%"),
        ((0.9, 0.1, 0.0), "none", "never in the training masks: c2"),
        ((0.0, 0.0), "none", "no labelled training pixels"),
    ],
)
def test_decide_class_weights(fractions, weights, said):
    decision = decide_class_weights(_fp(fractions=fractions))
    assert decision.value == weights and said in decision.reason


@pytest.mark.parametrize(
    "step, budget, epochs, clamped",
    [(0.1, 1.0, 55, False), (100.0, 1.0, 3, True), (0.001, 60.0, 300, True)],
)
def test_decide_epochs(step, budget, epochs, clamped):
    # 80 train / batch 8 = 10 steps; 20 val images cost 20 * step / 8 / 3
    decision = decide_epochs(step, 8, {"train": 80, "val": 20}, budget)
    assert decision.value == epochs
    assert ("clamped" in decision.reason) == clamped


def test_validation_on_whole_images_costs_their_area():
    # 10 steps of 0.1 s + 20 images of 4 inputs each: 20 * 4 * 0.1 / 8 / 3 = 0.333 s
    assert decide_epochs(0.1, 8, {"train": 80, "val": 20}, 1.0, val_area=4.0).value == 45


def test_plan_for_large_images_with_a_rare_class(rare_dataset, tmp_path):
    root, pixels = rare_dataset
    plan = plan_dataset(_config(root), probe=False)
    assert plan.fingerprint.samples == {"train": 6, "val": 2}
    assert plan.fingerprint.height == (160, 160, 160) and plan.fingerprint.width == (200,) * 3
    assert plan.value("data.crop_size") == 64  # half the 160-px shorter side, on a CPU
    assert "data.image_size" not in plan.values()["data"]
    assert plan.value("model.options") == {"width": 16, "levels": 4}
    # the 200-px band is large for 64-px windows, but resizing would shrink the 10-px class
    assert plan.value("data.scale") is None and "smallest class extends 10 px" in next(
        d.reason for d in plan.decisions if d.key == "data.scale"
    )
    assert plan.fingerprint.class_extents == (0.0, 60.0, 10.0)
    assert plan.value("train.class_weights") == "balanced"
    np.testing.assert_allclose(plan.value("augment.mean"), pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(plan.value("augment.std"), pixels.std(0), atol=1e-3)
    assert "train.epochs" not in plan.values()["train"]  # probe skipped
    cfg = load_config(write_plan(plan, tmp_path / "plan.yaml"))
    assert cfg.data.crop_size == 64 and cfg.train.class_weights == "balanced"
    assert cfg.data.root == root and cfg.augment.mean == tuple(plan.value("augment.mean"))


def test_shapes_keep_todays_input_size(tmp_path):
    root = generate_shapes(tmp_path / "shapes", n=40, size=64, seed=0)
    plan = plan_dataset(_config(root), probe=False)
    assert plan.value("data.crop_size") is None and plan.value("data.image_size") == 64
    cfg = load_config(write_plan(plan, tmp_path / "plan.yaml"))
    assert cfg.data.crop_size is None and cfg.data.image_size == 64
    assert cfg.train.batch_size == 8 and cfg.model.name == "unet"


def test_reasons_are_written_and_printed(rare_dataset, tmp_path):
    plan = plan_dataset(_config(rare_dataset[0]), probe=False)
    text, markdown = render_plan(plan), plan_markdown(plan)
    assert all(isinstance(d, Decision) and d.reason for d in plan.decisions)
    lines = text.splitlines()
    for decision in plan.decisions:
        key = decision.key.split(".")[1]
        at = next(i for i, line in enumerate(lines) if line.startswith(f"  {key}:"))
        assert lines[at - 1].startswith("  # "), key  # its reason, just above it
        assert f"`{decision.key}`" in markdown
    assert "rarest class 'rare'" in text and "median shorter side 160" in text
    assert "samples: train 6, val 2" in text and "probe skipped" in markdown


def test_plan_file_rejects_unknown_keys(rare_dataset, tmp_path):
    path = write_plan(plan_dataset(_config(rare_dataset[0]), probe=False), tmp_path / "p.yaml")
    path.write_text(path.read_text() + "  epocs: 3\n")  # into the last section, train
    with pytest.raises(ConfigError, match=r"p.yaml: unknown key 'train.epocs'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"p.yaml: unknown key 'train.epocs'"):
        plan_overrides(path)


def _layers(tmp_path: Path) -> tuple[Path, Path]:
    params = tmp_path / "params.yaml"
    params.write_text(
        "train: {batch_size: 4, lr: 0.01}\nmodel: {options: {width: 8, depth: 2, extra: 1}}\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text("train: {batch_size: 16, epochs: 7}\nmodel: {options: {width: 4, depth: 1}}\n")
    return params, plan


def test_layering_params_then_plan_then_set(tmp_path):
    from segops.cli.common import config, with_plan

    params, plan = _layers(tmp_path)
    cfg = config(params, with_plan(plan, ["train.batch_size=2"]))
    assert cfg.train.batch_size == 2  # --set beats the plan
    assert cfg.train.epochs == 7  # the plan beats params.yaml (and the defaults)
    assert dict(cfg.model.options) == {"width": 4, "depth": 1}  # a planned value is whole
    assert cfg.train.lr == 0.01  # params.yaml where the plan says nothing
    assert with_plan(None, ["a.b=1"]) == ["a.b=1"]


def test_run_passes_the_plan_to_the_flow(tmp_path, monkeypatch):
    from segops.cli.main import app

    params, plan = _layers(tmp_path)
    params.write_text("train: {batch_size: 4, lr: 0.01}\n")
    seen = {}
    fake = types.ModuleType("flows.retrain")
    fake.retrain = lambda **kwargs: seen.update(kwargs)
    monkeypatch.setitem(sys.modules, "flows.retrain", fake)
    monkeypatch.setattr("segops.preflight.check_stores", lambda *a: None)
    monkeypatch.setattr("segops.cli.report.print_run_result", lambda result: None)
    args = ["run", "-p", str(params), "--plan", str(plan), "--set", "train.epochs=9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = load_config(seen["params"], seen["overrides"])
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (16, 9, 0.01)


def test_missing_or_empty_dataset_names_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere: no such dataset folder"):
        plan_dataset(_config(tmp_path / "nowhere"), probe=False)
    (tmp_path / "empty/images").mkdir(parents=True)
    (tmp_path / "empty/classes.txt").write_text("bg\nfg\n")
    with pytest.raises(DatasetError, match=r"empty/images: no images"):
        plan_dataset(_config(tmp_path / "empty"), probe=False)


def test_probe_times_real_steps_and_sets_epochs(tmp_path):
    root = generate_shapes(tmp_path / "small", n=12, size=32, seed=0)
    plan = plan_dataset(_config(root), budget_minutes=0.5, probe=True)
    assert plan.step_seconds is not None and 0 < plan.step_seconds < 5
    assert 3 <= plan.value("train.epochs") <= 300
    assert "measured" in next(d.reason for d in plan.decisions if d.key == "train.epochs")


def test_make_plan_uses_the_timer_with_the_planned_model():
    calls = []

    def timer(name, options, batch, side):
        calls.append((name, options, batch, side))
        return 0.1

    plan = make_plan(_fp(), budget_minutes=1.0, timer=timer)
    assert calls == [("unet", {"width": 16, "levels": 4}, 8, 64)]
    assert plan.value("train.epochs") == 55 and plan.step_seconds == 0.1


def test_cli_writes_the_plan_and_fails_clearly(tmp_path):
    generate_shapes(tmp_path / "shapes", n=12, size=32, seed=0)
    cmd = [sys.executable, "-m", "segops.cli.main", "plan"]
    ok = subprocess.run(
        [*cmd, "shapes", "--out", "p.yaml", "--no-probe"], cwd=tmp_path, capture_output=True
    )
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["data"]["image_size"] == 32
    assert load_config(tmp_path / "p.yaml").data.root == Path("shapes")
    bad = subprocess.run([*cmd, "nowhere", "--no-probe"], cwd=tmp_path, capture_output=True)
    assert bad.returncode == 2 and b"nowhere: no such dataset folder" in bad.stderr
    assert b"Traceback" not in bad.stderr
