"""SegFormer segmenter: MiT encoders from timm (and the timm-default traps), both heads, groups, other encoders.

Random weights, tiny inputs (mit_b0 at 64x64); the big variants are only counted, on the meta device.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.models.encoders import TimmEncoder
from intrada_pl.models.factory import build_segmenter
from intrada_pl.models.heads import DAFormerHead, SegFormerHead
from intrada_pl.models.mit_weights import mit_variant
from intrada_pl.models.segformer import SegFormer, default_head_channels

# Encoder parameters without the ImageNet classifier; B0 and B5 as published in shared/STACK.md s. 11.
MIT_PARAMS = {"mit_b0": 3_319_392, "mit_b1": 13_151_424, "mit_b2": 24_196_288,
              "mit_b3": 44_072_128, "mit_b4": 60_842_688, "mit_b5": 81_443_008}


@pytest.fixture(scope="module")
def b0() -> SegFormer:
    """Shared, never mutated: a mit_b0 + DAFormer head on the CPU."""
    torch.manual_seed(0)
    return SegFormer(num_classes=5, encoder="mit_b0", head="daformer").eval()


def pixels(h: int = 64, w: int = 64, n: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8)


# ---------------------------------------------------------------- MiT encoders


@pytest.mark.parametrize("variant", list(MIT_PARAMS))
def test_mit_parameter_counts_and_variant_from_shapes(variant):
    with torch.device("meta"):
        encoder = TimmEncoder(variant)
    assert sum(p.numel() for p in encoder.parameters()) == MIT_PARAMS[variant]
    assert mit_variant(encoder.model.state_dict()) == variant


def test_mit_mlp_ratio_and_drop_path_differ_from_timm_defaults():
    """timm's pvt_v2_b0 has 8x MLPs in stages 1-2 and no drop-path; every MiT checkpoint has 4x and 0.1."""
    mit = TimmEncoder("mit_b0").model
    assert mit.stages[0].blocks[0].mlp.fc1.out_features == 128  # 4 x 32
    assert mit.stages[1].blocks[0].mlp.fc1.out_features == 256  # 4 x 64
    timm_default = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=0)
    assert timm_default.stages[0].blocks[0].mlp.fc1.out_features == 256  # the trap
    drop = [b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0 for s in mit.stages for b in s.blocks]
    assert drop[0] == 0.0 and drop[-1] == pytest.approx(0.1)
    assert drop == pytest.approx(torch.linspace(0, 0.1, len(drop)).tolist())  # per block, over all stages
    assert all(isinstance(b.drop_path1, nn.Identity) for s in timm_default.stages for b in s.blocks)


def test_mit_layernorm_eps_pattern():
    """MiT: 1e-6 in blocks and stage norms, PyTorch's 1e-5 in patch embeddings and spatial-reduction norms.
    timm's pvt_v2 already builds it this way (nothing to override)."""
    mit = TimmEncoder("mit_b0").model
    eps = {name: m.eps for name, m in mit.named_modules() if isinstance(m, nn.LayerNorm)}
    small = {n for n in eps if n.endswith((".norm1", ".norm2")) or n.rsplit(".", 1)[-1] == "norm" and n.count(".") == 2}
    large = {n for n in eps if "patch_embed" in n or "downsample" in n or n.endswith(".attn.norm")}
    assert small and large and small | large == set(eps) and not small & large
    assert {eps[n] for n in small} == {1e-6}
    assert {eps[n] for n in large} == {1e-5}
    assert "stages.3.norm" in small and "patch_embed.norm" in large and "stages.0.blocks.0.attn.norm" in large


def test_every_mit_segformer_parameter_is_used():
    assert unused_parameters(SegFormer(num_classes=3, encoder="mit_b0", head="daformer"), pixels(64, 64)) == []


def test_mit_encoder_gives_four_maps_at_strides_4_to_32(b0):
    with torch.inference_mode():
        maps = b0.encoder(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 160, 4, 6), (2, 256, 2, 3)]
    assert b0.encoder.out_channels == (32, 64, 160, 256)


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("head", ["daformer", "segformer"])
def test_forward_returns_no_aux_and_stride_4_logits(head):
    model = SegFormer(num_classes=7, encoder="mit_b0", head=head).eval()
    with torch.inference_mode():
        aux, logits = model(pixels(64, 96, n=2))
    assert aux is None and model.multi_level is False
    assert logits.shape == (2, 7, 16, 24) and torch.isfinite(logits).all()


@pytest.mark.parametrize("encoder, head, channels", [
    ("mit_b0", "segformer", 256), ("mit_b1", "segformer", 256), ("mit_b2", "segformer", 768),
    ("mit_b5", "segformer", 768), ("mit_b0", "daformer", 256), ("mit_b5", "daformer", 256),
])
def test_published_head_widths(encoder, head, channels):
    assert default_head_channels(encoder, head) == channels


