"""The one way to get a segmenter: from a config block, from any stage's checkpoint, or from a
released weight file.

Every path that needs a network goes through here: a stage's ``segmenter:`` block (jsonargparse
builds it, :func:`build_segmenter` is the same for Python callers), ``--model.pretrained`` /
calibration ``init_ckpt`` / ranking / ``intrada test`` (:func:`load_segmenter`). A checkpoint is read
once and its kind decided from its keys: a Lightning checkpoint of ours names its segmenter in its
hyper-parameters (``segmenter: {class_path, init_args}``; checkpoints written before segmenters were
components hold DeepLabV2's flat ``num_classes``/``depth``/``preprocessing`` keys instead, and are
read as such); any other file is a released state dict, recognised by its key layout.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from intrada_pl.models.channel_calibration import CALIBRATION_METHODS, convert_for_calibration
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.segformer import release_spec_and_state as segformer_release
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.models.weights import (
    ACCEPTED_CHECKPOINTS,
    LIGHTNING_SEGMENTER_PREFIX,
    CheckpointMismatchError,
    infer_architecture,
    is_lightning_checkpoint,
    load_state_checked,
    read_checkpoint,
    unwrap_state_dict,
)

# Hyper-parameters of a calibration checkpoint that shape its calibration layers.
CALIBRATION_OPTIONS = ("init_strength", "num_basis", "hidden_dim", "condition", "sites", "select")
# The flat hyper-parameters of a DeepLabV2 stage checkpoint written before ``segmenter:`` existed.
LEGACY_DEEPLAB_KEYS = ("num_classes", "depth", "multi_level", "preprocessing", "pretrained", "head_lr_mult")
DEEPLAB_MAIN_HEAD = "layer6.conv2d_list.0.weight"


@dataclass(frozen=True)
class SegmenterInfo:
    """Where a loaded segmenter came from and what the file says about it."""

    path: str
    kind: str  # "lightning" (a stage checkpoint of ours) or "release" (a bare state dict)
    spec: dict[str, Any]  # the segmenter's config block
    stage: str | None  # the class path of the stage that wrote a Lightning checkpoint, if recorded
    eval_subsets: tuple[str, ...]
    calibration: str | None  # instcal_u / instcal_c for a calibration checkpoint

    @property
    def preprocessing(self) -> str:
        return self.spec["init_args"].get("preprocessing", "caffe_bgr")


def segmenter_class(class_path: str) -> type[Segmenter]:
    """The Segmenter subclass ``class_path`` names. Modules of this package are imported on demand;
    another package's network must already be imported (a checkpoint never makes us import code)."""
    module_name, _, name = class_path.rpartition(".")
    if module_name.split(".")[0] == "intrada_pl":
        importlib.import_module(module_name)
    cls = getattr(sys.modules.get(module_name), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Segmenter)):
        raise CheckpointMismatchError(
            f"segmenter class_path {class_path!r} names no imported Segmenter subclass (networks of other packages "
            "must be imported before their checkpoints are read)")
    return cls


def build_segmenter(spec: Mapping[str, Any]) -> Segmenter:
    """A fresh segmenter from its config block ``{class_path, init_args}``."""
    return segmenter_class(spec["class_path"])(**dict(spec.get("init_args") or {}))


def load_segmenter(path: str | Path, num_classes: int | None = None) -> tuple[Segmenter, SegmenterInfo]:
    """The segmenter stored in ``path`` (any stage's ``.ckpt`` or a released ``.pth``), weights loaded."""
    return segmenter_from_checkpoint(read_checkpoint(path), path, num_classes)


def segmenter_from_checkpoint(blob: Mapping, path: str | Path, num_classes: int | None = None) -> tuple[Segmenter, SegmenterInfo]:
    """:func:`load_segmenter` for a file already read with :func:`read_checkpoint`.

    A calibration checkpoint holds a segmenter whose normalisation layers were converted: the
    fresh network is converted the same way before loading, so the learned strengths come back.
    ``num_classes`` (the dataset's) is checked against the file's.
    """
    if is_lightning_checkpoint(blob):
        hparams = dict(blob.get("hyper_parameters") or {})
        state = unwrap_state_dict(blob)
        if not state:
            raise CheckpointMismatchError(f"{path} holds no segmenter (no '{LIGHTNING_SEGMENTER_PREFIX}*' weights); expected {ACCEPTED_CHECKPOINTS}")
        spec = checkpoint_spec(hparams, state, str(path))
        kind, stage = "lightning", hparams.get("_class_path")
    else:
        hparams = {}
        spec, state = release_spec_and_state(blob, str(path))
        kind, stage = "release", None
    segmenter = build_segmenter(spec)
    if num_classes is not None and segmenter.num_classes != num_classes:
        raise CheckpointMismatchError(f"{path} has {segmenter.num_classes} classes but {num_classes} are expected (the dataset's class count)")
    calibration = hparams.get("calibration")
    if calibration is not None:
        if calibration not in CALIBRATION_METHODS:
            raise CheckpointMismatchError(f"{path} records an unknown calibration {calibration!r}")
        convert_for_calibration(segmenter, calibration, **{k: hparams[k] for k in CALIBRATION_OPTIONS if k in hparams})
    load_state_checked(segmenter, state, str(path))
    subsets = tuple(hparams.get("eval_subsets") or ("19",))
    return segmenter, SegmenterInfo(str(path), kind, segmenter.spec(), stage, subsets, calibration)


def checkpoint_spec(hparams: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The segmenter block of a stage checkpoint's hyper-parameters (or of a legacy DeepLabV2 one)."""
    spec = hparams.get("segmenter")
    if isinstance(spec, Mapping) and "class_path" in spec:
        return {"class_path": spec["class_path"], "init_args": dict(spec.get("init_args") or {})}
    arch = infer_architecture(state, source)  # legacy: flat DeepLabV2 keys; the weights say the architecture
    legacy = {k: hparams[k] for k in LEGACY_DEEPLAB_KEYS if k in hparams}
    return _deeplab_spec({**legacy, **arch})


def _deeplab_spec(init_args: Mapping[str, Any]) -> dict[str, Any]:
    return {"class_path": f"{DeepLabV2.__module__}.{DeepLabV2.__qualname__}", "init_args": {**dict(init_args), "pretrained": None}}


def release_spec_and_state(blob: Mapping, source: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The network a released file fits and its weights in our module names, recognised by its keys:
    a MiT-family segmentation file (SegFormer, DAFormer / HRDA / MIC, mmseg, Hugging Face:
    :func:`~intrada_pl.models.segformer.release_spec_and_state`) or a DeepLabV2 state dict (the
    released ADVENT / IntraDA files expect ``caffe_bgr`` input, the pre-processing they were trained with)."""
    mit = segformer_release(blob, source)
    if mit is not None:
        spec, state, _ = mit
        return spec, state
    state = unwrap_state_dict(blob)
    if DEEPLAB_MAIN_HEAD not in state:
        raise CheckpointMismatchError(f"{source} holds no segmentation network this package knows (no {DEEPLAB_MAIN_HEAD}, "
                                      f"no MiT-family layout); expected {ACCEPTED_CHECKPOINTS}")
    return _deeplab_spec({**infer_architecture(state, source), "preprocessing": "caffe_bgr"}), state
