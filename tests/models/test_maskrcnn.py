"""Mask R-CNN builders: any number of classes, torchvision's detection API, opt-in weights."""

from __future__ import annotations

import pytest
import torch

from segops.errors import ConfigError
from segops.models import build_model, list_models, model_info
from segops.models.maskrcnn import replace_predictors

NAMES = ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"]
SMALL = {"min_size": 64, "max_size": 64}


def _target(label: int) -> dict[str, torch.Tensor]:
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
    masks[0, 8:40, 16:48] = 1
    return {"boxes": torch.tensor([[16.0, 8.0, 48.0, 40.0]]), "labels": torch.tensor([label]),
            "masks": masks}  # fmt: skip


def test_registry_kinds_keep_list_models_semantic():
    semantic = {e.name for e in list_models()}
    instance = {e.name for e in list_models(kind="instance")}
    everything = {e.name for e in list_models(kind=None)}
    assert instance == set(NAMES) and not instance & semantic
    assert everything == semantic | instance and "unet" in semantic
    assert all(e.kind == "semantic" for e in list_models())
    assert model_info("maskrcnn_resnet50_fpn").kind == "instance"
    assert "torchvision" in model_info("maskrcnn_resnet50_fpn_v2").pretrained


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [2, 5])
def test_eval_returns_detections_and_train_returns_losses(name, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **SMALL)
    assert model.roi_heads.box_predictor.cls_score.out_features == num_classes
    assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == num_classes
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 64, 64)])
    assert set(out) == {"boxes", "labels", "scores", "masks"}
    assert out["masks"].shape[1:] == (1, 64, 64) and out["boxes"].shape[1:] == (4,)
    assert out["labels"].lt(num_classes).all()
    model.train()
    losses = model([torch.rand(3, 64, 64)] * 2, [_target(num_classes - 1)] * 2)
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_options_resize_and_freeze():
    model = build_model(NAMES[0], num_classes=3, min_size=96, trainable_backbone_layers=1)
    assert model.transform.min_size == (96,) and model.transform.max_size == 192
    body = dict(model.backbone.body.named_parameters())
    assert body["layer4.0.conv1.weight"].requires_grad
    assert not body["layer3.0.conv1.weight"].requires_grad
    assert not body["conv1.weight"].requires_grad


@pytest.mark.parametrize("name", NAMES)
def test_replace_predictors_adapts_a_coco_sized_model(name):
    """What `pretrained="torchvision"` does after loading the 91-class COCO weights."""
    model = build_model(name, num_classes=91, **SMALL)
    replace_predictors(model, 4)
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.out_features == 4
    assert heads.box_predictor.bbox_pred.out_features == 16
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 4


def test_pretrained_from_local_file_skips_the_mismatched_heads(tmp_path):
    source = build_model(NAMES[0], num_classes=4, **SMALL)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = build_model(NAMES[0], num_classes=2, pretrained=str(tmp_path / "w.pt"), **SMALL)
    src, dst = source.state_dict(), target.state_dict()
    same = [k for k in dst if dst[k].shape == src[k].shape]
    assert all(torch.equal(dst[k], src[k]) for k in same)
    assert "roi_heads.box_predictor.cls_score.weight" not in same


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="background"):
        build_model(NAMES[0], num_classes=1)
    with pytest.raises(ConfigError, match="trainable_backbone_layers"):
        build_model(NAMES[0], num_classes=2, trainable_backbone_layers=7)
    with pytest.raises(ConfigError, match=r"bad model.options.*min_sise"):
        build_model(NAMES[0], num_classes=2, min_sise=64)


def test_torchvision_weights_are_opt_in(monkeypatch):
    """Without `pretrained`, building never asks torchvision for weights."""
    from torchvision.models._api import WeightsEnum

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    model = build_model(NAMES[1], num_classes=3, **SMALL)  # raises if it asked for weights
    assert sum(p.numel() for p in model.parameters()) > 0


def test_semantic_loop_and_flow_refuse_what_does_not_fit(shapes_root, tmp_path):
    """The semantic loop refuses an instance model; the flow (before it validates or versions
    anything) refuses an instance model on data without instances, and a promotion metric the
    model is not evaluated with."""
    from conftest import tiny_config

    from segops.errors import ConfigError
    from segops.steps.setup import attempt_config
    from segops.train.loop import train

    cfg = tiny_config(shapes_root, tmp_path, "model.name=maskrcnn_resnet50_fpn", "model.options={}")
    with pytest.raises(ConfigError, match="instance model"):
        train(cfg)
    with pytest.raises(ConfigError, match=r"needs instance annotations.*folder_instance"):
        attempt_config(cfg, "attempt")
    semantic = tiny_config(shapes_root, tmp_path, "promotion.metric=mask_ap")
    with pytest.raises(ConfigError, match="'mask_ap' does not exist for semantic models"):
        attempt_config(semantic, "attempt")
    instance = tiny_config(
        shapes_root,
        tmp_path,
        "model.name=maskrcnn_resnet50_fpn",
        "model.options={}",
        "data.format=folder_instance",
    )
    assert attempt_config(instance, "a").train.out_dir == tmp_path.parent / "a"
