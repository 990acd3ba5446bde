"""Parameter transfer on real offline weights: what is copied must be bit-exact, what is adapted must be right."""

import pytest
import torch

from xfer.errors import XferError
from xfer.models import build_image_model
from xfer.sources import load_source, resolve_source
from xfer.transfer import ADAPTED, COPIED, REINIT, transfer


@pytest.fixture(scope="module")
def mobilenet():
    return load_source(resolve_source("mobilenet_v2"))


def test_mobilenet_v2_every_backbone_tensor_copied_bit_exact(mobilenet):
    model = build_image_model("mobilenetv2_100", num_classes=7)
    head_before = model.head.weight.detach().clone()
    report = transfer(mobilenet.state_dict, model)

    source = list(mobilenet.state_dict.values())
    target = [(k, v) for k, v in model.state_dict().items() if k.startswith("backbone.")]
    assert len(target) == len(source) - 2  # all but the ImageNet classifier
    for (name, tensor), src in zip(target, source):
        assert torch.equal(tensor, src), name
    assert report.backbone_fraction == 1.0
    assert report.count(COPIED) == len(target)
    # The ImageNet classifier goes nowhere; the new head keeps its fresh initialisation and the task's shape.
    assert set(report.unused_source) == {"classifier.1.weight", "classifier.1.bias"}
    assert model.head.weight.shape == (7, 1280)
    assert torch.equal(model.head.weight, head_before)
    heads = [r for r in report.rows if r.target.startswith("head.")]
    assert {r.status for r in heads} == {REINIT}


def test_transferred_mobilenet_matches_source_network_outputs(mobilenet):
    """Same features as the source network itself: the transfer changed nothing but the head."""
    import torchvision

    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(mobilenet.state_dict)
    reference.classifier = torch.nn.Identity()
    model = build_image_model("mobilenetv2_100", num_classes=3)
    transfer(mobilenet.state_dict, model)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model.eval().embed(x), reference.eval()(x), atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1"])
def test_efficientnet_lite_maps_by_position(name):
    src = load_source(resolve_source(name))
    model = build_image_model(src.spec.arch, num_classes=4)
    report = transfer(src.state_dict, model)
    assert report.method == "position"  # no names in common: the wheel uses `_conv_stem`, timm `conv_stem`
    source = list(src.state_dict.values())
    target = [v for k, v in model.state_dict().items() if k.startswith("backbone.")]
    for i, (t, s) in enumerate(zip(target, source)):
        assert torch.equal(t, s), i
    assert report.backbone_fraction == 1.0
    assert set(report.unused_source) == {"_fc.weight", "_fc.bias"}


def test_grey_input_conv_is_the_sum_of_rgb_filters(mobilenet):
    model = build_image_model("mobilenetv2_100", num_classes=2, in_chans=1)
    report = transfer(mobilenet.state_dict, model)
    rgb = mobilenet.state_dict["features.0.0.weight"]
    assert model.backbone.conv_stem.weight.shape == (32, 1, 3, 3)
    assert torch.allclose(model.backbone.conv_stem.weight, rgb.sum(1, keepdim=True))
    row = next(r for r in report.rows if r.target == "backbone.conv_stem.weight")
    assert row.status == ADAPTED and "3->1" in row.reason
    # A grey image through the adapted net equals that image repeated over RGB through the original net.
    rgb_model = build_image_model("mobilenetv2_100", num_classes=2)
    transfer(mobilenet.state_dict, rgb_model)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.eval().embed(x), rgb_model.eval().embed(x.repeat(1, 3, 1, 1)), atol=1e-4)


def test_multi_channel_input_is_adapted(mobilenet):
    model = build_image_model("mobilenetv2_100", num_classes=2, in_chans=5)
    report = transfer(mobilenet.state_dict, model)
    assert model.backbone.conv_stem.weight.shape == (32, 5, 3, 3)
    assert report.count(ADAPTED) == 1


def test_names_match_after_stripping_wrapper_prefixes():
    source_model = build_image_model("resnet10t", num_classes=5)
    state = {f"module.{k}": v.clone() for k, v in source_model.backbone.state_dict().items()}
    target = build_image_model("resnet10t", num_classes=3)
    report = transfer(state, target)
    assert report.method == "name"
    assert report.backbone_fraction == 1.0
    for k, v in source_model.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[k], v)


def test_vit_position_embedding_resized_for_another_resolution():
    pytest.importorskip("timm")
    src = build_image_model("vit_tiny_patch16_224", num_classes=2)
    state = {k[len("backbone."):]: v for k, v in src.state_dict().items() if k.startswith("backbone.")}
    target = build_image_model("vit_tiny_patch16_224", num_classes=2, image_size=112)
    report = transfer(state, target)
    row = next(r for r in report.rows if r.target == "backbone.pos_embed")
    assert row.status == ADAPTED and "197->50" in row.reason
    assert target.backbone.pos_embed.shape == (1, 50, 192)
    # The class token's embedding is carried over unchanged.
    assert torch.equal(target.backbone.pos_embed[:, 0], state["pos_embed"][:, 0])


def test_wrong_source_for_the_architecture_is_an_error(mobilenet):
    model = build_image_model("resnet10t", num_classes=2)
    with pytest.raises(XferError, match="does not fit this architecture"):
        transfer(mobilenet.state_dict, model)
    report = transfer(mobilenet.state_dict, model, allow_partial=True)
    assert report.backbone_fraction < 0.5
    assert "position mapping refused" in next(r.reason for r in report.rows if r.status == REINIT)


def test_report_serialises_every_tensor(mobilenet):
    model = build_image_model("mobilenetv2_100", num_classes=2)
    d = transfer(mobilenet.state_dict, model).to_dict()
    assert len(d["tensors"]) == len(model.state_dict())
    assert d["summary"]["backbone_fraction"] == 1.0
