"""Every network by name builds, and its flat functional form is the module itself."""
from __future__ import annotations

import pytest
import torch

from trajdistill.models import MODEL_NAMES, FlatModel, ModelError, build_model

NAMES = ["ConvNet", "ConvNetD2", "ConvNetD4", "ConvNetW32", "ConvNetBN", "ConvNetLN", "ConvNetIN",
         "ConvNetGN", "ConvNetNN", "ConvNetAS", "ConvNetAR", "ConvNetAL", "ConvNetNP", "ConvNetMP",
         "ConvNetAP", "MLP", "LeNet", "AlexNet", "VGG11", "VGG11BN", "ResNet18", "ResNet18BN",
         "ResNet18_AP", "ResNet18BN_AP"]
SHAPES = [(3, 32, 32), (1, 28, 28), (1, 8, 8)]


def test_every_listed_family_is_covered():
    listed = {n for n in MODEL_NAMES if "{" not in n}
    assert listed <= set(NAMES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_flat_call_equals_module(name, shape):
    torch.manual_seed(0)
    c, h, w = shape
    try:
        module = build_model(name, c, 10, (h, w))
    except ModelError as e:  # only where the image is too small for the depth
        assert (h, w) == (8, 8) and name == "ConvNetD4", e
        assert "depth" in str(e)
        return
    flat = FlatModel.wrap(module)
    theta = flat.flat_params()
    assert theta.numel() == flat.num_params == sum(p.numel() for p in module.parameters())
    x = torch.randn(3, c, h, w)
    with torch.no_grad():
        expected = module(x)
        got = flat(theta, x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # a different flat vector really changes the function, and load_flat makes it the module's
    theta2 = theta + 0.01 * torch.randn_like(theta)
    with torch.no_grad():
        out2 = flat(theta2, x)
        flat.load_flat(theta2)
        torch.testing.assert_close(module(x), out2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out2, expected)


def test_demo_network_on_digits():
    m = build_model("ConvNetD2", 1, 10, (8, 8))
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_batch_independent():
    assert FlatModel.wrap(build_model("ConvNet", 3, 10, (32, 32))).batch_independent
    assert FlatModel.wrap(build_model("ConvNetLN", 3, 10, (32, 32))).batch_independent
    assert not FlatModel.wrap(build_model("ConvNetBN", 3, 10, (32, 32))).batch_independent
    assert not FlatModel.wrap(build_model("ResNet18BN", 3, 10, (32, 32))).batch_independent


@pytest.mark.parametrize("name", ["ConvNetXY", "ResNet50", "convnet", "ConvNetD"])
def test_unknown_name_is_a_clear_error(name):
    with pytest.raises(ModelError, match="unknown model"):
        build_model(name, 3, 10, (32, 32))


def test_instance_norm_is_group_norm_one_group_per_channel():
    m = build_model("ConvNet", 3, 10, (32, 32))
    norm = m.features[1]
    assert isinstance(norm, torch.nn.GroupNorm) and norm.num_groups == norm.num_channels == 128


# ----------------------------------------------------------------------------- MNIST padding

@pytest.mark.parametrize("name", ["ConvNet", "ConvNetBN", "ConvNetLN", "ConvNetD4"])
def test_mnist_convnet_pads_28x28_to_the_cifar_shapes(name):
    """As the reference: the first convolution pads grey 28x28 inputs by 3, so the network
    has the 32x32 network's parameter shapes and computes what that network computes on the
    image zero-padded by 2 on each side."""
    torch.manual_seed(0)
    m28 = build_model(name, 1, 10, (28, 28))
    m32 = build_model(name, 1, 10, (32, 32))
    assert m28.features[0].padding == (3, 3) and m32.features[0].padding == (1, 1)
    assert [p.shape for p in m28.parameters()] == [p.shape for p in m32.parameters()]
    if name == "ConvNet":
        assert m28.classifier.in_features == 128 * 4 * 4
    m32.load_state_dict(m28.state_dict())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m28(x), m32(torch.nn.functional.pad(x, (2, 2, 2, 2))),
                                   rtol=1e-5, atol=1e-5)


def test_other_grey_sizes_keep_padding_one():
    assert build_model("ConvNet", 1, 10, (32, 32)).features[0].padding == (1, 1)
    assert build_model("ConvNetD2", 1, 10, (8, 8)).features[0].padding == (1, 1)
    assert build_model("ConvNet", 3, 10, (28, 28)).features[0].padding == (1, 1)
