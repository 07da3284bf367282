"""Segmentation networks behind one interface, the factory that builds them, discriminator,
input normalisation and weight loading."""

from intrada_pl.models.deeplabv2 import DeepLabV2, reference_lr_multiplicity
from intrada_pl.models.discriminator import FCDiscriminator
from intrada_pl.models.factory import SegmenterInfo, build_segmenter, load_segmenter
from intrada_pl.models.preprocessing import PREPROCESSING, InputNormalization
from intrada_pl.models.segformer import SegFormer
from intrada_pl.models.segmenter import ParamGroup, Segmenter
from intrada_pl.models.weights import (
    CheckpointMismatchError,
    infer_architecture,
    load_pretrained,
    load_reference_checkpoint,
    read_state_dict,
)

__all__ = [
    "PREPROCESSING",
    "CheckpointMismatchError",
    "DeepLabV2",
    "FCDiscriminator",
    "InputNormalization",
    "ParamGroup",
    "SegFormer",
    "Segmenter",
    "SegmenterInfo",
    "build_segmenter",
    "infer_architecture",
    "load_pretrained",
    "load_reference_checkpoint",
    "load_segmenter",
    "read_state_dict",
    "reference_lr_multiplicity",
]
