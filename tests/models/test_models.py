from pathlib import Path

import pytest
import torch

from segops.errors import ConfigError
from segops.models import build_model, list_models, model_info

NAMES = [entry.name for entry in list_models()]


def test_zoo_has_the_issue_models():
    assert set(NAMES) >= {
        "unet",
        "fcn_resnet50",
        "deeplabv3_resnet50",
        "deeplabv3_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large",
    }


@pytest.mark.parametrize("name", NAMES)
def test_every_model_maps_images_to_logits_and_learns(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    for module in model.modules():  # the same weights must give the same loss on the batch
        if isinstance(module, torch.nn.Dropout | torch.nn.Dropout2d):
            module.eval()
    x, y = torch.randn(2, 3, 40, 56), torch.randint(0, 3, (2, 40, 56))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.01)  # Adam's first steps jolt a fresh ResNet-50
    losses = []
    for _ in range(4):
        optimiser.zero_grad()
        out = model(x)
        assert out.shape == (2, 3, 40, 56)
        loss = torch.nn.functional.cross_entropy(out, y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        optimiser.step()
        losses.append(loss.item())
    final = torch.nn.functional.cross_entropy(model(x), y).item()
    assert final < losses[0], (losses, final)  # 4 steps on one batch lower its loss


def test_unet_width_depth_and_odd_sizes():
    model = build_model("unet", num_classes=7, width=4, depth=3)
    assert model(torch.randn(1, 3, 37, 29)).shape == (1, 7, 37, 29)
    assert model.stem[0].out_channels == 4 and len(model.down) == 3


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown model 'unet3'.*'deeplabv3_resnet50'.*'unet'"):
        build_model("unet3", num_classes=2)


def test_bad_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model 'unet': bad model.options"):
        build_model("unet", num_classes=2, widht=3)


@pytest.mark.parametrize("name", ["unet", "lraspp_mobilenet_v3_large"])
def test_pretrained_from_local_file_skips_the_mismatched_head(tmp_path, name):
    source = build_model(name, num_classes=5)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = build_model(name, num_classes=2, pretrained=str(tmp_path / "w.pt"))
    src, dst = source.state_dict(), target.state_dict()
    same = [k for k in dst if dst[k].shape == src[k].shape]
    assert all(torch.equal(dst[k], src[k]) for k in same)
    assert len(same) < len(dst)  # the classifier head differs in shape and was skipped


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("unet", num_classes=2, pretrained=str(tmp_path / "missing.pt"))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"no tensor in .* fits model 'unet'"):
        build_model("unet", num_classes=2, pretrained=str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="has no torchvision weights"):
        build_model("unet", num_classes=2, pretrained="torchvision")


def test_torchvision_models_offer_torchvision_weights():
    assert "torchvision" in model_info("deeplabv3_resnet50").pretrained
    assert "torchvision" not in model_info("unet").pretrained


def test_the_shipped_params_take_any_model_name():
    """params.yaml leaves model.options empty, so `--set model.name=X` works for every model;
    options a model does not take fail before anything runs, naming the fix."""
    from segops.config import load_config
    from segops.train.run import check_model_config

    params = Path(__file__).parents[2] / "params.yaml"
    for entry in list_models(kind=None):
        fmt = "folder_instance" if entry.kind == "instance" else "folder"
        check_model_config(load_config(params, [f"model.name={entry.name}", f"data.format={fmt}"]))
    wrong = load_config(params, ["model.name=deeplabv3_resnet50", "model.options={width: 8}"])
    with pytest.raises(ConfigError, match=r"bad model.options .*--set 'model.options=\{\}'"):
        check_model_config(wrong)


def _shape(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize(("depth", "levels"), [(4, 5), (3, 4), (2, 3), (0, 1)])
def test_unet_old_depth_builds_the_network_of_levels_depth_plus_one(depth, levels):
    """U-Net's `levels` counts resolution levels; the older `depth` (downsamplings) is still
    read, so a recorded config with `depth: d` builds the very network of `levels: d + 1`."""
    old = build_model("unet", num_classes=3, width=4, depth=depth)
    new = build_model("unet", num_classes=3, width=4, levels=levels)
    assert _shape(old) == _shape(new)
    assert sum(p.numel() for p in old.parameters()) == sum(p.numel() for p in new.parameters())
    assert len(new.down) == levels - 1
    default = build_model("unet", num_classes=3)  # options {}: the network of `depth: 4`
    assert _shape(default) == _shape(build_model("unet", num_classes=3, depth=4))


def test_unet_levels_and_depth_together_or_no_level_is_a_config_error():
    with pytest.raises(ConfigError, match=r"levels or depth, not both.*depth d is levels d \+ 1"):
        build_model("unet", num_classes=2, levels=4, depth=3)
    with pytest.raises(ConfigError, match=r"levels must be >= 1"):
        build_model("unet", num_classes=2, levels=0)


def test_segnet_levels_is_its_depth():
    old = build_model("segnet", num_classes=3, width=4, depth=3)
    assert _shape(old) == _shape(build_model("segnet", num_classes=3, width=4, levels=3))
    assert len(old.encoder) == 3
    with pytest.raises(ConfigError, match=r"same option; got 3 and 2"):
        build_model("segnet", num_classes=3, levels=3, depth=2)


def test_old_config_with_depth_keeps_its_hash():
    """Options are recorded as written: a config with `depth` hashes as it did before `levels`
    existed (the hash was computed before the change) and still builds its network."""
    from segops.config import config_hash, load_config
    from segops.models import check_options

    cfg = load_config(None, ["model.options={width: 4, depth: 2}"])
    assert config_hash(cfg) == "0e328999c62fc5a5e65c86045f9bfc122144475ee6ac849cb342b50bbea967ef"
    check_options(cfg.model.name, dict(cfg.model.options))
