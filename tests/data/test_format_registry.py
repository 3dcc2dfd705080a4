"""The dataset format registry: one decorator declares a format; configs keep their hashes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from segops.config import config_hash, load_config, save_config
from segops.data import registry
from segops.data.formats import Layout, SampleRef, read_layout
from segops.data.instance_dataset import instance_format
from segops.data.io import Part, array_sha256
from segops.data.manifest import load_dataset
from segops.data.registry import FormatOptions, format_names, register_format
from segops.data.shapes import generate_shapes
from segops.errors import ConfigError
from segops.validation import validate_dataset

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"

# config_hash values computed with the code before the registry existed (flat data keys only)
HASH_PARAMS = "8952fbe6cfc6ed58c95874ff28d878db0e12867386172a47bfeec7817a796c3f"
HASH_NIFTI = "20e315fd839a448e75bd942ce2084b576347a0ad8eb91a004387c58064049024"
HASH_NIFTI_WINDOW = "910b49177d147e81323f25a08634b982afd15c1fa072bed47ab1473a49e71a29"
HASH_COCO = "c534b6d8d90ef14a0155aef03f1fe532bf4e4d7c03facf98b59362d90040755d"
HASH_FOLDER_WITH_WINDOW = "290f2a830992a4385e0c20d05debec6afa183b5f5a0cd0a365277fb3e0ffbd8e"
NIFTI_FLAT = ["data.format=nifti", "data.ct_window=[40,400]", "data.nifti_skip_empty=true"]
NIFTI_NEW = ["data.format=nifti", "data.options={ct_window: [40, 400], skip_empty: true}"]


@pytest.mark.parametrize(
    ("params", "overrides", "expected"),
    [
        (PARAMS, [], HASH_PARAMS),
        (None, [], HASH_PARAMS),
        (PARAMS, NIFTI_FLAT, HASH_NIFTI),
        (PARAMS, NIFTI_NEW, HASH_NIFTI),
        (None, ["data.format=nifti", "data.ct_window=[40,400]"], HASH_NIFTI_WINDOW),
        (None, ["data.format=nifti", "data.options.ct_window=[40,400]"], HASH_NIFTI_WINDOW),
        (PARAMS, ["data.format=coco", "data.coco_image_dir=images"], HASH_COCO),
        (PARAMS, ["data.format=coco", "data.options.image_dir=images"], HASH_COCO),
        (None, ["data.ct_window=[40,400]"], HASH_FOLDER_WITH_WINDOW),
    ],
)
def test_config_hash_is_unchanged_whatever_the_spelling(params, overrides, expected):
    assert config_hash(load_config(params, overrides)) == expected


def test_dump_keeps_the_flat_keys_and_round_trips(tmp_path):
    cfg = load_config(PARAMS, NIFTI_NEW)
    data = cfg.to_dict()["data"]
    assert list(data)[-3:] == ["num_workers", "ct_window", "nifti_skip_empty"]
    assert (data["ct_window"], data["nifti_skip_empty"]) == ([40.0, 400.0], True)
    assert "options" not in data and "coco_image_dir" not in data
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and config_hash(again) == HASH_NIFTI
    assert again.data.options.ct_window == (40.0, 400.0) and again.data.options.skip_empty
    assert again.data.ct_window == (40.0, 400.0)  # the deprecated attribute still reads


def test_another_formats_flat_key_is_kept():
    cfg = load_config(None, ["data.coco_image_dir=images"])  # data.format is folder
    assert cfg.data.options == FormatOptions() and cfg.data.coco_image_dir == "images"
    assert cfg.to_dict()["data"]["coco_image_dir"] == "images"
    at_default = load_config(None, ["data.coco_image_dir=images/{split}"])
    assert "coco_image_dir" not in at_default.to_dict()["data"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.format=nope"], r"data.format: .*unknown dataset format 'nope'; choose one of \["),
        (["data.format=coco", "data.options.dir=x"], r"has no option 'dir'; it takes \['image_dir"),
        (["data.options.image_dir=x"], r"data.options: format 'folder' has no option 'image_dir'"),
        (["data.format=nifti", "data.options.ct_window=[40, 0]"], "width must be positive"),
        (["data.ct_window=[40, 0]"], r"data.ct_window \(an option of format 'nifti'\).*positive"),
        (["data.format=coco", "data.coco_image_dir=a", "data.options.image_dir=b"], "not both"),
    ],
)
def test_bad_format_or_options_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unknown_format_lists_every_registered_one():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["data.format=nope"])
    for name in ("cityscapes", "coco", "folder", "folder_instance", "nifti", "voc"):
        assert repr(name) in str(err.value)


def test_registry_knows_instances_and_refuses_twice():
    assert format_names(instances=True) == ["coco", "folder_instance"]
    assert {"folder", "voc", "cityscapes", "nifti"} <= set(format_names(instances=False))
    with pytest.raises(ValueError, match=r"'folder' has no instances; use one of \['coco'"):
        instance_format("folder")
    with pytest.raises(ValueError, match="registered twice"):
        register_format("folder")(lambda root, options: None)


def test_config_import_stays_light():
    code = (
        "import sys, segops.config, segops.cli.main; "
        "print(sorted(m for m in ('numpy', 'nibabel', 'pycocotools', 'torch', "
        "'segops.data.formats') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_options_follow_a_format_changed_by_model_copy(tmp_path):
    """`segops export --check` swaps data.format with model_copy (no validation): the reader
    gets that format's options, legacy keys kept on the config included."""
    root = generate_shapes(tmp_path, n=6, size=32, seed=1, instances="coco", val_fraction=0.34)
    trained = load_config(None, ["data.coco_image_dir=images"]).data  # a folder config
    data = trained.model_copy(update={"format": "coco", "root": root})
    assert len(read_layout(root, "coco", data).samples) == 6


