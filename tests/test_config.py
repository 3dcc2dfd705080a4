from pathlib import Path

import pytest
import yaml

from segops.config import apply_overrides, config_hash, load_config, save_config
from segops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_file_is_valid():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.model.name == "unet"
    assert cfg.data.root == Path("data/shapes")


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epochz'") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_type_is_rejected_with_key_and_value():
    with pytest.raises(ConfigError, match=r"train.epochs: .*integer.*'three'"):
        load_config(None, ["train.epochs=three"])


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(None, ["trian.epochs=3"])


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["train.epochs=3", "train.lr=0.01", "model.options={width: 8}"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.options) == (3, 0.01, {"width": 8})


@pytest.mark.parametrize("bad", ["train.epochs", "=3", "train.epochs=[1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="override"):
        load_config(None, [bad])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_saved_config_round_trips_and_hash_tracks_changes(tmp_path):
    cfg = load_config(None, ["train.epochs=7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, ["train.epochs=8"])) != config_hash(cfg)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["epochs"] == 7


def test_missing_params_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such params file"):
        load_config(tmp_path / "nope.yaml")


def test_negative_class_weight_rejected():
    with pytest.raises(ConfigError, match="class_weights"):
        load_config(None, ["train.class_weights=[1, -1]"])


def test_defaults_without_a_params_file():
    cfg = load_config()
    assert (cfg.data.root, cfg.data.format) == (Path("data/shapes"), "folder")
    assert (cfg.data.image_size, cfg.data.crop_size) == (64, None)
    assert (cfg.model.name, cfg.model.pretrained, cfg.model.options) == ("unet", None, {})
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (25, 8, 0.003)
    assert (cfg.train.loss, cfg.train.schedule, cfg.train.seed) == ("ce_dice", "cosine", 0)
    assert cfg.train.deterministic is False and cfg.evaluate.split == "val"
    assert (cfg.versioning.path, cfg.versioning.remote) == (Path("data"), "local")
    assert cfg.tracking.uri == "sqlite:///mlflow/mlflow.db"
    assert (cfg.promotion.metric, cfg.promotion.min_delta) == ("auto", 0.005)
    assert (cfg.promotion.confidence, cfg.promotion.max_class_drop) == (0.95, 0.02)


@pytest.mark.parametrize(
    ("root", "name"), [("data/shapes", "segops-shapes"), ("/mnt/My Scans", "segops-my-scans")]
)
def test_auto_model_name_is_derived_from_the_dataset_folder(root, name):
    assert load_config(None, [f"data.root={root}"]).promotion.model_name == name
    explicit = load_config(None, [f"data.root={root}", "promotion.model_name=mine"])
    assert explicit.promotion.model_name == "mine"


def test_config_hash_ignores_where_files_live():
    a = load_config(None, ["data.root=/a", "train.out_dir=/x", "data.cache=false"])
    b = load_config(None, ["data.root=/b", "train.out_dir=/y"])
    assert config_hash(a) == config_hash(b)
