"""AlexNet architecture: parameter count, LRN semantics, init statistics, shapes, torchvision keys."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from alexnet_deploy.alexnet import build_model  # noqa: E402
from alexnet_deploy.errors import AlexNetDeployError  # noqa: E402


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count():
    assert count_parameters(build_model("alexnet2012", num_classes=1000)) == 62_378_344


def test_torchvision_parameter_count_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    ours = count_parameters(build_model("torchvision", num_classes=1000))
    assert ours == count_parameters(torchvision.models.alexnet(weights=None)) == 61_100_840


def test_lrn_computes_the_paper_formula():
    """b = a / (k + alpha * sum_{window of 5} a^2) ** beta with alpha=1e-4 (not alpha/5)."""
    model = build_model("alexnet2012", num_classes=10)
    lrns = [m for m in model.features if isinstance(m, torch.nn.LocalResponseNorm)]
    assert [model.features[i] for i in (2, 6)] == lrns
    x = torch.rand(1, 8, 3, 3) * 20
    sq = torch.nn.functional.pad(x.pow(2), (0, 0, 0, 0, 2, 2))
    window = sum(sq[:, i:i + 8] for i in range(5))
    expected = x / (2.0 + 1e-4 * window) ** 0.75
    torch.testing.assert_close(lrns[0](x), expected, rtol=1e-5, atol=1e-6)


def test_paper_init_statistics():
    torch.manual_seed(0)
    model = build_model("alexnet2012", num_classes=10, init="paper")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    for layer in convs + linears:
        assert abs(layer.weight.std().item() - 0.01) < 0.001
        assert abs(layer.weight.mean().item()) < 0.001
    ones = [convs[1], convs[3], convs[4], linears[0], linears[1]]
    zeros = [convs[0], convs[2], linears[2]]
    assert all(bool((layer.bias == 1).all()) for layer in ones)
    assert all(bool((layer.bias == 0).all()) for layer in zeros)


def test_default_init_is_not_paper_init():
    torch.manual_seed(0)
    conv1 = build_model("alexnet2012", num_classes=10).features[0]
    # PyTorch's kaiming-uniform default for an 11x11x3 kernel has std ~ 1/sqrt(3*363) ~ 0.030.
    assert 0.025 < conv1.weight.std().item() < 0.035
    assert not bool((build_model("alexnet2012", num_classes=10).features[4].bias == 1).all())


@pytest.mark.parametrize("arch", ["alexnet2012", "torchvision"])
@pytest.mark.parametrize("size", [63, 64, 96, 227])
def test_forward_shapes(arch, size):
    model = build_model(arch, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_paper_net_feature_map_is_6x6_at_227():
    model = build_model("alexnet2012", num_classes=10).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)


def test_too_small_input_fails():
    with pytest.raises(RuntimeError):
        build_model("alexnet2012", num_classes=10)(torch.zeros(1, 3, 40, 40))


def test_torchvision_arch_loads_torchvision_keys_exactly():
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.alexnet(weights=None).state_dict()
    model = build_model("torchvision", num_classes=1000)
    assert list(model.state_dict()) == list(reference)
    model.load_state_dict(reference, strict=True)
    model.eval()
    tv = torchvision.models.alexnet(weights=None)
    tv.load_state_dict(reference)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv.eval()(x))


def test_module_names_match_torchvision_layout():
    model = build_model("alexnet2012", num_classes=10)
    assert [name for name, _ in model.named_children()] == ["features", "avgpool", "classifier"]
    assert [k for k in model.state_dict() if k.startswith("classifier")] == [
        "classifier.1.weight", "classifier.1.bias", "classifier.4.weight", "classifier.4.bias",
        "classifier.6.weight", "classifier.6.bias"]


def _layout(model) -> list[tuple]:
    """Layer types and their shape-free settings (kernel, stride, LRN window, dropout, pool sizes)."""
    keep = ("kernel_size", "stride", "padding", "size", "alpha", "beta", "k", "p", "output_size")
    return [(type(m).__name__, *(getattr(m, a) for a in keep if hasattr(m, a)))
            for m in model.modules() if not list(m.children())]


@pytest.mark.parametrize("arch", ["alexnet2012", "torchvision"])
def test_width_scales_channels_and_hidden_size_only(arch):
    full, narrow = build_model(arch, num_classes=5), build_model(arch, num_classes=5, width=0.125)
    assert _layout(narrow) == _layout(full), "same layers, LRN, pools and dropout at any width"
    assert list(narrow.state_dict()) == list(full.state_dict())
    widths = [(m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
              for m in narrow.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    expected = {"alexnet2012": [12, 32, 48, 48, 32], "torchvision": [8, 24, 48, 32, 32]}[arch]
    assert widths == expected + [512, 512, 5]
    assert narrow.classifier[1].in_features == expected[-1] * 36
    assert 50 < count_parameters(full) / count_parameters(narrow) < 70
    with torch.no_grad():
        assert narrow.eval()(torch.zeros(2, 3, 63, 63)).shape == (2, 5)


def test_tiny_width_keeps_at_least_one_channel():
    model = build_model("alexnet2012", num_classes=3, width=0.001)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [1, 1, 1, 1, 1] and model.classifier[4].out_features == 4
    with torch.no_grad():  # LRN's window of 5 over a single channel still runs
        assert torch.isfinite(model.eval()(torch.rand(1, 3, 63, 63))).all()


@pytest.mark.parametrize("kwargs", [{"arch": "vgg"}, {"init": "xavier"}, {"num_classes": 0}, {"width": 0},
                                    {"width": 1.5}, {"width": -0.5}, {"width": "0.5"}, {"width": True}])
def test_bad_arguments_raise_family_error(kwargs):
    with pytest.raises(AlexNetDeployError):
        build_model(**kwargs)