# --- a new format is one module and one decorator: a folder of .npy pairs -------------------


class NpyOptions(FormatOptions):
    mask_dir: str = "masks"
    classes: tuple[str, ...] = ("background", "box")


def read_npy_sample(root: Path, ref: SampleRef) -> tuple[Part, Part]:
    parts = []
    for path in (root / ref.image, root / ref.mask):
        try:
            array = np.load(path)
        except OSError as exc:
            parts.append(Part("", None, f"cannot be read ({exc})"))
            continue
        parts.append(Part(array_sha256(array), array, None))
    return parts[0], parts[1]


def read_npy_layout(root: Path, options: NpyOptions) -> Layout:
    """Pairs images/<id>.npy (HxWx3 uint8) and <mask_dir>/<id>.npy (HxW uint8)."""
    samples = [
        SampleRef(p.stem, p.relative_to(root), Path(options.mask_dir) / p.name, reader="npy")
        for p in sorted((root / "images").glob("*.npy"))
    ]
    return Layout(root, list(options.classes), samples, False)


@pytest.fixture
def npy_format(monkeypatch):
    """The toy format registered for one test (the registry is restored afterwards)."""
    format_names()  # the built-in formats first, so the copy holds them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_format("npy", options=NpyOptions, read_sample=read_npy_sample)(read_npy_layout)


@pytest.fixture
def npy_root(tmp_path) -> Path:
    root = tmp_path / "npy"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(8):
        image = np.full((12, 16, 3), 20 * i, np.uint8)
        mask = np.zeros((12, 16), np.uint8)
        mask[2:6, 3 : 3 + i + 1] = 1  # sample i: a 4 x (i+1) box
        np.save(root / "images" / f"s{i}.npy", image)
        np.save(root / "labels" / f"s{i}.npy", mask)
    return root


def test_a_new_format_loads_validates_and_dumps(npy_format, npy_root, tmp_path):
    base = [f"data.root={npy_root}", "data.format=npy", "data.val_fraction=0.25"]
    report_dir = f"validation.report_dir={tmp_path / 'report'}"
    overrides = [*base, "data.options.mask_dir=labels", report_dir]
    cfg = load_config(None, overrides)
    assert cfg.data.options == NpyOptions(mask_dir="labels")
    info = load_dataset(cfg.data)
    assert info.classes == ("background", "box") and len(info.manifest) == 8
    assert info.split("train").shape[0] == 6 and set(info.manifest["reader"]) == {"npy"}
    boxes = 4 * sum(range(1, 9))
    assert info.class_pixels().tolist() == [8 * 12 * 16 - boxes, boxes]
    report = validate_dataset(cfg)
    assert report.success, report.problem_summary()
    dumped = cfg.to_dict()["data"]
    assert dumped["options"] == {"mask_dir": "labels"}  # defaults (classes) left out
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["data"]["format"] == "npy"
    assert config_hash(load_config(tmp_path / "c.yaml")) == config_hash(cfg)
    default = load_config(None, [*base, report_dir])
    assert "options" not in default.to_dict()["data"]
    assert config_hash(default) != config_hash(cfg)


def test_a_new_formats_bad_option_names_its_options(npy_format):
    takes = r"format 'npy' has no option 'dir'; it takes \['mask_dir', 'classes'\]"
    with pytest.raises(ConfigError, match=takes):
        load_config(None, ["data.format=npy", "data.options.dir=x"])
