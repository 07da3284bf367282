"""MiT weights from every release layout: synthetic files written from a random mit_b0 SegFormer in each
layout (the renames below follow the published conversion scripts: timm's pvt_v2 filter, mmseg's
mit2mmseg.py, HF's convert_segformer_original_to_pytorch.py), loaded back, compared tensor for tensor."""

from __future__ import annotations

import re

import pytest
import safetensors.torch
import timm
import torch

from intrada_pl.models.factory import build_segmenter
from intrada_pl.models.mit_weights import load_weights
from intrada_pl.models.segformer import SegFormer, release_spec_and_state
from intrada_pl.models.weights import CheckpointMismatchError, load_state_checked


def random_segformer(head: str, seed: int, num_classes: int = 5) -> SegFormer:
    """A mit_b0 SegFormer whose every tensor (BN statistics included) is random."""
    torch.manual_seed(seed)
    model = SegFormer(num_classes=num_classes, encoder="mit_b0", head=head)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t))
    return model.eval()


@pytest.fixture(scope="module")
def daformer() -> SegFormer:
    return random_segformer("daformer", seed=1)


@pytest.fixture(scope="module")
def segformer() -> SegFormer:
    return random_segformer("segformer", seed=2)


@pytest.fixture(scope="module")
def teacher() -> SegFormer:
    return random_segformer("daformer", seed=3)


