"""The ADVENT networks (REFERENCE A1, A2): DeepLabV2, its pre-processing, the discriminator. Big shapes run on meta.
Loading weights into them: tests/test_weights.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intrada_pl.models import DeepLabV2, FCDiscriminator, InputNormalization, reference_lr_multiplicity
from intrada_pl.models.deeplabv2 import ASPPClassifier

META = torch.device("meta")


def meta_model(**kwargs) -> DeepLabV2:
    with META:
        return DeepLabV2(**kwargs)


@pytest.fixture(scope="module")
def r101() -> DeepLabV2:
    """Shared, never mutated: ResNet-101 multi-level on meta."""
    return meta_model()


def is_head(name: str) -> bool:
    return name.startswith(("layer5.", "layer6."))


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("hw, grid", [((512, 1024), (65, 129)), ((256, 512), (33, 65)), ((720, 1280), (91, 161))])
def test_resnet101_logit_grid(r101, hw, grid):
    aux, main = r101(torch.empty(1, 3, *hw, device=META))
    assert aux.shape == main.shape == (1, 19, *grid)


@pytest.mark.parametrize("depth, aux_in, main_in", [(18, 256, 512), (50, 1024, 2048)])
def test_small_depths_run_on_cpu(depth, aux_in, main_in):
    model = DeepLabV2(num_classes=5, depth=depth).eval()
    assert model.layer5.conv2d_list[0].in_channels == aux_in
    assert model.layer6.conv2d_list[0].in_channels == main_in
    with torch.inference_mode():
        aux, main = model(torch.randint(0, 256, (1, 3, 64, 128), dtype=torch.uint8))
    assert aux.shape == main.shape == (1, 5, 9, 17)
    assert main.dtype == torch.float32 and torch.isfinite(main).all()


def test_single_level_has_no_aux_head():
    model = meta_model(num_classes=7, depth=18, multi_level=False)
    aux, main = model(torch.empty(1, 3, 64, 128, device=META))
    assert aux is None and main.shape == (1, 7, 9, 17)
    assert not any(k.startswith("layer5.") for k in model.state_dict())


def test_channels_last_matches_contiguous():
    model = DeepLabV2(num_classes=3, depth=18).eval()
    x = torch.randint(0, 256, (1, 3, 48, 64)).float()
    with torch.inference_mode():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_key_layout(r101):
    sd = r101.state_dict()
    expected = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.weight": (64,),
        "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.bn1.running_var": (64,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.running_mean": (256,),
        "layer2.0.conv1.weight": (128, 256, 1, 1),
        "layer3.22.conv3.weight": (1024, 256, 1, 1),
        "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.bn3.bias": (2048,),
        "layer5.conv2d_list.3.weight": (19, 1024, 3, 3),
        "layer5.conv2d_list.3.bias": (19,),
        "layer6.conv2d_list.0.weight": (19, 2048, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    # 104 convs + 104 BNs x 5 entries + 2 heads x 4 convs x (weight, bias); no normalisation buffers
    assert len(sd) == 104 + 104 * 5 + 16
    assert "layer3.23.conv1.weight" not in sd and not any(k.startswith("normalize") for k in sd)
    assert r101.layer5.conv2d_list[3].dilation == (24, 24) == r101.layer5.conv2d_list[3].padding


def test_caffe_bottleneck_and_ceil_pool(r101):
    first = r101.layer2[0]
    assert first.conv1.stride == (2, 2) and first.conv2.stride == (1, 1)
    assert r101.layer3[0].conv2.dilation == (2, 2) == r101.layer3[0].conv2.padding
    assert r101.layer4[1].conv2.dilation == (4, 4)
    # projection shortcut even where the stride is 1 (dilated stages)
    assert r101.layer3[0].downsample[0].stride == (1, 1) and r101.layer4[0].downsample is not None
    assert r101.layer3[1].downsample is None
    assert r101.maxpool.ceil_mode and r101.maxpool.stride == 2


def test_head_sums_all_four_convs():
    torch.manual_seed(0)
    head = ASPPClassifier(4, 3)
    x = torch.randn(1, 4, 30, 30)
    with torch.no_grad():
        total = head(x)
        parts = [conv(x) for conv in head.conv2d_list]
        torch.testing.assert_close(total, sum(parts))
        for conv in head.conv2d_list[1:]:  # zero three convs: the remaining one is the whole output
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(head(x), parts[0])


def test_reference_init():
    model = DeepLabV2(num_classes=3, depth=18)
    assert abs(model.layer1[0].conv1.weight.std().item() - 0.01) < 1e-3
    assert abs(model.layer6.conv2d_list[0].weight.std().item() - 0.01) < 1e-3
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    assert model.layer6.conv2d_list[0].bias.abs().max() > 0  # PyTorch default, not zero
    assert all(p.requires_grad for p in model.parameters())


def test_parameter_groups_partition_trainable_params():
    model = meta_model(depth=18)
    for frozen in (False, True):
        if frozen:
            model.freeze_norm_affine()
        backbone, head = model.backbone_parameters(), model.head_parameters()
        ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
        assert len(ids_b) == len(backbone) and len(ids_h) == len(head) == 16
        assert not ids_b & ids_h
        assert ids_b | ids_h == {id(p) for p in model.parameters() if p.requires_grad}
    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not bn_ids & ids_b and not any(id(p) in bn_ids for p in model.parameters() if p.requires_grad)


def test_reference_lr_multiplicity():
    model = meta_model()
    model.freeze_norm_affine()
    counts = reference_lr_multiplicity(model)
    assert sum(counts.values()) == 314 and len(counts) == 104
    assert counts["conv1.weight"] == 1
    assert counts["layer1.0.conv1.weight"] == counts["layer3.17.conv2.weight"] == 3
    assert counts["layer1.0.downsample.0.weight"] == counts["layer4.0.downsample.0.weight"] == 4
    assert not any("bn" in k or k.endswith("downsample.1.weight") or is_head(k) for k in counts)
    assert set(counts) == {n for n, p in model.named_parameters() if p.requires_grad and not is_head(n)}


# ---------------------------------------------------------------- pre-processing / discriminator


def test_input_normalization_values():
    pixel = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # R, G, B
    caffe = InputNormalization("caffe_bgr")(pixel).flatten()
    torch.testing.assert_close(caffe, torch.tensor([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434]))
    imagenet = InputNormalization("imagenet")(pixel.float()).flatten()
    want = [(v / 255 - m) / s for v, m, s in zip((10, 20, 30), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    torch.testing.assert_close(imagenet, torch.tensor(want))
    assert caffe.dtype == imagenet.dtype == torch.float32
    assert InputNormalization("imagenet").state_dict() == {}
    with pytest.raises(ValueError, match="caffe_bgr, imagenet"):
        InputNormalization("bgr")


def test_discriminator_shape_and_layout():
    with META:
        disc = FCDiscriminator(19)
    assert disc(torch.empty(1, 19, 512, 1024, device=META)).shape == (1, 1, 16, 32)
    assert disc(torch.empty(1, 19, 720, 1280, device=META)).shape == (1, 1, 22, 40)
    convs = [m for m in disc if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.bias is not None for c in convs)
    assert [m.negative_slope for m in disc if isinstance(m, nn.LeakyReLU)] == [0.2] * 4
    assert isinstance(disc[-1], nn.Conv2d)  # logits: no sigmoid
    assert not any(isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) for m in disc.modules())
    assert list(disc.state_dict())[:2] == ["0.weight", "0.bias"]
