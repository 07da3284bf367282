"""The prediction files of an evaluation (``intrada test --save_predictions``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from intrada_pl.data.labels import TRAIN_ID_TO_ID_LUT, colorize
from intrada_pl.io import write_png
from intrada_pl.visuals import prediction_pictures, resize_bilinear


def write_predictions(pred: np.ndarray, image: np.ndarray, label: np.ndarray, name: str, folder: Path) -> None:
    """One image's files under ``folder``: ``labelIds``, ``color``, ``overlay`` and, if labelled, ``error``."""
    # Always PNG, whatever the input format: a JPEG of label IDs would hold invalid IDs.
    png = Path(name).with_suffix(".png")
    colors = colorize(pred)
    write_png(folder / "labelIds" / png, TRAIN_ID_TO_ID_LUT[pred])
    write_png(folder / "color" / png, colors)
    for kind, picture in prediction_pictures(image, pred, label, colors).items():
        write_png(folder / kind / png, picture)


class PredictionWriter(Callback):
    """Every method's prediction of every image, at label resolution, named like the input image
    with a ``.png`` suffix, in ``folder`` (under ``<target>/<method>/`` when there are several):
    Cityscapes label IDs (``labelIds``), colours (``color``), the colours over the input image
    with a legend (``overlay``) and, for a labelled image, the wrong pixels (``error``).

    Takes the evaluator's ``test_step`` output (per method, the predicted train IDs, B x H x W at
    label resolution) and its ``target_names`` and ``method_names``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: dict,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        predictions: list[Tensor] = outputs
        images = batch["image"].permute(0, 2, 3, 1).byte().cpu().numpy()
        labels = batch["label"].byte().cpu().numpy()
        folders = [self._folder(pl_module, dataloader_idx, k) for k in range(len(predictions))]
        arrays = [pred.byte().cpu().numpy() for pred in predictions]
        for i, name in enumerate(batch["name"]):
            image = resize_bilinear(images[i], labels[i].shape)  # once for all methods
            for pred, folder in zip(arrays, folders):
                write_predictions(pred[i], image, labels[i], name, folder)

    def _folder(self, pl_module: LightningModule, target: int, method: int) -> Path:
        targets, methods = pl_module.target_names, pl_module.method_names
        parts = [targets[target]] if len(targets) > 1 else []
        parts += [methods[method]] if len(methods) > 1 else []
        return self.folder.joinpath(*parts)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_zero_info(f"predictions written to {self.folder}")