def part(model: SegFormer, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


# ---------------------------------------------------------------- writers, one per release layout


def timm_to_nvlabs(backbone: dict) -> dict:
    """timm pvt_v2 names -> NVlabs MiT names (timm's checkpoint_filter_fn, inverted)."""
    out = {}
    for k, v in backbone.items():
        k = re.sub(r"^patch_embed\.", "patch_embed1.", k)
        k = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", k)
        k = re.sub(r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}.", k)
        k = re.sub(r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", k)
        out[k.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")] = v
    return out


def nvlabs_to_mmseg(nv: dict) -> dict:
    """NVlabs MiT -> OpenMMLab mmsegmentation MiT (the facts of tools/model_converters/mit2mmseg.py)."""
    out = {}
    for k, v in nv.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", k):
            out[f"layers.{int(m[1]) - 1}.0.{'projection' if m[2] == 'proj' else 'norm'}.{m[3]}"] = v
        elif m := re.fullmatch(r"norm(\d)\.(\w+)", k):
            out[f"layers.{int(m[1]) - 1}.2.{m[2]}"] = v
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(\w+)", k):
            p, inner, kind = f"layers.{int(m[1]) - 1}.1.{m[2]}.", m[3], m[4]
            if inner == "attn.q":
                out[f"{p}attn.attn.in_proj_{kind}"] = torch.cat([v, nv[k.replace("attn.q.", "attn.kv.")]])
            elif inner == "attn.proj":
                out[f"{p}attn.attn.out_proj.{kind}"] = v
            elif inner.startswith("mlp."):
                layer = {"mlp.fc1": 0, "mlp.dwconv.dwconv": 1, "mlp.fc2": 4}[inner]
                out[f"{p}ffn.layers.{layer}.{kind}"] = v[..., None, None] if layer != 1 and kind == "weight" else v
            elif inner != "attn.kv":
                out[f"{p}{inner}.{kind}"] = v
    return out


_HF_BLOCK_NAMES = {"norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
                   "attn.proj": "attention.output.dense", "attn.sr": "attention.self.sr",
                   "attn.norm": "attention.self.layer_norm", "mlp.fc1": "mlp.dense1",
                   "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2"}


def nvlabs_to_hf(nv: dict) -> dict:
    """NVlabs MiT -> Hugging Face SegFormer encoder (rename_keys + read_in_k_v of HF's conversion script)."""
    out = {}
    for k, v in nv.items():
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(\w+)", k):
            out[f"segformer.encoder.patch_embeddings.{int(m[1]) - 1}.{'proj' if m[2] == 'proj' else 'layer_norm'}.{m[3]}"] = v
        elif m := re.fullmatch(r"norm(\d)\.(\w+)", k):
            out[f"segformer.encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"] = v
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(\w+)", k):
            p, inner, kind = f"segformer.encoder.block.{int(m[1]) - 1}.{m[2]}.", m[3], m[4]
            if inner == "attn.kv":
                key, value = v.chunk(2)
                out[f"{p}attention.self.key.{kind}"], out[f"{p}attention.self.value.{kind}"] = key, value
            else:
                out[f"{p}{_HF_BLOCK_NAMES[inner]}.{kind}"] = v
        elif k.startswith("head."):
            out[f"classifier.{k[5:]}"] = v
    return out


def rename(state: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for k, v in state.items():
        for pattern, target in rules:
            if m := re.fullmatch(pattern, k):
                out[m.expand(target)] = v
                break
        else:
            raise AssertionError(f"no rule for {k}")
    return out


def nvlabs_segformer_head(head: dict) -> dict:
    """Ours -> NVlabs SegFormer's decode head (the inverse of HF's renames: linear_c{i}, linear_fuse, linear_pred)."""
    out = {f"linear_c{int(m[1]) + 1}.proj.{m[2]}": v for k, v in head.items() if (m := re.fullmatch(r"embed\.(\d)\.(\w+)", k))}
    out |= rename({k: v for k, v in head.items() if not k.startswith("embed.")},
                  [(r"fuse_conv\.conv\.weight", "linear_fuse.conv.weight"), (r"fuse_conv\.bn\.(\w+)", r"linear_fuse.bn.\1"),
                   (r"classifier\.(\w+)", r"linear_pred.\1")])
    return out | {"conv_seg.weight": torch.randn(5, 256, 1, 1), "conv_seg.bias": torch.randn(5)}  # unused by that head


def hf_segformer_head(head: dict) -> dict:
    return rename(head, [(r"embed\.(\d)\.(\w+)", r"linear_c.\1.proj.\2"), (r"fuse_conv\.conv\.weight", "linear_fuse.weight"),
                         (r"fuse_conv\.bn\.(\w+)", r"batch_norm.\1"), (r"classifier\.(\w+)", r"classifier.\1")])


def daformer_head(head: dict) -> dict:
    """Ours -> DAFormer's decode head (embed_layers, fuse_layer: mmseg's separable ASPP module + bottleneck, conv_seg)."""
    return rename(head, [
        (r"embed\.(\d)\.(\w+)", r"embed_layers.\1.proj.\2"),
        (r"aspp\.0\.(conv|bn)\.(\w+)", r"fuse_layer.aspp_modules.0.\1.\2"),
        (r"aspp\.(\d)\.(depthwise|pointwise)\.(conv|bn)\.(\w+)", r"fuse_layer.aspp_modules.\1.\2_conv.\3.\4"),
        (r"bottleneck\.(conv|bn)\.(\w+)", r"fuse_layer.bottleneck.\1.\2"),
        (r"classifier\.(\w+)", r"conv_seg.\1"),
    ])


def prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def nvlabs_encoder(model: SegFormer) -> dict:
    return timm_to_nvlabs(part(model, "encoder.model."))


def imagenet_classifier() -> dict:
    return {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}


def mmseg_model(model: SegFormer, head: dict) -> dict:
    return prefixed("backbone.", nvlabs_encoder(model)) | prefixed("decode_head.", head)


# ---------------------------------------------------------------- encoder-only files (ImageNet weights)


ENCODER_FILES = {
    "NVlabs mit_b0.pth": lambda m: nvlabs_encoder(m) | imagenet_classifier(),
    "mmseg-converted": lambda m: nvlabs_to_mmseg(nvlabs_encoder(m)),
    "Hugging Face nvidia/mit-b0": lambda m: nvlabs_to_hf(nvlabs_encoder(m) | imagenet_classifier()),
    "timm": lambda m: part(m, "encoder.model.") | imagenet_classifier(),
}


@pytest.mark.parametrize("layout", list(ENCODER_FILES))
def test_encoder_only_files_load_the_encoder_and_keep_the_head(daformer, tmp_path, layout):
    path = tmp_path / "mit_b0.pth"
    torch.save(ENCODER_FILES[layout](daformer), path)
    model = SegFormer(num_classes=5, encoder="mit_b0", head="daformer", pretrained=str(path))
    head_before = {k: v.clone() for k, v in part(model, "head.").items()}
    description = model.load_pretrained()
    for k, v in part(daformer, "encoder.model.").items():
        torch.testing.assert_close(model.state_dict()[f"encoder.model.{k}"], v, rtol=0, atol=0, msg=k)
    for k, v in head_before.items():
        assert torch.equal(model.state_dict()[f"head.{k}"], v)
    assert description.startswith("mit_b0 encoder (176 tensors) + head random")
    assert str(path) in description


# ---------------------------------------------------------------- whole segmenters


def lightning(model: SegFormer) -> dict:
    return {"pytorch-lightning_version": "2.6.6", "state_dict": prefixed("model.", model.state_dict()),
            "hyper_parameters": {"segmenter": model.spec()}}


def uda(student: SegFormer, teacher: SegFormer, head=daformer_head) -> dict:
    """A DAFormer/MIC UDA checkpoint: student, EMA teacher and the ImageNet feature-distance model."""
    state = prefixed("model.", mmseg_model(student, head(part(student, "head."))))
    state |= prefixed("ema_model.", mmseg_model(teacher, head(part(teacher, "head."))))
    state |= prefixed("imnet_model.backbone.", nvlabs_encoder(teacher))
    return {"meta": {"iter": 40000}, "state_dict": state}


def hrda(student: SegFormer) -> dict:
    head = prefixed("head.", daformer_head(part(student, "head.")))
    head |= {"scale_attention.embed_layers.0.proj.weight": torch.randn(256, 32),
             "scale_attention.conv_seg.weight": torch.randn(5, 256, 1, 1)}
    return {"state_dict": prefixed("model.", mmseg_model(student, head))}


def nvlabs_segformer(model: SegFormer) -> dict:
    return {"state_dict": mmseg_model(model, nvlabs_segformer_head(part(model, "head.")))}


def hf_segformer(model: SegFormer) -> dict:
    return nvlabs_to_hf(nvlabs_encoder(model)) | prefixed("decode_head.", hf_segformer_head(part(model, "head.")))


FULL_FILES = {  # name -> (source fixture, file writer, ema, layout words in the description)
    "NVlabs SegFormer (mmseg 0.x)": ("segformer", lambda s, t: nvlabs_segformer(s), False,
                                     "mmseg checkpoint (NVlabs MiT names)"),
    "Hugging Face SegFormer": ("segformer", lambda s, t: hf_segformer(s), False, "Hugging Face SegFormer"),
    "DAFormer UDA student": ("daformer", uda, False, "loaded its student (model.*), ignored ema_model.*, imnet_model.*"),
    "DAFormer UDA EMA teacher": ("teacher", uda, True, "loaded its EMA teacher (ema_model.*), ignored imnet_model.*, model.*"),
    "HRDA": ("daformer", lambda s, t: hrda(s), False, "dropped its scale attention"),
    "ours (Lightning)": ("daformer", lambda s, t: lightning(s), False, "intrada_pl checkpoint"),
}


@pytest.mark.parametrize("name", list(FULL_FILES))
def test_whole_segmenters_round_trip(request, tmp_path, name):
    fixture, write, ema, words = FULL_FILES[name]
    source = request.getfixturevalue(fixture)
    student = source if fixture != "teacher" else request.getfixturevalue("daformer")
    path = tmp_path / "release.pth"
    torch.save(write(student, request.getfixturevalue("teacher")), path)
    model = random_segformer(source.head_name, seed=9)
    description = load_weights(model, path, ema=ema)
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert f"+ {source.head_name} head" in description and words in description


@pytest.mark.parametrize("name", list(FULL_FILES))
def test_release_hook_gives_spec_and_state_that_rebuild_the_network(request, tmp_path, name):
    fixture, write, ema, _ = FULL_FILES[name]
    source = request.getfixturevalue(fixture)
    blob = write(source if fixture != "teacher" else request.getfixturevalue("daformer"), request.getfixturevalue("teacher"))
    spec, state, description = release_spec_and_state(blob, "release.pth", ema=ema)
    assert spec == SegFormer.__new__(SegFormer, num_classes=5, encoder="mit_b0", head=source.head_name).spec()
    rebuilt = build_segmenter(spec).eval()
    load_state_checked(rebuilt, state, "release.pth")
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x)[1], source(x)[1])
    assert description.startswith(f"mit_b0 + {source.head_name} head (5 classes) from release.pth")


def test_release_hook_refuses_encoder_only_files_and_ignores_other_networks(daformer):
    with pytest.raises(CheckpointMismatchError, match="mit_b0 encoder without a head of ours .*segmenter.init_args.pretrained"):
        release_spec_and_state(nvlabs_encoder(daformer), "mit_b0.pth")
    deeplab = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer6.conv2d_list.0.weight": torch.zeros(1)}
    assert release_spec_and_state(deeplab, "x.pth") is None


def test_mmseg_segformer_head_of_another_structure_stays_random(segformer, tmp_path):
    """mmseg 1.x's SegformerHead (conv+BN+ReLU per level, c1..c4 order) is not the published head: encoder only."""
    head = {f"convs.{i}.conv.weight": torch.randn(256, c, 1, 1) for i, c in enumerate((32, 64, 160, 256))}
    head |= {"fusion_conv.conv.weight": torch.randn(256, 1024, 1, 1), "conv_seg.weight": torch.randn(5, 256, 1, 1)}
    path = tmp_path / "segformer_mit-b0_mmseg.pth"
    encoder = prefixed("backbone.", nvlabs_to_mmseg(nvlabs_encoder(segformer)))
    torch.save({"state_dict": encoder | prefixed("decode_head.", head)}, path)
    model = random_segformer("segformer", seed=9)
    description = load_weights(model, path)
    assert "+ head random (the file has no head of ours)" in description
    assert "head random: the file's decode_head (conv_seg.weight, convs.0.conv.weight" in description
    torch.testing.assert_close(model.state_dict()["encoder.model.stages.2.blocks.1.attn.kv.weight"],
                               segformer.state_dict()["encoder.model.stages.2.blocks.1.attn.kv.weight"], rtol=0, atol=0)


# ---------------------------------------------------------------- refusals and mismatches


def test_partial_encoder_is_refused_naming_the_keys(daformer, tmp_path):
    state = nvlabs_encoder(daformer)
    del state["block1.0.attn.q.weight"]
    state["block1.0.attn.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_weights(random_segformer("daformer", seed=9), path)
    message = str(error.value)
    assert message.startswith(f"{path} (NVlabs MiT encoder layout, names after conversion) does not fit the mit_b0 encoder")
    assert "missing keys: stages.0.blocks.0.attn.q.weight" in message
    assert "unexpected keys: stages.0.blocks.0.attn.extra.weight" in message


def test_other_variant_is_refused_with_shapes(tmp_path):
    torch.manual_seed(0)
    b1 = SegFormer(num_classes=5, encoder="mit_b1", head="daformer")
    path = tmp_path / "mit_b1.pth"
    torch.save(nvlabs_encoder(b1), path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"shape mismatch: patch_embed\.proj\.weight: file 64x3x7x7 vs model 32x3x7x7"):
        load_weights(random_segformer("daformer", seed=9), path)


def test_partial_head_is_refused(daformer, tmp_path):
    head = daformer_head(part(daformer, "head."))
    del head["fuse_layer.bottleneck.bn.weight"]
    path = tmp_path / "daformer.pth"
    torch.save({"state_dict": mmseg_model(daformer, head)}, path)
    with pytest.raises(CheckpointMismatchError,
                       match="does not fit the daformer head; missing keys: head.bottleneck.bn.weight"):
        load_weights(random_segformer("daformer", seed=9), path)


def test_other_class_count_or_head_kind_keeps_the_head_random(daformer, segformer, tmp_path):
    path = tmp_path / "daformer.pth"
    torch.save(uda(daformer, daformer), path)
    seven = random_segformer("daformer", seed=9, num_classes=7)
    with pytest.warns(UserWarning,
                      match="head left random: shapes differ: head.classifier.weight: file 5x256x1x1 vs model 7x256x1x1"):
        description = load_weights(seven, path)
    assert "+ head random (shapes differ" in description
    key = "encoder.model.patch_embed.proj.weight"
    assert torch.equal(seven.state_dict()[key], daformer.state_dict()[key])
    with pytest.warns(UserWarning, match="the file's head is a daformer head, the model's a segformer head"):
        load_weights(random_segformer("segformer", seed=9), path)


def test_ema_on_a_file_without_teacher_is_refused(daformer, tmp_path):
    path = tmp_path / "mit_b0.pth"
    torch.save(nvlabs_encoder(daformer), path)
    with pytest.raises(CheckpointMismatchError, match="EMA teacher was asked for .* no DAFormer/HRDA/MIC UDA checkpoint"):
        load_weights(random_segformer("daformer", seed=9), path, ema=True)


def test_not_a_mit_file_is_refused(tmp_path):
    path = tmp_path / "deeplab.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(CheckpointMismatchError, match="no weights layout we read for encoder 'mit_b0'"):
        load_weights(random_segformer("daformer", seed=9), path)


def test_missing_file_says_where_mit_weights_come_from(tmp_path):
    model = SegFormer(num_classes=5, encoder="mit_b0", pretrained=str(tmp_path / "mit_b0.pth"))
    with pytest.raises(FileNotFoundError, match="mit_b0.pth .. mit_b5.pth"):
        model.load_pretrained()


# ---------------------------------------------------------------- other file kinds and encoders


def test_safetensors_file(segformer, tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in hf_segformer(segformer).items()}, path)
    model = random_segformer("segformer", seed=9)
    assert "Hugging Face SegFormer" in load_weights(model, path)
    for k, v in segformer.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_timm_file_of_another_encoder(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("convnext_atto", pretrained=False).state_dict()  # with its ImageNet head
    path = tmp_path / "convnext_atto.pth"
    torch.save(source, path)
    model = SegFormer(num_classes=3, encoder="convnext_atto", head="segformer", pretrained=str(path))
    description = model.load_pretrained()
    loaded = part(model, "encoder.model.")
    assert loaded and all(torch.equal(v, source[k]) for k, v in loaded.items())
    assert description.startswith("convnext_atto encoder (124 tensors) + head random")
    assert description.endswith("[timm; dropped the classifier (head.norm.weight, head.norm.bias, head.fc.weight, head.fc.bias)]")


def test_timm_file_of_a_vit_has_its_position_embedding_resampled(tmp_path):
    """timm's own checkpoint_filter_fn adapts a ViT file to the model's grid (here 37x37 -> 4x4 patches)."""
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=2).state_dict()
    path = tmp_path / "dinov2.pth"
    torch.save(source, path)
    model = SegFormer(num_classes=3, encoder="vit_small_patch14_dinov2", head="segformer",
                      encoder_args={"depth": 2, "img_size": 56}, pretrained=str(path))
    description = model.load_pretrained()
    assert source["pos_embed"].shape == (1, 1 + 37 * 37, 384) and model.encoder.model.pos_embed.shape == (1, 1 + 4 * 4, 384)
    assert torch.equal(model.encoder.model.blocks[1].attn.qkv.weight, source["blocks.1.attn.qkv.weight"])
    assert description.startswith("vit_small_patch14_dinov2 encoder (") and "[timm]" in description