def stage_marked_features(head: nn.Module) -> list[torch.Tensor]:
    """Four maps (finest first); each level's embedding outputs the constant ``level + 1`` everywhere."""
    for level, embed in enumerate(head.embed):
        nn.init.zeros_(embed.weight)
        nn.init.constant_(embed.bias, level + 1.0)
    return [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((3, 5, 6, 7))]


def fused_input(head: nn.Module, conv: nn.Module) -> torch.Tensor:
    seen = []
    handle = conv.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    with torch.inference_mode():
        head.eval()(stage_marked_features(head))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("cls, conv, order", [
    (SegFormerHead, lambda h: h.fuse_conv.conv, (4, 3, 2, 1)),  # SegFormer: concat(c4, c3, c2, c1)
    (DAFormerHead, lambda h: h.aspp[0].conv, (1, 2, 3, 4)),  # DAFormer: concat(c1, c2, c3, c4)
])
def test_head_concatenation_order(cls, conv, order):
    head = cls((3, 5, 6, 7), channels=4, num_classes=2)
    x = fused_input(head, conv(head))
    assert x.shape == (1, 16, 8, 8)
    blocks = [x[:, 4 * i: 4 * (i + 1)] for i in range(4)]
    assert [float(b.unique().item()) for b in blocks] == list(map(float, order))


def test_daformer_head_structure():
    head = DAFormerHead((32, 64, 160, 256), channels=256, num_classes=19)
    assert head.aspp[0].conv.kernel_size == (1, 1) and head.aspp[0].conv.in_channels == 1024
    for branch, d in zip(head.aspp[1:], (6, 12, 18), strict=True):
        assert branch.depthwise.conv.dilation == (d, d) and branch.depthwise.conv.groups == 1024
        assert branch.pointwise.conv.kernel_size == (1, 1) and branch.pointwise.conv.out_channels == 256
    assert head.bottleneck.conv.kernel_size == (3, 3) and head.bottleneck.conv.in_channels == 4 * 256
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert not hasattr(head, "image_pool")


# ---------------------------------------------------------------- groups and norms


