"""``intrada test``: score one checkpoint, or a logit ensemble of several, on a labelled split."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from intrada_pl.checkpoints import load_segmenter
from intrada_pl.data.labels import TRAIN_ID_TO_ID_LUT, colorize
from intrada_pl.io import write_json, write_png
from intrada_pl.metrics import format_iou_table
from intrada_pl.stages.segmentation import SegmentationEvalModule


class Evaluator(SegmentationEvalModule):
    """Evaluates ``checkpoints`` (ours or reference ``.pth``); several are averaged as upsampled
    main-head logits with equal weights (how ADVENT's AdvEnt+MinEnt row was produced).

    Writes ``metrics.json`` to ``output_dir`` (default: the run directory) and, with
    ``save_predictions``, Cityscapes label-ID PNGs (what the official evaluation reads) and
    colour PNGs at label resolution, named like the input images.
    """

    def __init__(
        self,
        checkpoints: Sequence[str] = (),
        num_classes: int = 19,
        eval_subsets: Sequence[str] | None = None,
        output_dir: str | None = None,
        save_predictions: bool = False,
    ) -> None:
        if not checkpoints:
            raise ValueError("no checkpoint to evaluate: pass --ckpt PATH (repeat it for an ensemble)")
        loaded = [load_segmenter(path, num_classes) for path in checkpoints]
        subsets = eval_subsets or loaded[0][1]["eval_subsets"]
        super().__init__(num_classes, subsets)
        self.save_hyperparameters()
        self.models = nn.ModuleList(model for model, _ in loaded)
        self.checkpoint_info = [info for _, info in loaded]

    def segment(self, images: Tensor) -> Tensor:
        # Bilinear upsampling is linear, so averaging on the logit grid equals averaging the
        # upsampled logits (the reference's order) at a fraction of the cost.
        return torch.stack([model(images)[1] for model in self.models]).mean(0)

    def on_test_start(self) -> None:
        self.output = Path(self.hparams.output_dir or self.trainer.log_dir or ".")
        self.num_images = 0
        self.started = time.perf_counter()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.score_batch(batch)
        self.num_images += len(batch["name"])
        if self.hparams.save_predictions:
            self._write_predictions(logits.argmax(1).cpu().numpy().astype(np.uint8), batch["name"])

    def _write_predictions(self, train_ids: np.ndarray, names: Sequence[str]) -> None:
        for pred, name in zip(train_ids, names):
            write_png(self.output / "predictions" / "labelIds" / name, TRAIN_ID_TO_ID_LUT[pred])
            write_png(self.output / "predictions" / "color" / name, colorize(pred))

    def on_test_epoch_end(self) -> None:
        report = self.compute_report()
        seconds = time.perf_counter() - self.started
        metrics = {f"test/{key}": value for key, value in report.items() if key.startswith("mIoU") and value is not None}
        self.log_dict(metrics, sync_dist=True)
        if not self.trainer.is_global_zero:
            return
        report.update(
            checkpoints=[info["path"] for info in self.checkpoint_info],
            num_images=self.num_images * self.trainer.world_size,
            seconds_per_image=round(seconds / max(1, self.num_images), 4),
        )
        path = write_json(self.output / "metrics.json", report)
        rank_zero_info(format_iou_table(report))
        rank_zero_info(f"metrics written to {path}")
        if self.hparams.save_predictions:
            rank_zero_info(f"predictions written to {self.output / 'predictions'}")

