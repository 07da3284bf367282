"""MiT / SegFormer / DAFormer weights from any release, converted to our module names, loaded strictly.

Layouts read (detected from the keys, after unwrapping ``state_dict`` / ``model`` wrappers and ``module.``):

- NVlabs MiT ImageNet files ``mit_b0.pth`` .. ``mit_b5.pth``: ``patch_embed1.*``, ``block1.0.*``, ``norm1.*``
  (``head.*``, the ImageNet classifier, is dropped); mapped by timm's ``pvt_v2.checkpoint_filter_fn``;
- mmseg 0.x checkpoints (NVlabs SegFormer releases, DAFormer): ``state_dict`` with ``backbone.`` + NVlabs names,
  the all-MLP head under ``decode_head.linear_c{1..4}`` / ``linear_fuse`` / ``linear_pred``;
- DAFormer / HRDA / MIC UDA checkpoints: the same under ``model.`` (student, the default), ``ema_model.``
  (EMA teacher, ``ema=True``) and ``imnet_model.`` (ignored); DAFormer's head under ``decode_head.`` (HRDA/MIC-HRDA:
  ``decode_head.head.``, its scale attention is dropped);
- OpenMMLab mmsegmentation MiT (``layers.{i}.{0: patch embedding, 1: blocks, 2: norm}``, with or without
  ``backbone.``; q and kv fused in ``attn.attn.in_proj_*`` in every stage, 1x1-conv FFN ``ffn.layers.{0,1,4}``),
  names per mmseg's ``mit.py`` / ``tools/model_converters/mit2mmseg.py``;
- Hugging Face SegFormer (``segformer.encoder.*``, key and value separate; ``decode_head.linear_c.*``);
- timm (``patch_embed.*``, ``stages.*``; for other timm encoders, that model's own names);
- our own checkpoints (``encoder.model.*``, ``head.*``).

Heads are loaded only where the file holds a head of ours whose names map by published facts
(NVlabs SegFormer head: the name mapping of HF's conversion script; DAFormer head: mmseg/mmcv module
names ``conv``/``bn``/``depthwise_conv``/``pointwise_conv``/``conv_seg`` under DAFormer's ``embed_layers``
and ``fuse_layer``); any other head (e.g. mmseg 1.x's SegformerHead, which differs in structure) leaves
ours random, and the description says so.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch
from timm.models import pvt_v2
from torch import Tensor

from intrada_pl.models.encoders import TimmEncoder, is_mit
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.models.weights import CheckpointMismatchError, is_lightning_checkpoint, read_checkpoint, unwrap_state_dict


#: ``mit_bX`` -> (stage-1 width, blocks per stage): how a file's encoder names its variant.
MIT_SHAPES = {
    "mit_b0": (32, (2, 2, 2, 2)), "mit_b1": (64, (2, 2, 2, 2)), "mit_b2": (64, (3, 4, 6, 3)),
    "mit_b3": (64, (3, 4, 18, 3)), "mit_b4": (64, (3, 8, 27, 3)), "mit_b5": (64, (3, 6, 40, 3)),
}
ACCEPTED_LAYOUTS = (
    "NVlabs MiT (mit_bX.pth), mmseg 0.x / NVlabs SegFormer, DAFormer/HRDA/MIC UDA checkpoints, OpenMMLab "
    "mmsegmentation, Hugging Face SegFormer, timm, or a checkpoint of ours")
_SHOWN_KEYS = 5
_UDA_PREFIXES = ("model", "ema_model")

Rule = tuple[str, Callable[[re.Match, Tensor], list[tuple[str, Tensor]]]]


def _to(template: str) -> Callable[[re.Match, Tensor], list[tuple[str, Tensor]]]:
    """A rule target: the key renamed by ``template`` (``re`` group references), the tensor unchanged."""
    return lambda m, v: [(m.expand(template), v)]


def _conv1x1_to(template: str) -> Callable[[re.Match, Tensor], list[tuple[str, Tensor]]]:
    """mmseg's FFN is 1x1 convs (out x in x 1 x 1); timm's is Linear (out x in)."""
    return lambda m, v: [(m.expand(template), v.flatten(1) if v.ndim == 4 else v)]


def _split_in_proj(m: re.Match, v: Tensor) -> list[tuple[str, Tensor]]:
    """nn.MultiheadAttention's fused in_proj = [q; k; v]: timm's ``q`` is the first third, ``kv`` the rest."""
    dim = v.shape[0] // 3
    prefix, kind = m.expand(r"stages.\1.blocks.\2.attn"), m[3]
    return [(f"{prefix}.q.{kind}", v[:dim]), (f"{prefix}.kv.{kind}", v[dim:])]


_MMSEG_ENCODER: list[Rule] = [
    (r"layers\.0\.0\.projection\.(\w+)", _to(r"patch_embed.proj.\1")),
    (r"layers\.0\.0\.norm\.(\w+)", _to(r"patch_embed.norm.\1")),
    (r"layers\.(\d)\.0\.projection\.(\w+)", _to(r"stages.\1.downsample.proj.\2")),
    (r"layers\.(\d)\.0\.norm\.(\w+)", _to(r"stages.\1.downsample.norm.\2")),
    (r"layers\.(\d)\.1\.(\d+)\.(norm[12])\.(\w+)", _to(r"stages.\1.blocks.\2.\3.\4")),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", _split_in_proj),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(\w+)", _to(r"stages.\1.blocks.\2.attn.proj.\3")),
    (r"layers\.(\d)\.1\.(\d+)\.attn\.(sr|norm)\.(\w+)", _to(r"stages.\1.blocks.\2.attn.\3.\4")),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.0\.(\w+)", _conv1x1_to(r"stages.\1.blocks.\2.mlp.fc1.\3")),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.1\.(\w+)", _to(r"stages.\1.blocks.\2.mlp.dwconv.\3")),
    (r"layers\.(\d)\.1\.(\d+)\.ffn\.layers\.4\.(\w+)", _conv1x1_to(r"stages.\1.blocks.\2.mlp.fc2.\3")),
    (r"layers\.(\d)\.2\.(\w+)", _to(r"stages.\1.norm.\2")),
]
_HF_BLOCK = r"segformer\.encoder\.block\.(\d)\.(\d+)\."
_HF_ENCODER: list[Rule] = [
    (r"segformer\.encoder\.patch_embeddings\.0\.proj\.(\w+)", _to(r"patch_embed.proj.\1")),
    (r"segformer\.encoder\.patch_embeddings\.0\.layer_norm\.(\w+)", _to(r"patch_embed.norm.\1")),
    (r"segformer\.encoder\.patch_embeddings\.(\d)\.proj\.(\w+)", _to(r"stages.\1.downsample.proj.\2")),
    (r"segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.(\w+)", _to(r"stages.\1.downsample.norm.\2")),
    (_HF_BLOCK + r"layer_norm_([12])\.(\w+)", _to(r"stages.\1.blocks.\2.norm\3.\4")),
    (_HF_BLOCK + r"attention\.self\.query\.(\w+)", _to(r"stages.\1.blocks.\2.attn.q.\3")),
    (_HF_BLOCK + r"attention\.self\.kv\.(\w+)", _to(r"stages.\1.blocks.\2.attn.kv.\3")),  # key+value, joined first
    (_HF_BLOCK + r"attention\.self\.sr\.(\w+)", _to(r"stages.\1.blocks.\2.attn.sr.\3")),
    (_HF_BLOCK + r"attention\.self\.layer_norm\.(\w+)", _to(r"stages.\1.blocks.\2.attn.norm.\3")),
    (_HF_BLOCK + r"attention\.output\.dense\.(\w+)", _to(r"stages.\1.blocks.\2.attn.proj.\3")),
    (_HF_BLOCK + r"mlp\.dense1\.(\w+)", _to(r"stages.\1.blocks.\2.mlp.fc1.\3")),
    (_HF_BLOCK + r"mlp\.dwconv\.dwconv\.(\w+)", _to(r"stages.\1.blocks.\2.mlp.dwconv.\3")),
    (_HF_BLOCK + r"mlp\.dense2\.(\w+)", _to(r"stages.\1.blocks.\2.mlp.fc2.\3")),
    (r"segformer\.encoder\.layer_norm\.(\d)\.(\w+)", _to(r"stages.\1.norm.\2")),
]
# Heads, from the file's decode-head names to ours.
_NVLABS_SEGFORMER_HEAD: list[Rule] = [
    (r"linear_c([1-4])\.proj\.(\w+)", lambda m, v: [(f"head.embed.{int(m[1]) - 1}.{m[2]}", v)]),
    (r"linear_fuse\.conv\.weight", _to("head.fuse_conv.conv.weight")),
    (r"linear_fuse\.bn\.(\w+)", _to(r"head.fuse_conv.bn.\1")),
    (r"linear_pred\.(\w+)", _to(r"head.classifier.\1")),
]
_HF_SEGFORMER_HEAD: list[Rule] = [
    (r"linear_c\.([0-3])\.proj\.(\w+)", _to(r"head.embed.\1.\2")),
    (r"linear_fuse\.weight", _to("head.fuse_conv.conv.weight")),
    (r"batch_norm\.(\w+)", _to(r"head.fuse_conv.bn.\1")),
    (r"classifier\.(\w+)", _to(r"head.classifier.\1")),
]
_DAFORMER_HEAD: list[Rule] = [
    (r"embed_layers\.([0-3])\.proj\.(\w+)", _to(r"head.embed.\1.\2")),
    (r"fuse_layer\.aspp_modules\.0\.(conv|bn)\.(\w+)", _to(r"head.aspp.0.\1.\2")),
    (r"fuse_layer\.aspp_modules\.([1-3])\.(depthwise|pointwise)_conv\.(conv|bn)\.(\w+)", _to(r"head.aspp.\1.\2.\3.\4")),
    (r"fuse_layer\.bottleneck\.(conv|bn)\.(\w+)", _to(r"head.bottleneck.\1.\2")),
    (r"conv_seg\.(\w+)", _to(r"head.classifier.\1")),
]


@dataclass
class Converted:
    """A weight file in our names: ``backbone`` (relative to ``encoder.model``: timm's names), ``decoder``
    (``head.*``, and ``encoder.pyramid.*`` in our own files) when the file has a head of ``head`` kind."""

    layout: str
    backbone: dict[str, Tensor]
    decoder: dict[str, Tensor] = field(default_factory=dict)
    head: str | None = None
    notes: list[str] = field(default_factory=list)


def read_weights(path: str | Path) -> Mapping:
    """A ``.pth``/``.bin``/``.ckpt`` (``torch.load``, weights only) or ``.safetensors`` file, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path} (segmenter.init_args.pretrained). MiT ImageNet weights are "
            "mit_b0.pth .. mit_b5.pth (NVlabs/SegFormer README) or nvidia/mit-b0 .. mit-b5 (Hugging Face); "
            "give the local file, or null for a random init")
    if path.suffix != ".safetensors":
        return read_checkpoint(path)
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # whatever the reader tripped over, the file is not a safetensors file
        raise CheckpointMismatchError(
            f"{path} is not a readable safetensors file ({type(error).__name__}: {error})") from None


