import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import tiny_config
from torch import nn

from segops.errors import ConfigError
from segops.inference import TrainedModel
from segops.models import build_model, model_info
from segops.models.segnet import SegNet
from segops.serving.onnx import export_onnx


@pytest.mark.parametrize(
    ("size", "classes", "depth"),
    [((32, 32), 2, 2), ((40, 56), 5, 4), ((37, 29), 3, 3), ((17, 64), 1, 4)],
)
def test_logits_have_the_input_size_for_any_side(size, classes, depth):
    model = build_model("segnet", num_classes=classes, width=4, depth=depth).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, classes, *size)


def test_width_and_depth_shape_the_network():
    model = build_model("segnet", num_classes=3, width=8, depth=3)
    assert isinstance(model, SegNet) and len(model.encoder) == len(model.decoder) == 3
    assert model.encoder[0][0].out_channels == 8 and model.encoder[2][0].out_channels == 32
    assert model.decoder[-1][-3].out_channels == 8 and model.head.in_channels == 8
    assert "indices" in model_info("segnet").summary


def test_decoder_unpools_with_the_encoder_indices():
    model = build_model("segnet", num_classes=3, width=4, depth=2)
    assert model.pool.return_indices
    assert any(isinstance(m, nn.MaxUnpool2d) for m in model.modules())
    seen = []
    model.unpool.register_forward_hook(lambda mod, args, out: seen.append((args, out)))
    x = torch.randn(2, 3, 16, 20, requires_grad=True)
    model(x).sum().backward()
    assert len(seen) == 2 and x.grad is not None and torch.isfinite(x.grad).all()
    for (values, indices), out in seen:
        assert indices.dtype == torch.int64 and indices.shape == values.shape
        # Sparse: in every 2x2 window one value at most was put back (where the max was).
        windows = (out != 0).float().unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
        assert windows.max() <= 1 and (out != 0).any()
        placed = out.flatten(2).gather(2, indices.flatten(2))
        assert torch.equal(placed, values.flatten(2))


def test_bad_width_or_depth_is_a_config_error():
    with pytest.raises(ConfigError, match="segnet"):
        build_model("segnet", num_classes=2, depth=0)


def test_onnx_export_with_dynamic_sides_matches_for_odd_sizes(tmp_path):
    cfg = tiny_config(tmp_path, tmp_path, "model.name=segnet", "model.options={width: 4, depth: 3}")
    torch.manual_seed(0)
    model = build_model("segnet", num_classes=3, **cfg.model.options).eval()
    trained = TrainedModel(model, cfg, ("a", "b", "c"), tmp_path / "x.pt", torch.device("cpu"))
    session = ort.InferenceSession(str(export_onnx(trained, tmp_path / "m.onnx", dynamic_hw=True)))
    for shape in [(2, 3, 32, 32), (1, 3, 48, 64), (1, 3, 37, 29)]:
        x = torch.randn(shape)
        (got,) = session.run(["logits"], {"image": x.numpy()})
        with torch.no_grad():
            assert np.abs(got - model(x).numpy()).max() < 1e-4, shape


def test_deterministic_mode_unpools_the_same():
    model = build_model("segnet", num_classes=3, width=4, depth=2).eval()
    x = torch.randn(1, 3, 21, 18, requires_grad=True)
    want = model(x)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # plain MaxUnpool2d raises in this mode
    try:
        got = model(x)
        got.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert torch.equal(got, want) and x.grad is not None
