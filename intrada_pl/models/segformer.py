"""SegFormer-style segmenters: a timm encoder (MiT-B0..B5 or any timm model) + a SegFormer or DAFormer head.

``SegFormer(num_classes=19, encoder="mit_b5", head="daformer", pretrained=PATH)`` is DAFormer's
network; ``head="segformer"`` is SegFormer's. ``forward`` returns ``(None, logits)`` on the finest
feature grid (stride 4 for pyramid encoders); stages upsample. Weights come from local files only
(:mod:`intrada_pl.models.mit_weights` reads every MiT release layout).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.models.encoders import NUM_LEVELS, TimmEncoder
from intrada_pl.models.heads import HEADS, FusionHead
from intrada_pl.models.mit_weights import convert, load_weights, mit_variant
from intrada_pl.models.preprocessing import InputNormalization
from intrada_pl.models.segmenter import ParamGroup, Segmenter
from intrada_pl.models.weights import CheckpointMismatchError

#: The all-MLP head's width in SegFormer: 256 for MiT-B0/B1, 768 otherwise; DAFormer's head: 256.
_SMALL_SEGFORMER_ENCODERS = ("mit_b0", "mit_b1")
DAFORMER_CHANNELS = 256
# Parameter groups and their weight-decay multipliers.
_GROUP_MULTS = {"encoder": 1.0, "encoder_no_decay": 0.0, "head": 1.0, "head_no_decay": 0.0}


def default_head_channels(encoder: str, head: str) -> int:
    """The published head width for an encoder / head pair."""
    if head == "segformer":
        return 256 if encoder in _SMALL_SEGFORMER_ENCODERS else 768
    return DAFORMER_CHANNELS


class SegFormer(Segmenter):
    """Encoder (``self.encoder(x)`` -> four maps, finest first) + decoder (``self.head``); no aux head.

    Args:
        num_classes: output classes.
        encoder: ``mit_b0`` .. ``mit_b5`` (MiT, as timm's ``pvt_v2_bX`` with MiT's 4x MLPs and drop-path 0.1),
            or any timm model name: a pyramid's last four stages, or a plain ViT through a simple feature pyramid.
        head: ``"daformer"`` (context-aware fusion, DAFormer/HRDA/MIC) or ``"segformer"`` (all-MLP).
        pretrained: a local weight file loaded by :meth:`load_pretrained` (any MiT release layout, a timm
            file of the encoder, or a checkpoint of ours); None: random init.
        pretrained_ema: from a DAFormer/HRDA/MIC UDA checkpoint load the EMA teacher (``ema_model.*``)
            instead of the student (``model.*``).
        head_channels: the head's embedding width; None: the published one (:func:`default_head_channels`).
        head_lr_mult: learning-rate multiplier of the randomly initialised parts (head, and a ViT's
            feature pyramid); the MiT recipe uses 10.
        encoder_args: extra ``timm.create_model`` arguments (e.g. ``{"drop_path_rate": 0.2}``, a ViT's ``img_size``).
        activation_checkpointing: recompute encoder activations in the backward pass (timm's
            ``set_grad_checkpointing``) to save memory.
        preprocessing: the input normalisation (the ImageNet statistics every MiT/timm release expects).
    """

    def __init__(self, num_classes: int = 19, encoder: str = "mit_b5", head: str = "daformer",
                 pretrained: str | None = None, pretrained_ema: bool = False, head_channels: int | None = None,
                 head_lr_mult: float = 10.0, encoder_args: dict[str, Any] | None = None,
                 activation_checkpointing: bool = False, preprocessing: str = "imagenet") -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigValueError(f"unknown head {head!r}; expected one of: {', '.join(HEADS)}")
        self.num_classes = num_classes
        self.multi_level = False
        self.preprocessing = preprocessing
        self.pretrained = pretrained
        self.pretrained_ema = pretrained_ema
        self.encoder_name = encoder
        self.head_name = head
        self.head_lr_mult = head_lr_mult
        self.normalize = InputNormalization(preprocessing)
        self.encoder = TimmEncoder(encoder, encoder_args)
        if activation_checkpointing:
            self.encoder.model.set_grad_checkpointing(True)
        channels = head_channels or default_head_channels(encoder, head)
        self.head: FusionHead = HEADS[head](self.encoder.out_channels, channels, num_classes)

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        return None, self.head(self.encoder(self.normalize(images)))

    def param_groups(self) -> list[ParamGroup]:
        """``encoder`` (lr x1, decay x1); ``encoder_no_decay``: its norm weights, biases (every 0-d/1-d
        tensor) and what timm exempts (position embeddings, tokens), decay 0; ``head`` (lr x ``head_lr_mult``)
        and ``head_no_decay`` (the head's norms and biases, decay 0). A ViT's feature pyramid is randomly
        initialised, so it trains with the head. Empty groups are left out."""
        exempt = {f"encoder.model.{n}" for n in self.encoder.no_weight_decay_names()}
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in _GROUP_MULTS}
        for name, param in self.named_parameters():
            if param.requires_grad:
                part = "encoder" if name.startswith("encoder.model.") else "head"
                groups[part + ("_no_decay" if param.ndim <= 1 or name in exempt else "")].append(param)
        return [ParamGroup(name=name, params=params, lr_mult=self.head_lr_mult if name.startswith("head") else 1.0,
                           decay_mult=_GROUP_MULTS[name]) for name, params in groups.items() if params]

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        """``encoder``, ``stage1``..``stage4`` (pyramid encoders; MiT's stage 1 includes its first patch
        embedding), ``pyramid`` (a ViT's feature pyramid) and ``head``."""
        groups: dict[str, tuple[str, ...]] = {"encoder": ("encoder.model.*",)}
        if self.encoder.pyramid is None:
            for i, module in enumerate(self.encoder.stage_modules[-NUM_LEVELS:], start=1):
                stem = ("encoder.model.patch_embed.*",) if i == 1 and hasattr(self.encoder.model, "patch_embed") else ()
                groups[f"stage{i}"] = (*stem, f"encoder.model.{module}.*")
        else:
            groups["pyramid"] = ("encoder.pyramid.*",)
        groups["head"] = ("head.*",)
        return groups

    def load_pretrained(self) -> str:
        """Load ``self.pretrained`` (:func:`~intrada_pl.models.mit_weights.load_weights`); None: warn, keep random."""
        if self.pretrained is None:
            warnings.warn(f"no pretrained weights given: starting {self.encoder_name} + {self.head_name} head "
                          "from random init", UserWarning, stacklevel=2)
            return "random"
        return load_weights(self, self.pretrained, ema=self.pretrained_ema)


def release_spec_and_state(blob: Mapping, source: str,
                           ema: bool = False) -> tuple[dict[str, Any], dict[str, Tensor], str] | None:
    """The factory's hook for released MiT-family segmentation files: ``(spec, state dict in our names,
    description)``, or None when ``blob`` is in no MiT-family layout.

    The file must hold a whole segmenter (a MiT encoder and a head of ours); an encoder-only file (ImageNet
    weights) or one whose head we do not implement is refused, with the hint to train from it instead.
    """
    converted = convert(blob, source, ema=ema)
    if converted is None:
        return None
    variant = mit_variant(converted.backbone)
    if variant is None:
        raise CheckpointMismatchError(f"{source}: a {converted.layout} file whose encoder is none of MiT-B0..B5")
    if converted.head is None:
        reason = "; ".join(n for n in converted.notes if n.startswith("head random")) or "it holds no segmentation head"
        raise CheckpointMismatchError(
            f"{source}: a {variant} encoder without a head of ours ({reason}); to train from it give it as "
            "segmenter.init_args.pretrained")
    num_classes = converted.decoder["head.classifier.weight"].shape[0]
    channels = converted.decoder["head.embed.0.weight"].shape[0]
    head_channels = None if channels == default_head_channels(variant, converted.head) else channels
    # The spec Component records for these arguments, without building the network.
    spec = SegFormer.__new__(SegFormer, num_classes=num_classes, encoder=variant, head=converted.head,
                             head_channels=head_channels).spec()
    state = {**{f"encoder.model.{k}": v for k, v in converted.backbone.items()}, **converted.decoder}
    notes = "; ".join(converted.notes)
    description = (f"{variant} + {converted.head} head ({num_classes} classes) from {source} "
                   f"[{converted.layout}{'; ' + notes if notes else ''}]")
    return spec, state, description
