"""DeepLab-v2: dilated Caffe-style ResNet + ASPP-L heads, in the reference checkpoint layout (REFERENCE A1).

Module names reproduce the released valeoai/ADVENT and IntraDA state dicts key for key
(``conv1``, ``bn1``, ``layer1..4``, ``layer5`` = aux head on layer3, ``layer6`` = main head on layer4),
so those files load with ``strict=True``.
"""

from __future__ import annotations

from collections import Counter

from torch import Tensor, nn

from intrada_pl.models.preprocessing import InputNormalization
from intrada_pl.models.resnet import BACKBONE_MODULES, HEAD_MODULES, RESNET_LAYOUTS, make_stage
from intrada_pl.models.segmenter import ParamGroup, Segmenter
from intrada_pl.models.weights import load_pretrained

HEAD_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """DeepLab-v2 'ASPP-L' head: four parallel dilated 3x3 convs whose outputs are summed
    (all four, unlike AdaptSegNet's early return after two)."""

    def __init__(self, c_in: int, num_classes: int) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(c_in, num_classes, 3, padding=d, dilation=d, bias=True) for d in HEAD_DILATIONS
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(Segmenter):
    """DeepLab-v2 with optional auxiliary (layer3) head; returns ``(aux_logits | None, main_logits)``
    at the stride-8 grid (65x129 for 512x1024, because the stem max-pool uses ceil mode).

    Everything is trainable after construction; the training stage calls ``freeze_norm_affine()``
    to reproduce the reference's frozen BN affine parameters.

    Args:
        num_classes, depth (18, 50, 101), multi_level (the aux head on layer3), preprocessing
            (``caffe_bgr``: the reference's; ``imagenet``: torchvision's weights).
        pretrained: a local weight file loaded when a training stage starts (:meth:`load_pretrained`):
            the DeepLab ImageNet init, torchvision ResNet weights, or any segmentation checkpoint.
        head_lr_mult: the heads' learning-rate multiplier (the reference: 10).
    """

    def __init__(self, num_classes: int = 19, depth: int = 101, multi_level: bool = True,
                 preprocessing: str = "caffe_bgr", pretrained: str | None = None, head_lr_mult: float = 10.0) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"unsupported depth {depth}; valid depths: {sorted(RESNET_LAYOUTS)}")
        self.num_classes = num_classes
        self.depth = depth
        self.multi_level = multi_level
        self.preprocessing = preprocessing
        self.pretrained = pretrained
        self.head_lr_mult = head_lr_mult
        block, blocks = RESNET_LAYOUTS[depth]
        e = block.expansion

        self.normalize = InputNormalization(preprocessing)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = make_stage(block, 64, 64, blocks[0], stride=1, dilation=1)
        self.layer2 = make_stage(block, 64 * e, 128, blocks[1], stride=2, dilation=1)
        self.layer3 = make_stage(block, 128 * e, 256, blocks[2], stride=1, dilation=2)
        self.layer4 = make_stage(block, 256 * e, 512, blocks[3], stride=1, dilation=4)
        self.layer5 = ASPPClassifier(256 * e, num_classes) if multi_level else None
        self.layer6 = ASPPClassifier(512 * e, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Reference init: conv weights N(0, 0.01), head biases PyTorch default, BN 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        feat3 = self.layer3(self.layer2(self.layer1(x)))
        aux = self.layer5(feat3) if self.layer5 is not None else None
        return aux, self.layer6(self.layer4(feat3))

    def _trainable(self, names: tuple[str, ...]) -> list[nn.Parameter]:
        modules = [getattr(self, n) for n in names if getattr(self, n) is not None]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable stem + layer1..4 parameters, each once (the reference lists some 3-4x)."""
        return self._trainable(BACKBONE_MODULES)

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable layer5 (aux) + layer6 (main) weights and biases (reference: 10x LR)."""
        return self._trainable(HEAD_MODULES)

    def param_groups(self) -> list[ParamGroup]:
        """``backbone`` (1x) and ``heads`` (``head_lr_mult``), weight decay on all (the reference)."""
        return [
            ParamGroup(name="backbone", params=self.backbone_parameters(), lr_mult=1.0, decay_mult=1.0),
            ParamGroup(name="heads", params=self.head_parameters(), lr_mult=self.head_lr_mult, decay_mult=1.0),
        ]

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        return {
            "stem": ("bn1",),
            "layer1": ("layer1.*",),
            "layer2": ("layer2.*",),
            "layer3": ("layer3.*",),
            "layer4": ("layer4.*",),
            "heads": ("layer5.*", "layer6.*"),
        }

    def load_pretrained(self) -> str:
        return load_pretrained(self, self.pretrained)

    def reference_param_repeats(self) -> dict[str, int]:
        """How often the reference's generator list holds each backbone parameter (:func:`reference_lr_multiplicity`)."""
        return reference_lr_multiplicity(self)


def reference_lr_multiplicity(model: DeepLabV2) -> dict[str, int]:
    """How often the reference optimizer's backbone group lists each parameter (by name).

    The reference generator walks ``module.modules()`` of conv1/bn1/layer1..4 and yields every
    visited module's recursive ``parameters()`` that require grad, so a parameter appears once per
    ancestor on its path (stem conv 1x, block convs 3x, shortcut convs 4x; REFERENCE A1). SGD then
    applies the update once per occurrence. Simulated on the model's current ``requires_grad``
    flags: call after ``freeze_bn_affine()`` to match the reference.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    counts: Counter[str] = Counter()
    for top in (getattr(model, n) for n in BACKBONE_MODULES):
        for module in top.modules():
            for p in module.parameters():
                if p.requires_grad:
                    counts[names[id(p)]] += 1
    return dict(counts)