def convert(blob: Mapping, source: str, ema: bool = False, encoder: TimmEncoder | None = None) -> Converted | None:
    """``blob`` (a loaded file) in our names, or None when it is in no layout we read.

    ``encoder`` (the model's, when loading into one) lets a timm file of any other encoder through
    that model's own ``checkpoint_filter_fn``; without it only MiT-family layouts are recognised."""
    state, notes = _select(blob, source, ema)
    converted = _convert_state(state)
    if converted is None and encoder is not None and not is_mit(encoder.name):
        converted = Converted("timm", _timm_filter(state, encoder))
    if converted is not None:
        converted.notes[:0] = notes
    return converted


def _select(blob: Mapping, source: str, ema: bool) -> tuple[dict[str, Tensor], list[str]]:
    """The flat state dict of the network to load, and what was chosen or ignored on the way."""
    if is_lightning_checkpoint(blob):
        calibration = (blob.get("hyper_parameters") or {}).get("calibration")
        if calibration is not None:
            raise CheckpointMismatchError(f"{source} is a {calibration} calibration checkpoint (converted norm layers); "
                                          "start from a segmentation checkpoint, e.g. the one it calibrated")
        return unwrap_state_dict(blob), []
    for wrapper in ("state_dict", "model"):
        if isinstance(blob.get(wrapper), Mapping):
            blob = blob[wrapper]
    state = {k: v for k, v in blob.items() if isinstance(v, Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    if not any(k.startswith(f"{p}.backbone.") for p in _UDA_PREFIXES for k in state):
        if ema:
            raise CheckpointMismatchError(f"{source}: the EMA teacher was asked for (ema / pretrained_ema), but the file "
                                          "is no DAFormer/HRDA/MIC UDA checkpoint with ema_model.* weights")
        return state, []
    chosen = "ema_model" if ema else "model"
    if not any(k.startswith(f"{chosen}.") for k in state):
        raise CheckpointMismatchError(f"{source}: UDA checkpoint without {chosen}.* weights")
    ignored = sorted({k.split(".", 1)[0] for k in state} - {chosen})
    who = "EMA teacher (ema_model.*)" if ema else "student (model.*)"
    note = f"DAFormer/HRDA/MIC UDA checkpoint: loaded its {who}"
    return _strip(state, f"{chosen}."), [note + (f", ignored {_prefixes(ignored)}" if ignored else "")]


def _prefixes(names: Iterable[str]) -> str:
    return ", ".join(f"{n}.*" for n in names)


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _convert_state(state: dict[str, Tensor]) -> Converted | None:
    """Recognise the layout of a flat state dict and convert it (None: not a MiT-family layout)."""
    if any(k.startswith("encoder.model.") for k in state):
        decoder = {k: v for k, v in state.items() if not k.startswith("encoder.model.")}
        kinds = {"head.fuse_conv.conv.weight": "segformer", "head.aspp.0.conv.weight": "daformer"}
        kind = next((kind for key, kind in kinds.items() if key in decoder), None)
        return Converted("intrada_pl checkpoint", _strip(state, "encoder.model."), decoder, kind)
    if any(k.startswith("segformer.encoder.") for k in state):
        return _convert_hf(state)
    if any(k.startswith("backbone.") for k in state):
        return _convert_mmseg(state)
    return _convert_encoder_file(state)


def _encoder_style(state: Mapping[str, Tensor]) -> str | None:
    if "patch_embed1.proj.weight" in state:
        return "NVlabs"
    if "layers.0.0.projection.weight" in state:
        return "OpenMMLab mmsegmentation"
    if "patch_embed.proj.weight" in state and "stages.0.blocks.0.attn.kv.weight" in state:
        return "timm"
    return None


def _backbone(state: dict[str, Tensor], style: str) -> dict[str, Tensor]:
    """An encoder state dict of ``style`` in timm's pvt_v2 names."""
    if style == "NVlabs":
        return pvt_v2.checkpoint_filter_fn(state, None)
    if style == "OpenMMLab mmsegmentation":
        return _apply(_MMSEG_ENCODER, state)
    return dict(state)


def _convert_encoder_file(state: dict[str, Tensor]) -> Converted | None:
    """An encoder-only file (ImageNet weights): NVlabs, mmseg-converted or timm names; ``head.*`` dropped."""
    style = _encoder_style(state)
    if style is None:
        return None
    classifier = [k for k in state if k.startswith("head.")]
    encoder = {k: v for k, v in state.items() if not k.startswith("head.")}
    notes = [f"dropped the ImageNet classifier ({len(classifier)} head.* tensors)"] if classifier else []
    return Converted(f"{style} MiT encoder", _backbone(encoder, style), notes=notes)


def _convert_mmseg(state: dict[str, Tensor]) -> Converted | None:
    """An mmseg EncoderDecoder (``backbone.*``, ``decode_head.*``): NVlabs SegFormer, DAFormer, HRDA, MIC, mmseg."""
    encoder = _strip(state, "backbone.")
    style = _encoder_style(encoder)
    if style is None:
        return None
    others = sorted({k.split(".", 1)[0] for k in state} - {"backbone", "decode_head"})
    converted = Converted(f"mmseg checkpoint ({style} MiT names)", _backbone(encoder, style),
                          notes=[f"ignored {_prefixes(others)}"] if others else [])
    _read_head(converted, _strip(state, "decode_head."))
    return converted


def _convert_hf(state: dict[str, Tensor]) -> Converted:
    """Hugging Face SegformerForSemanticSegmentation / SegformerForImageClassification / SegformerModel."""
    encoder = _join_hf_key_value({k: v for k, v in state.items() if k.startswith("segformer.")})
    converted = Converted("Hugging Face SegFormer", _apply(_HF_ENCODER, encoder))
    if any(k.startswith("classifier.") for k in state):
        converted.notes.append("dropped the ImageNet classifier (classifier.*)")
    head = _strip(state, "decode_head.")
    if head:
        _use_head(converted, head, _HF_SEGFORMER_HEAD, "segformer", dropped=())
    return converted


def _join_hf_key_value(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF splits the attention's key and value projections; timm keeps them as one ``kv`` (key rows first)."""
    joined = {}
    for k, v in state.items():
        if ".attention.self.value." in k:
            continue
        if ".attention.self.key." in k:
            value = state.get(k.replace(".key.", ".value."))
            if value is None:
                joined[k] = v  # left for the strict check to name
                continue
            k, v = k.replace(".key.", ".kv."), torch.cat([v, value], dim=0)
        joined[k] = v
    return joined


def _read_head(converted: Converted, head: dict[str, Tensor]) -> None:
    """Map an mmseg decode head of ours (NVlabs SegFormer, DAFormer, HRDA's DAFormer) or say why the head stays random."""
    if not head:
        return
    if "linear_c1.proj.weight" in head:
        _use_head(converted, head, _NVLABS_SEGFORMER_HEAD, "segformer", dropped=("conv_seg.",))
    elif "embed_layers.0.proj.weight" in head:
        _use_head(converted, head, _DAFORMER_HEAD, "daformer", dropped=())
    elif "head.embed_layers.0.proj.weight" in head:
        converted.notes.append("HRDA head: loaded its DAFormer head decode_head.head.*, dropped its scale attention "
                               "decode_head.scale_attention.* (single-scale inference, not HRDA's multi-resolution fusion)")
        _use_head(converted, _strip(head, "head."), _DAFORMER_HEAD, "daformer", dropped=())
    else:
        converted.notes.append(
            f"head random: the file's decode_head ({_first(sorted(head))}) is not a SegFormer or DAFormer head")


def _use_head(converted: Converted, head: dict[str, Tensor], rules: list[Rule], kind: str,
              dropped: tuple[str, ...]) -> None:
    """Take the head if every one of its tensors maps to ours; otherwise say which did not, head random."""
    kept = {k: v for k, v in head.items() if not k.startswith(dropped)}
    unmapped = [k for k in kept if not any(re.fullmatch(p, k) for p, _ in rules)]
    if unmapped:
        converted.notes.append(f"head random: {kind}-like decode_head with tensors we cannot map ({_first(unmapped)})")
        return
    converted.decoder, converted.head = _apply(rules, kept), kind
    if len(kept) < len(head):
        converted.notes.append(f"dropped the unused {_prefixes('decode_head.' + p.rstrip('.') for p in dropped)}")


def _apply(rules: Iterable[Rule], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every key by the first rule whose pattern it fully matches; unmatched keys pass unchanged
    (the strict check names them)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, target in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out.update(target(m, value))
                break
        else:
            out[key] = value
    return out


def _timm_filter(state: dict[str, Tensor], encoder: TimmEncoder) -> dict[str, Tensor]:
    """A timm file of any encoder, through its model's ``checkpoint_filter_fn`` (name fixes, position-embedding
    resampling) when the model's module has one."""
    filter_fn = getattr(sys.modules[type(encoder.model).__module__], "checkpoint_filter_fn", None)
    return dict(filter_fn(state, encoder.model)) if filter_fn is not None else state


def mit_variant(backbone: Mapping[str, Tensor]) -> str | None:
    """``mit_b0`` .. ``mit_b5`` from an encoder state dict in timm names (width and blocks per stage), or None."""
    stem = backbone.get("patch_embed.proj.weight")
    if stem is None:
        return None
    blocks = [{m[1] for k in backbone if (m := re.match(rf"stages\.{i}\.blocks\.(\d+)\.", k))} for i in range(4)]
    shape = (stem.shape[0], tuple(len(b) for b in blocks))
    return next((name for name, s in MIT_SHAPES.items() if s == shape), None)


# ---------------------------------------------------------------- loading into a model


def _fmt(shape: torch.Size) -> str:
    return "x".join(map(str, shape))


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _differences(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys (BN ``num_batches_tracked`` may be absent), unexpected keys, shape mismatches."""
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k}: file {_fmt(v.shape)} vs model {_fmt(expected[k].shape)}"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    return missing, unexpected, wrong


def _mismatch(source: str, what: str, layout: str, missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    parts = [f"{label}: {_first(keys)}" for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)) if keys]
    return f"{source} ({layout} layout, names after conversion) does not fit {what}; " + "; ".join(parts)


def _drop_classifier(backbone: dict[str, Tensor], expected: Mapping[str, Tensor], encoder: TimmEncoder) -> list[str]:
    """Remove a timm file's classifier tensors (the model's were pruned); return their names."""
    names = encoder.model.pretrained_cfg.get("classifier") or "head"
    prefixes = tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names)) + ("head.", "fc_norm.")
    dropped = [k for k in backbone if k not in expected and k.startswith(prefixes)]
    for k in dropped:
        del backbone[k]
    return dropped


def load_weights(model: Segmenter, path: str | Path, ema: bool = False) -> str:
    """Initialise a :class:`~intrada_pl.models.segformer.SegFormer` from ``path``; return what was loaded.

    The encoder must match exactly (a partial or misshapen encoder is refused with one
    :class:`CheckpointMismatchError` naming the keys); the head is loaded when the file holds a head of
    the model's kind with the same shapes, else it keeps its random init and the description says why.
    """
    source = str(path)
    converted = convert(read_weights(path), source, ema=ema, encoder=model.encoder)
    if converted is None:
        raise CheckpointMismatchError(f"{source}: no weights layout we read for encoder {model.encoder_name!r}; "
                                      f"expected {ACCEPTED_LAYOUTS}")
    expected = model.encoder.model.state_dict()
    backbone = dict(converted.backbone)
    if converted.layout == "timm" and (dropped := _drop_classifier(backbone, expected, model.encoder)):
        converted.notes.append(f"dropped the classifier ({_first(dropped)})")
    differences = _differences(expected, backbone)
    if any(differences):
        raise CheckpointMismatchError(
            _mismatch(source, f"the {model.encoder_name} encoder", converted.layout, *differences))
    model.encoder.model.load_state_dict(backbone, strict=False)  # keys verified (num_batches_tracked may be absent)
    head = _load_decoder(model, converted, source)
    notes = "; ".join(converted.notes)
    return (f"{model.encoder_name} encoder ({len(backbone)} tensors) {head} from {source} "
            f"[{converted.layout}{'; ' + notes if notes else ''}]")


def _load_decoder(model: Segmenter, converted: Converted, source: str) -> str:
    """Load the file's head into the model's when it is of the same kind and shape; say what happened."""
    if converted.head is None:
        return "+ head random (the file has no head of ours)"
    if converted.head != model.head_name:
        return _random_head(f"the file's head is a {converted.head} head, the model's a {model.head_name} head")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.model.")}
    missing, unexpected, wrong = _differences(expected, converted.decoder)
    if missing or unexpected:
        raise CheckpointMismatchError(
            _mismatch(source, f"the {model.head_name} head", converted.layout, missing, unexpected, []))
    if wrong:
        return _random_head(f"shapes differ: {_first(wrong)}")
    model.load_state_dict(converted.decoder, strict=False)  # decoder keys verified above, encoder loaded before
    return f"+ {converted.head} head ({len(converted.decoder)} tensors)"


def _random_head(reason: str) -> str:
    warnings.warn(f"head left random: {reason}", UserWarning, stacklevel=3)
    return f"+ head random ({reason})"
