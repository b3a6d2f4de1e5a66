"""AlexNet: the single-tower 2012 paper network and torchvision's variant.

``alexnet2012`` follows Krizhevsky, Sutskever & Hinton (2012), "ImageNet Classification with Deep
Convolutional Neural Networks", as one tower (the paper split it over two GPUs only for memory):

    227x227 -> conv1 96@11x11/4 pad 2 -> ReLU -> LRN -> maxpool 3/2
            -> conv2 256@5x5 pad 2   -> ReLU -> LRN -> maxpool 3/2
            -> conv3 384@3x3 -> ReLU -> conv4 384@3x3 -> ReLU -> conv5 256@3x3 -> ReLU -> maxpool 3/2
            -> adaptive avg-pool to 6x6 -> [dropout, FC 4096, ReLU, dropout, FC 4096, ReLU, FC classes]

It has exactly 62,378,344 parameters for 1000 classes.

LRN: the paper writes ``b = a / (k + alpha * sum_{j in window} a_j^2) ** beta`` with n=5,
alpha=1e-4, beta=0.75, k=2. ``torch.nn.LocalResponseNorm`` (like Caffe and the ONNX ``LRN`` op)
divides alpha by the window size: ``b = a / (k + alpha / n * sum a_j^2) ** beta``. To compute the
paper's formula we therefore pass ``alpha = 1e-4 * 5 = 5e-4`` to the torch module; the ONNX
export then carries the same (ONNX-convention) alpha, so every backend agrees. The LRN layers stay
separate ``nn.LocalResponseNorm`` modules in ``features`` because the exporter swaps them for an
export-friendly equivalent.

``torchvision`` is torchvision's ``alexnet`` (64-192-384-256-256, no LRN), so its state_dict keys
are exactly torchvision's and a downloaded torchvision weights file loads.

Both pool the last feature map to 6x6 with ``AdaptiveAvgPool2d``, so any input from 63 to 512 px
runs (at 227/224 px the map already is 6x6 and the pool is the identity).

``width`` (0 < width <= 1) multiplies every conv layer's channels and the FC hidden size (4096),
keeping the layer structure (LRN, pools, dropout, the 6x6 pool): the same graph for tiny devices,
fast experiments and tests. 1.0 is the paper's network (for ``torchvision``, torchvision's own class).
"""

from __future__ import annotations

from torch import nn

from alexnet_deploy.errors import AlexNetDeployError

ARCHS = ("alexnet2012", "torchvision")
INITS = ("default", "paper")

# Paper hyper-parameters of local response normalization (section 3.3).
LRN_SIZE, LRN_ALPHA_PAPER, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0
# torch divides alpha by the window size; multiply it back so the paper's formula is computed.
LRN_ALPHA_TORCH = LRN_ALPHA_PAPER * LRN_SIZE

# Default (resize, crop) eval preprocessing per architecture: the paper uses 256 -> 227 crops
# (we resize to 259 so the 227 crop keeps the ImageNet 224/256 ratio); torchvision 256 -> 224.
DEFAULT_INPUT = {"alexnet2012": (259, 227), "torchvision": (256, 224)}

# Output channels of the five conv layers at width 1.0, and the FC hidden size.
CONV_CHANNELS = {"alexnet2012": (96, 256, 384, 384, 256), "torchvision": (64, 192, 384, 256, 256)}
HIDDEN = 4096


def _scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1 (LRN's window simply covers fewer channels)."""
    return max(1, round(channels * width))


def _channels(arch: str, width: float) -> tuple[int, ...]:
    return tuple(_scaled(c, width) for c in CONV_CHANNELS[arch])


class _AlexNetBase(nn.Module):
    """features -> 6x6 adaptive pool -> flatten -> classifier (torchvision's forward)."""

    def __init__(self, arch: str, num_classes: int, dropout: float, width: float) -> None:
        super().__init__()
        self.width = width  # save_checkpoint records it, so loading rebuilds this model
        channels = _channels(arch, width)
        self.features = _features(channels, lrn=arch == "alexnet2012")
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = _classifier(num_classes, dropout, channels[-1], _scaled(HIDDEN, width))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = x.flatten(1)
        return self.classifier(x)


class AlexNet2012(_AlexNetBase):
    """The 2012 paper AlexNet, single tower, with LRN after conv1 and conv2."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, width: float = 1.0) -> None:
        super().__init__("alexnet2012", num_classes, dropout, width)


class NarrowTorchvisionAlexNet(_AlexNetBase):
    """torchvision's AlexNet layout (same modules and state_dict keys) below width 1.0, where
    torchvision's own class cannot go."""

    def __init__(self, num_classes: int, dropout: float, width: float) -> None:
        super().__init__("torchvision", num_classes, dropout, width)


def _features(channels: tuple[int, ...], lrn: bool) -> nn.Sequential:
    """conv1..conv5 with their ReLUs and the three max-pools; with ``lrn``, the paper's LRN after the
    ReLUs of conv1 and conv2. Module indices are torchvision's (without LRN) and the paper model's."""
    c1, c2, c3, c4, c5 = channels

    def norm() -> list[nn.Module]:
        return [nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA_TORCH, beta=LRN_BETA, k=LRN_K)] if lrn else []

    return nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(inplace=True), *norm(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _classifier(num_classes: int, dropout: float, channels: int, hidden: int) -> nn.Sequential:
    # Same indices as torchvision's classifier (1, 4, 6 are the Linear layers).
    return nn.Sequential(
        nn.Dropout(p=dropout),
        nn.Linear(channels * 6 * 6, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    )


def build_model(arch: str = "alexnet2012", num_classes: int = 1000, init: str = "default",
                dropout: float = 0.5, width: float = 1.0) -> nn.Module:
    """Build an AlexNet.

    arch: ``"alexnet2012"`` (paper, with LRN) or ``"torchvision"`` (torchvision's keys).
    init: ``"default"`` (PyTorch's layer defaults, which train well at small scale) or
    ``"paper"`` (weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers).
    width: multiplier of the conv channels and the FC hidden size, 0 < width <= 1 (1.0: the paper's).
    """
    if arch not in ARCHS:
        raise AlexNetDeployError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if init not in INITS:
        raise AlexNetDeployError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise AlexNetDeployError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 1:
        raise AlexNetDeployError(f"width must be a number with 0 < width <= 1 (1.0 is the paper's network), "
                                 f"got {width!r}")
    if arch == "alexnet2012":
        model = AlexNet2012(num_classes=num_classes, dropout=dropout, width=float(width))
    elif width != 1.0:
        model = NarrowTorchvisionAlexNet(num_classes=num_classes, dropout=dropout, width=float(width))
    else:
        from torchvision.models import AlexNet

        model = AlexNet(num_classes=num_classes, dropout=dropout)
    if init == "paper":
        paper_init_(model)
    return model


def paper_init_(model: nn.Module) -> nn.Module:
    """The paper's initialisation (section 5), in place.

    Weights ~ N(0, 0.01) in every layer; biases 1 in the 2nd, 4th and 5th conv layers and in the
    hidden fully-connected layers (to give ReLUs positive inputs early), 0 elsewhere.
    """
    import torch

    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    ones = {id(convs[1]), id(convs[3]), id(convs[4]), id(linears[0]), id(linears[1])}
    with torch.no_grad():
        for layer in convs + linears:
            layer.weight.normal_(0.0, 0.01)
            layer.bias.fill_(1.0 if id(layer) in ones else 0.0)
    return model


__all__ = ["ARCHS", "INITS", "DEFAULT_INPUT", "AlexNet2012", "NarrowTorchvisionAlexNet", "build_model",
           "paper_init_"]