def group_of(model: SegFormer) -> dict[str, tuple[str, float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, tuple[str, float, float]] = {}
    for g in model.param_groups():
        for p in g["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} in two groups"
            out[names[id(p)]] = (g["name"], g["lr_mult"], g["decay_mult"])
    return out


def test_param_groups_cover_every_trainable_parameter_once():
    model = SegFormer(num_classes=3, encoder="mit_b0", head="segformer", head_lr_mult=10.0)
    model.encoder.model.stages[3].norm.weight.requires_grad_(False)
    groups = group_of(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable and "encoder.model.stages.3.norm.weight" not in groups
    assert groups["encoder.model.stages.0.blocks.0.attn.q.weight"] == ("encoder", 1.0, 1.0)
    assert groups["encoder.model.stages.0.blocks.0.attn.q.bias"] == ("encoder_no_decay", 1.0, 0.0)
    assert groups["encoder.model.patch_embed.norm.weight"] == ("encoder_no_decay", 1.0, 0.0)
    assert groups["head.fuse_conv.conv.weight"] == ("head", 10.0, 1.0)
    assert groups["head.embed.0.weight"] == ("head", 10.0, 1.0)
    assert groups["head.fuse_conv.bn.weight"] == ("head_no_decay", 10.0, 0.0)
    assert groups["head.classifier.bias"] == ("head_no_decay", 10.0, 0.0)


def test_norm_layers_and_layer_groups(b0):
    norms = b0.norm_layers()
    layer_norms = [n for n, m in norms.items() if isinstance(m, nn.LayerNorm)]
    batch_norms = [n for n, m in norms.items() if isinstance(m, nn.BatchNorm2d)]
    # 4 patch embeddings, 2 per block (8 blocks), 6 spatial reductions (stages 1-3), 4 stage norms
    assert len(layer_norms) == sum(isinstance(m, nn.LayerNorm) for m in b0.encoder.modules()) == 30
    assert batch_norms == ["head.aspp.0.bn", "head.aspp.1.depthwise.bn", "head.aspp.1.pointwise.bn",
                           "head.aspp.2.depthwise.bn", "head.aspp.2.pointwise.bn", "head.aspp.3.depthwise.bn",
                           "head.aspp.3.pointwise.bn", "head.bottleneck.bn"]
    assert list(b0.layer_groups()) == ["encoder", "stage1", "stage2", "stage3", "stage4", "head"]
    stage1 = b0.layers_in_group("stage1")
    assert stage1[0] == "encoder.model.patch_embed.norm" and stage1[-1] == "encoder.model.stages.0.norm"
    assert b0.layers_in_group("stage4")[0] == "encoder.model.stages.3.downsample.norm"
    assert b0.layers_in_group("head") == batch_norms
    assert len(b0.layers_in_group("encoder")) == 30


def test_activation_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = SegFormer(num_classes=3, encoder="mit_b0", head="segformer", encoder_args={"drop_path_rate": 0.0})
    torch.manual_seed(0)
    ckpt = SegFormer(num_classes=3, encoder="mit_b0", head="segformer", encoder_args={"drop_path_rate": 0.0},
                     activation_checkpointing=True)
    assert all(s.grad_checkpointing for s in ckpt.encoder.model.stages)
    assert not any(s.grad_checkpointing for s in plain.encoder.model.stages)
    x = pixels(32, 32)
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same head dropout mask
        model.train()(x)[1].square().mean().backward()
    out_plain, out_ckpt = plain.eval()(x)[1], ckpt.eval()(x)[1]
    torch.testing.assert_close(out_plain, out_ckpt)
    grads = [m.encoder.model.patch_embed.proj.weight.grad for m in (plain, ckpt)]
    torch.testing.assert_close(*grads)


# ---------------------------------------------------------------- other encoders


def unused_parameters(model: SegFormer, x: torch.Tensor) -> list[str]:
    """Parameters no gradient reaches (DDP without find_unused_parameters fails on them)."""
    model.zero_grad()
    model.train()(x)[1].sum().backward()
    return [n for n, p in model.named_parameters() if p.grad is None]


def test_convnext_encoder_gives_stride_4_logits():
    model = SegFormer(num_classes=4, encoder="convnext_atto", head="daformer")
    assert model.encoder.out_channels == (40, 80, 160, 320)
    assert list(model.layer_groups()) == ["encoder", "stage1", "stage2", "stage3", "stage4", "head"]
    assert unused_parameters(model, pixels(64, 64)) == []  # its classifier and final norm pruned (timm >= 1.0.31)
    with torch.inference_mode():
        aux, logits = model.eval()(pixels(64, 64))
    assert aux is None and logits.shape == (1, 4, 16, 16)


def test_plain_vit_through_simple_feature_pyramid():
    model = SegFormer(num_classes=3, encoder="vit_small_patch14_dinov2", head="segformer",
                      encoder_args={"depth": 2, "img_size": 56}).eval()
    assert model.encoder.plain_vit and model.encoder.out_channels == (96, 192, 384, 384)
    with torch.inference_mode():
        maps = model.encoder(torch.randn(1, 3, 56, 84))  # 4 x 6 patches of 14: any size (dynamic_img_size)
        _, logits = model(pixels(56, 84))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert logits.shape == (1, 3, 16, 24)
    groups = group_of(model)
    assert groups["encoder.model.pos_embed"] == ("encoder_no_decay", 1.0, 0.0)
    assert groups["encoder.model.cls_token"] == ("encoder_no_decay", 1.0, 0.0)
    assert groups["encoder.pyramid.up2.weight"] == ("head", 10.0, 1.0)  # new, randomly initialised
    assert list(model.layer_groups()) == ["encoder", "pyramid", "head"]
    assert set(groups) == {n for n, _ in model.named_parameters()}
    assert unused_parameters(model, pixels(56, 56)) == []


# ---------------------------------------------------------------- config


def test_spec_round_trip_through_the_factory(b0):
    spec = b0.spec()
    assert spec["class_path"] == "intrada_pl.models.segformer.SegFormer"
    assert spec["init_args"]["encoder"] == "mit_b0" and spec["init_args"]["head"] == "daformer"
    rebuilt = build_segmenter(spec)
    assert isinstance(rebuilt, SegFormer) and rebuilt.spec() == spec
    theirs = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert theirs == {k: v.shape for k, v in b0.state_dict().items()}
    assert rebuilt.preprocessing == "imagenet" and rebuilt.num_classes == 5


def test_bad_head_and_encoder_names_are_one_line_errors():
    with pytest.raises(ConfigValueError, match="unknown head 'fcn'; expected one of: segformer, daformer"):
        SegFormer(encoder="mit_b0", head="fcn")
    with pytest.raises(ConfigValueError, match="unknown encoder 'mit_b9'"):
        SegFormer(encoder="mit_b9")


def test_no_pretrained_warns_and_keeps_random_init(b0):
    with pytest.warns(UserWarning, match="no pretrained weights given"):
        assert b0.load_pretrained() == "random"
