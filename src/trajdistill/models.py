"""Networks by name, each usable functionally from one flat parameter vector.

The ConvNet family (algorithm.md section 8): `depth` blocks of
[3x3 conv -> norm -> activation -> 2x2 pool] then a linear classifier, with variants
named like the reference code (ConvNetD4, ConvNetW64, ConvNetBN, ConvNetAS, ConvNetMP...).
Plus LeNet, AlexNet, VGG11(BN), ResNet18(BN/_AP) and MLP for cross-architecture evaluation.

`FlatModel` turns any of them into `f(flat_params, x)`: the unrolled student of
trajectory matching steps a flat vector, never an nn.Module's own parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .errors import TrajdistillError


class ModelError(TrajdistillError):
    pass


# ----------------------------------------------------------------------------- ConvNet

def _norm(kind: str, channels: int, hw: tuple[int, int]) -> nn.Module:
    if kind == "instancenorm":  # one group per channel == instance norm with affine
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":
        return nn.LayerNorm([channels, *hw], elementwise_affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ModelError(f"unknown norm {kind!r}")


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(), "sigmoid": nn.Sigmoid(), "leakyrelu": nn.LeakyReLU(0.01)}[kind]


def _pool(kind: str) -> nn.Module:
    return {"avgpooling": nn.AvgPool2d(2, 2), "maxpooling": nn.MaxPool2d(2, 2),
            "none": nn.Identity()}[kind]


def mnist_padding(channel: int, im_size: tuple[int, int]) -> int:
    """Padding of a ConvNet's first convolution: 3 for 28x28 grey images, else 1.

    As the reference networks.py: its first convolution pads single-channel inputs by 3,
    so MNIST/FashionMNIST 28x28 images give 32x32 feature maps and the network has exactly
    the CIFAR ConvNet's layer shapes (2048 classifier inputs at depth 3). The reference
    pads every single-channel input by 3 but sizes its classifier as if only 28x28 ones
    were padded; we pad only those, so other grey sizes (the 8x8 digits) keep padding 1.
    """
    return 3 if channel == 1 and tuple(im_size) == (28, 28) else 1


class ConvNet(nn.Module):
    def __init__(self, channel: int, num_classes: int, im_size: tuple[int, int], width: int = 128,
                 depth: int = 3, act: str = "relu", norm: str = "instancenorm",
                 pool: str = "avgpooling"):
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channel, im_size
        first_pad = mnist_padding(channel, im_size)
        h, w = h + 2 * (first_pad - 1), w + 2 * (first_pad - 1)  # 28x28 -> 32x32 features
        for d in range(depth):
            pad = first_pad if d == 0 else 1
            layers += [nn.Conv2d(c, width, 3, padding=pad), _norm(norm, width, (h, w)), _act(act)]
            c = width
            if pool != "none":
                if h < 2 or w < 2:
                    raise ModelError(f"ConvNet depth {depth} pools a {im_size} image below 1 pixel; "
                                     "use a smaller depth (ConvNetD{n}) or no pooling (ConvNetNP)")
                layers.append(_pool(pool))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


# ----------------------------------------------------------------------------- others

class MLP(nn.Module):
    def __init__(self, channel, num_classes, im_size, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channel * im_size[0] * im_size[1], width),
                                 nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


class LeNet(nn.Module):
    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channel, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2))
        h, w = im_size[0] // 4, im_size[1] // 4
        self.classifier = nn.Sequential(nn.Linear(16 * h * w, 120), nn.ReLU(),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class AlexNet(nn.Module):
    """The small AlexNet of the dataset-distillation literature (5 convs, 3 max-pools)."""

    def __init__(self, channel, num_classes, im_size):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channel, 128, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(),
            nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2))
        h, w = im_size[0] // 8, im_size[1] // 8
        if h < 1 or w < 1:
            raise ModelError(f"AlexNet needs images of at least 8x8, got {im_size}")
        self.fc = nn.Linear(192 * h * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class VGG11(nn.Module):
    CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]

    def __init__(self, channel, num_classes, im_size, norm: str = "instancenorm"):
        super().__init__()
        layers: list[nn.Module] = []
        c, h, w = channel, *im_size
        for v in self.CFG:
            if v == "M":
                if h >= 2 and w >= 2:  # small images (e.g. 8x8) skip the late pools
                    layers.append(nn.MaxPool2d(2, 2))
                    h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), _norm(norm, v, (h, w)), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout, (0, 0))
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout, (0, 0))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm(norm, cout, (0, 0)))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, channel, num_classes, im_size, norm: str = "instancenorm",
                 avgpool_stem: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(channel, 64, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, 64, (0, 0))
        # ResNet18_AP: average-pool downsampling instead of strided convolutions (as the reference)
        self.avgpool_stem = avgpool_stem
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1),
                             (512, 2), (512, 1)]:
            if avgpool_stem and stride == 2:
                blocks += [nn.AvgPool2d(2, 2)]
                stride = 1
            blocks.append(_BasicBlock(cin, cout, stride, norm))
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ----------------------------------------------------------------------------- by name

_CONV_VARIANTS = {
    "BN": {"norm": "batchnorm"}, "LN": {"norm": "layernorm"}, "IN": {"norm": "instancenorm"},
    "GN": {"norm": "groupnorm"}, "NN": {"norm": "none"},
    "AS": {"act": "sigmoid"}, "AR": {"act": "relu"}, "AL": {"act": "leakyrelu"},
    "NP": {"pool": "none"}, "MP": {"pool": "maxpooling"}, "AP": {"pool": "avgpooling"},
}

MODEL_NAMES = ["ConvNet", "ConvNetD{n}", "ConvNetW{n}", "ConvNetD{n}W{m}", *(f"ConvNet{k}" for k in _CONV_VARIANTS),
               "MLP", "LeNet", "AlexNet", "VGG11", "VGG11BN", "ResNet18", "ResNet18BN",
               "ResNet18_AP", "ResNet18BN_AP"]


def build_model(name: str, channel: int, num_classes: int, im_size: tuple[int, int]) -> nn.Module:
    """A freshly initialised network by name (see MODEL_NAMES)."""
    im_size = tuple(im_size)
    # depth and width may be named together (ConvNetD4W32: the derived expert at 64 px)
    m = re.fullmatch(r"ConvNet(?:(?:D(\d+))?(?:W(\d+))?|([A-Z]{2}))", name)
    if m:
        depth, width, variant = m.groups()
        kw: dict = {}
        if depth:
            kw["depth"] = int(depth)
        if width:
            kw["width"] = int(width)
        if variant:
            if variant not in _CONV_VARIANTS:
                raise ModelError(_unknown(name))
            kw.update(_CONV_VARIANTS[variant])
        return ConvNet(channel, num_classes, im_size, **kw)
    others = {
        "MLP": lambda: MLP(channel, num_classes, im_size),
        "LeNet": lambda: LeNet(channel, num_classes, im_size),
        "AlexNet": lambda: AlexNet(channel, num_classes, im_size),
        "VGG11": lambda: VGG11(channel, num_classes, im_size),
        "VGG11BN": lambda: VGG11(channel, num_classes, im_size, norm="batchnorm"),
        "ResNet18": lambda: ResNet18(channel, num_classes, im_size),
        "ResNet18BN": lambda: ResNet18(channel, num_classes, im_size, norm="batchnorm"),
        "ResNet18_AP": lambda: ResNet18(channel, num_classes, im_size, avgpool_stem=True),
        "ResNet18BN_AP": lambda: ResNet18(channel, num_classes, im_size, norm="batchnorm",
                                          avgpool_stem=True),
    }
    if name not in others:
        raise ModelError(_unknown(name))
    return others[name]()


def _unknown(name: str) -> str:
    return f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}"


# ----------------------------------------------------------------------------- flat view

# layers whose output for one image depends on the other images of the batch
_BATCH_COUPLED = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)

@dataclass
class FlatModel:
    """A network seen as `f(flat_params, x)`.

    Parameter order is `module.named_parameters()` order; buffers (batch-norm running
    statistics) are kept on the module and used as they are (training mode uses batch
    statistics anyway).
    """

    module: nn.Module
    names: list[str]
    shapes: list[torch.Size]
    numels: list[int]

    @classmethod
    def wrap(cls, module: nn.Module) -> "FlatModel":
        named = list(module.named_parameters())
        return cls(module, [n for n, _ in named], [p.shape for _, p in named],
                   [p.numel() for _, p in named])

    @property
    def num_params(self) -> int:
        return sum(self.numels)

    @property
    def batch_independent(self) -> bool:
        """True when each image's output depends on that image only (no batch statistics),
        so a loss summed over images can be computed chunk by chunk."""
        return not any(isinstance(m, _BATCH_COUPLED) for m in self.module.modules())

    def flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def load_flat(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for p, t in zip(self.module.parameters(), flat.split(self.numels)):
                p.copy_(t.view(p.shape))

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))
