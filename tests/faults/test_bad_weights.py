"""Bad weight files: refused with a segops error that names the file, says what is wrong and
never suggests switching `weights_only` off; a hostile pickle never runs (issue 12, item 3)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from segops.errors import CheckpointError, ConfigError, SegopsError
from segops.inference import load_model_files
from segops.models import build_model
from segops.models.pretrained import check_pretrained_file, load_local_weights
from segops.train.checkpoint import load_checkpoint, save_checkpoint

OPTIONS = {"width": 4, "depth": 2}


class Hostile:
    """Unpickling this would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def unet() -> torch.nn.Module:
    return build_model("unet", num_classes=3, **OPTIONS)


def model_json(path: Path) -> Path:
    """A `model.json` that describes `unet()`: only the weights beside it are bad."""
    from conftest import tiny_config

    config = tiny_config(path.parent, path.parent / "run").to_dict()
    meta = {"config": config, "classes": ["background", "a", "b"], "kind": "semantic"}
    path.write_text(json.dumps(meta))
    return path


def bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)."""
    marker = tmp / "MARKER"
    hostile = tmp / "hostile.pt"
    torch.save({"conv.weight": torch.zeros(2), "payload": Hostile(marker)}, hostile)
    good = tmp / "good.pt"
    save_checkpoint({"model": unet().state_dict()}, good)
    truncated = tmp / "half.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp / "notes.pt"
    text.write_text("these are not weights\n")
    return {
        "hostile": (hostile, "refused for safety"),
        "truncated": (truncated, "truncated"),
        "text": (text, "not a PyTorch checkpoint"),
    }


def check_message(exc: BaseException, path: Path, what: str) -> None:
    message = str(exc)
    assert isinstance(exc, SegopsError)
    assert str(path) in message and what in message
    assert "weights_only" not in message


@pytest.mark.parametrize("case", ["hostile", "truncated", "text"])
def test_checkpoints_weights_and_pretrained_files_are_refused_clearly(case, tmp_path):
    path, what = bad_files(tmp_path)[case]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    check_message(info.value, path, what)
    with pytest.raises(CheckpointError) as info:  # a tampered registered weights.pt
        load_model_files(path, model_json(tmp_path / "model.json"))
    check_message(info.value, path, what)
    for load in (
        lambda: load_local_weights(unet(), str(path), "unet"),
        lambda: check_pretrained_file(str(path)),
    ):
        with pytest.raises(ConfigError) as info:
            load()
        check_message(info.value, path, what)
        assert "model.pretrained" in str(info.value)
    assert not (tmp_path / "MARKER").exists()


def test_the_hostile_pickle_is_named_and_never_runs(tmp_path):
    path, _ = bad_files(tmp_path)["hostile"]
    with pytest.raises(CheckpointError, match=r"io\.open.*nothing in it was run"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"  # a plain pickle, not written by torch.save
    raw.write_bytes(pickle.dumps(Hostile(tmp_path / "MARKER"), protocol=4))
    with pytest.raises(ConfigError, match=r"raw\.pkl: .*refused for safety") as info:
        check_pretrained_file(str(raw))
    assert "weights_only" not in str(info.value)
    assert not (tmp_path / "MARKER").exists()


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    for name, content in {"list": [1, 2, 3], "numbers": {"a": 1}}.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        with pytest.raises(ConfigError, match="not a state dict"):
            check_pretrained_file(str(path))
        with pytest.raises(CheckpointError, match="not a state dict"):
            load_model_files(path, model_json(tmp_path / "model.json"))


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path):
    wrong = tmp_path / "weights.pt"
    torch.save({"nothing.like.this": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match=r"weights\.pt: its weights do not fit model"):
        load_model_files(wrong, model_json(tmp_path / "model.json"))
    meta = tmp_path / "broken.json"
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"broken\.json: not a model description"):
        load_model_files(wrong, meta)


def test_good_files_still_load(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(unet().state_dict(), weights)
    trained = load_model_files(weights, model_json(tmp_path / "model.json"))
    assert trained.classes == ("background", "a", "b")
    check_pretrained_file(None)
    check_pretrained_file("torchvision")
    check_pretrained_file(str(weights))
    assert load_local_weights(unet(), str(weights), "unet") == []


def test_a_bad_pretrained_file_stops_the_flow_before_anything_runs(tmp_path):
    """attempt_config is the flow's first step: nothing is validated, versioned or trained."""
    from segops.config import load_config
    from segops.errors import ConfigError
    from segops.steps.setup import attempt_config

    bad = tmp_path / "weights.pt"
    bad.write_text("not a state dict")
    cfg = load_config(None, [f"model.pretrained={bad}", f"train.out_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match=r"model\.pretrained.*weights\.pt"):
        attempt_config(cfg, "attempt")
    assert not (tmp_path / "runs").exists()
