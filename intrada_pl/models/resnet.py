"""The dilated Caffe-style ResNet of DeepLab-v2 (REFERENCE A1): blocks, stage layouts per depth.

Shared by the network (:mod:`intrada_pl.models.deeplabv2`) and the weight loader
(:mod:`intrada_pl.models.weights`), which reads a file's depth off its block layout.
"""

from __future__ import annotations

from torch import Tensor, nn

# Module names of the reference layout (its released state dicts use them key for key).
BACKBONE_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
HEAD_MODULES = ("layer5", "layer6")  # DeepLabV2's aux (multi-level only) and main heads


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """Bias-free conv with 'same' padding for odd kernels (padding = dilation for 3x3)."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=dilation * (kernel // 2),
                     dilation=dilation, bias=False)


class _ResidualBlock(nn.Module):
    """Shared residual wiring: ``relu(residual(x) + shortcut(x))``."""

    expansion = 1

    def __init__(self, downsample: nn.Module | None) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + identity)


class Bottleneck(_ResidualBlock):
    """Caffe-style bottleneck: the stride sits on the first 1x1 conv (torchvision puts it on the 3x3)."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__(downsample)
        self.conv1 = _conv(c_in, planes, 1, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34 block), dilated like the bottleneck; for small demo/test models."""

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int,
                 downsample: nn.Module | None) -> None:
        super().__init__(downsample)
        self.conv1 = _conv(c_in, planes, 3, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


# depth -> (block type, blocks per stage)
RESNET_LAYOUTS: dict[int, tuple[type[_ResidualBlock], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def make_stage(block: type[_ResidualBlock], c_in: int, planes: int, blocks: int,
                stride: int, dilation: int) -> nn.Sequential:
    """A ResNet stage; the first block gets a 1x1 projection shortcut whenever the stride, the
    width or the dilation changes (the reference forces it for dilated stages too)."""
    c_out = planes * block.expansion
    downsample = None
    if stride != 1 or c_in != c_out or dilation > 1:
        downsample = nn.Sequential(_conv(c_in, c_out, 1, stride=stride), nn.BatchNorm2d(c_out))
    layers = [block(c_in, planes, stride, dilation, downsample)]
    layers += [block(c_out, planes, 1, dilation, None) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
