"""Rebuild a segmenter from any checkpoint: ours (Lightning ``.ckpt``) or a released reference ``.pth``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from intrada_pl.models.bn_calibration import LEARNED_MODES, convert_batchnorm
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.weights import (
    ACCEPTED_CHECKPOINTS,
    CheckpointMismatchError,
    infer_architecture,
    is_lightning_checkpoint,
    load_state_checked,
    read_checkpoint,
    saved_preprocessing,
    unwrap_state_dict,
)


# Hyperparameters of a calibration checkpoint that shape its CalibratedBatchNorm layers.
CALIBRATION_OPTIONS = ("init_strength", "num_basis", "hidden_dim", "condition")


def load_segmenter(path: str | Path, num_classes: int | None = None) -> tuple[DeepLabV2, dict]:
    """Return the DeepLabV2 stored in ``path`` and a description of it (see :func:`build_segmenter`)."""
    return build_segmenter(read_checkpoint(path), path, num_classes)


def build_segmenter(blob: Mapping, path: str | Path, num_classes: int | None = None) -> tuple[DeepLabV2, dict]:
    """The DeepLabV2 held by ``blob``, a file ``path`` already read with :func:`read_checkpoint`.

    A Lightning checkpoint of any stage keeps the segmenter under ``model.`` (discriminators
    beside it are ignored here) and its pre-processing in the hyperparameters. A calibration
    checkpoint (``hparams["calibration"]`` is ``instcal_u`` / ``instcal_c``) holds a segmenter
    whose BatchNorms were converted: the fresh model is converted the same way before loading,
    so the learned strengths come back (``info["calibration"]`` names the mode, else None).
    A reference state dict (ADVENT / IntraDA releases) is a bare DeepLabv2 that
    expects ``caffe_bgr`` input. The architecture is read off the weights, so no config is needed.
    """
    hparams = dict(blob.get("hyper_parameters") or {})
    state = unwrap_state_dict(blob)
    if "layer6.conv2d_list.0.weight" not in state:
        raise CheckpointMismatchError(
            f"{path} holds no DeepLabV2 segmenter (no 'layer6' main head found); expected {ACCEPTED_CHECKPOINTS}")
    kind = "lightning" if is_lightning_checkpoint(blob) else "reference"
    arch = infer_architecture(state, str(path))
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise CheckpointMismatchError(
            f"{path} has {arch['num_classes']} classes but {num_classes} are expected (the dataset's class count)"
        )
    preprocessing = saved_preprocessing(blob)
    model = DeepLabV2(arch["num_classes"], arch["depth"], arch["multi_level"], preprocessing)
    calibration = hparams.get("calibration")
    if calibration is not None:
        if calibration not in LEARNED_MODES:
            raise CheckpointMismatchError(f"{path} records an unknown calibration {calibration!r}")
        convert_batchnorm(model, calibration, **{k: hparams[k] for k in CALIBRATION_OPTIONS if k in hparams})
    load_state_checked(model, state, str(path))
    subsets = tuple(hparams.get("eval_subsets") or ("19",))
    info = {
        "path": str(path),
        "kind": kind,
        "preprocessing": preprocessing,
        "eval_subsets": subsets,
        "calibration": calibration,
        **arch,
    }
    return model, info
