"""Rebuild a segmenter from any checkpoint: ours (Lightning ``.ckpt``) or a released reference ``.pth``."""

from __future__ import annotations

from pathlib import Path

import torch

from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.weights import CheckpointMismatchError, infer_architecture, load_state_checked, read_state_dict

MODEL_PREFIX = "model."


def load_segmenter(path: str | Path, num_classes: int | None = None) -> tuple[DeepLabV2, dict]:
    """Return the DeepLabV2 stored in ``path`` and a description of it.

    A Lightning checkpoint of any stage keeps the segmenter under ``model.`` (discriminators and
    calibration parameters beside it are ignored here) and its pre-processing in the
    hyperparameters; a reference state dict (ADVENT / IntraDA releases) is a bare DeepLabv2 that
    expects ``caffe_bgr`` input. The architecture is read off the weights, so no config is needed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(blob, dict) and "state_dict" in blob and "pytorch-lightning_version" in blob:
        hparams = dict(blob.get("hyper_parameters", {}))
        state = {k[len(MODEL_PREFIX) :]: v for k, v in blob["state_dict"].items() if k.startswith(MODEL_PREFIX)}
        if not state:
            raise CheckpointMismatchError(f"{path} is a Lightning checkpoint without a segmenter ('model.*' keys)")
        kind = "lightning"
    else:
        hparams, state, kind = {}, read_state_dict(path), "reference"
        if "layer6.conv2d_list.0.weight" not in state:
            raise CheckpointMismatchError(f"{path} is neither a Lightning checkpoint nor a DeepLabv2 segmentation state dict")
    arch = infer_architecture(state)
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise CheckpointMismatchError(
            f"{path} has {arch['num_classes']} classes but {num_classes} are expected (the dataset's class count)"
        )
    preprocessing = hparams.get("preprocessing", "caffe_bgr")
    model = DeepLabV2(arch["num_classes"], arch["depth"], arch["multi_level"], preprocessing)
    load_state_checked(model, state, str(path))
    subsets = tuple(hparams.get("eval_subsets") or ("19",))
    info = {"path": str(path), "kind": kind, "preprocessing": preprocessing, "eval_subsets": subsets, **arch}
    return model, info
