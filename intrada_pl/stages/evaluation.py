"""``intrada test``: score checkpoints (one, or a logit ensemble) on one or several labelled target
splits, under one or several test-time methods (BN calibration, InstCal, TENT) side by side."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from intrada_pl.checkpoints import load_segmenter
from intrada_pl.data.datamodules import TargetDataModule
from intrada_pl.data.labels import IGNORE_INDEX, TRAIN_ID_TO_ID_LUT, colorize
from intrada_pl.io import write_json, write_png
from intrada_pl.losses import upsample
from intrada_pl.metrics import format_iou_table, iou_report
from intrada_pl.stages.segmentation import SegmentationEvalModule
from intrada_pl.stages.tta import MethodSpec, build_test_methods


class PixelCalibrationError(Metric):
    """Pixel-level expected calibration error (L1, equal-width confidence bins) from bin counts.

    Binning and result are those of torchmetrics' ``MulticlassCalibrationError(n_bins, norm="l1")``
    (including its extra bin for confidence exactly 1.0), but the state is three fixed-size
    vectors instead of every pixel's confidence, so a whole validation set fits in memory.
    """

    full_state_update = False
    count: Tensor
    confidence: Tensor
    correct: Tensor

    def __init__(self, n_bins: int = 15) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.register_buffer("boundaries", torch.linspace(0, 1, n_bins + 1), persistent=False)
        for name in ("count", "confidence", "correct"):
            self.add_state(name, torch.zeros(n_bins + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, confidence: Tensor, correct: Tensor) -> None:
        """``confidence``: top-1 probabilities (float32) of the scored pixels; ``correct``: their hits."""
        bins = torch.bucketize(confidence, self.boundaries, right=True) - 1
        size = self.n_bins + 1
        self.count += torch.bincount(bins, minlength=size).to(torch.float64)
        self.confidence += torch.bincount(bins, weights=confidence.double(), minlength=size)
        self.correct += torch.bincount(bins, weights=correct.double(), minlength=size)

    def compute(self) -> Tensor:
        # sum_b |acc_b - conf_b| * n_b / N  ==  sum_b |hits_b - confidence_sum_b| / N
        return (self.correct - self.confidence).abs().sum() / self.count.sum().clamp(min=1)


class SplitScores(nn.Module):
    """Everything scored for one (target, method) pair: the confusion matrix and the ECE bins."""

    def __init__(self, num_classes: int, ece_bins: int) -> None:
        super().__init__()
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.ece = PixelCalibrationError(ece_bins)

    def update(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Score full-resolution logits; returns the predicted train IDs."""
        logits = logits.float()
        top, pred = logits.max(1)
        confidence = (top - torch.logsumexp(logits, 1)).exp()  # max softmax without a softmax tensor
        self.confmat.update(pred, labels)
        valid = labels != IGNORE_INDEX
        self.ece.update(confidence[valid], pred[valid] == labels[valid])
        return pred


class EvaluationDataModule(TargetDataModule):
    """The target split(s) of ``intrada test``: the TargetDataModule settings, or, with ``targets``,
    several named targets, each a dict overriding those settings (one test dataloader each)::

        data:
          size: [1024, 512]
          targets:
            cityscapes: {dataset: cityscapes, root: data/Cityscapes}
            acdc_fog: {dataset: acdc, root: data/ACDC, options: {condition: fog}}
    """

    def __init__(self, targets: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_settings = kwargs
        self.targets = targets or {self.hparams.dataset: {}}

    def setup(self, stage: str) -> None:
        self.parts = {name: TargetDataModule(**{**self.base_settings, **overrides}) for name, overrides in self.targets.items()}
        for part in self.parts.values():
            part.setup(stage)

    @property
    def target_names(self) -> list[str]:
        return list(self.parts)

    def test_dataloader(self) -> list:
        return [part.test_dataloader() for part in self.parts.values()]


def format_results_table(results: dict[str, dict[str, dict]]) -> str:
    """target x method -> mIoU (%), ECE (%), seconds per image."""
    methods = list(dict.fromkeys(m for per_target in results.values() for m in per_target))
    width = max(len("target"), *(len(t) for t in results))
    cell = max(26, *(len(m) + 2 for m in methods))
    lines = ["mIoU (%) / ECE (%) / seconds per image", f"{'target':<{width}}" + "".join(f"{m:>{cell}}" for m in methods)]
    for target, per_method in results.items():
        row = f"{target:<{width}}"
        for method in methods:
            r = per_method.get(method)
            text = "-" if r is None else f"{_fmt(r['mIoU'])} / {_fmt(r['ECE'])} / {r['seconds_per_image']:.3f}"
            row += f"{text:>{cell}}"
        lines.append(row)
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def strength_grid(results: dict[str, dict[str, dict]]) -> dict:
    """mIoU and ECE per manual strength m for every target, and the best m (highest mIoU)."""
    grid: dict[str, dict] = {}
    for target, per_method in results.items():
        rows = {float(name.split("@", 1)[1]): r for name, r in per_method.items() if name.startswith("manual@")}
        if not rows:
            continue
        best = max(rows, key=lambda m: -1.0 if rows[m]["mIoU"] is None else rows[m]["mIoU"])
        grid[target] = {
            "mIoU": {f"{m:g}": r["mIoU"] for m, r in sorted(rows.items())},
            "ECE": {f"{m:g}": r["ECE"] for m, r in sorted(rows.items())},
            "best_strength": best,
        }
    if not grid:
        raise ValueError("no manual@m results: give strengths (--strengths 0,0.1,...,1)")
    return grid


class Evaluator(SegmentationEvalModule):
    """Evaluates ``checkpoints`` (ours or reference ``.pth``; several are averaged as main-head
    logits with equal weights, how ADVENT's AdvEnt+MinEnt row was produced) under every method
    in ``calibrations`` (:mod:`intrada_pl.stages.tta`; default ``none``) on every target of the
    data module, each image once, all methods on it in turn.

    Per (target, method): mIoU, per-class IoU, pixel ECE (%, ``ece_bins`` bins) and the seconds
    per image of the method itself (forward, plus TENT's backward and step; the first image's
    warm-up included). TENT methods restart from the source weights on every target. Writes
    ``metrics.json`` to ``output_dir`` (default: the run directory) and, with
    ``save_predictions``, Cityscapes label-ID PNGs and colour PNGs at label resolution, named
    like the input images with a ``.png`` suffix (under ``<target>/<method>/`` when there are several).
    """

    def __init__(
        self,
        checkpoints: Sequence[str] = (),
        num_classes: int = 19,
        eval_subsets: Sequence[str] | None = None,
        output_dir: str | None = None,
        save_predictions: bool = False,
        calibrations: Sequence[str] = (),
        strength: float = 0.1,
        tent_lr: float = 1e-3,
        tent_steps: int = 1,
        tent_episodic: bool = False,
        ece_bins: int = 15,
    ) -> None:
        if not checkpoints:
            raise ValueError("no checkpoint to evaluate: pass --ckpt PATH (repeat it for an ensemble)")
        methods = [MethodSpec.parse(spec, strength) for spec in (calibrations or ["none"])]
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"a test-time method is listed twice: {names}")
        loaded = [load_segmenter(path, num_classes) for path in checkpoints]
        subsets = eval_subsets or loaded[0][1]["eval_subsets"]
        super().__init__(num_classes, subsets)
        self.save_hyperparameters()
        self.methods = methods
        per_checkpoint = [
            build_test_methods(model, info, methods, tent_lr, tent_steps, tent_episodic) for model, info in loaded
        ]
        self.segmenters = nn.ModuleList(nn.ModuleList(column) for column in zip(*per_checkpoint))
        self.checkpoint_info = [info for _, info in loaded]
        self.results: dict[str, dict[str, dict]] = {}

    def run_method(self, index: int, images: Tensor) -> Tensor:
        # Bilinear upsampling is linear, so averaging on the logit grid equals averaging the
        # upsampled logits (the reference's order) at a fraction of the cost.
        return torch.stack([model(images)[1] for model in self.segmenters[index]]).mean(0)

    def segment(self, images: Tensor) -> Tensor:
        """The first method (what ``validate`` / ``predict`` use)."""
        return self.run_method(0, images)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_test_start(self) -> None:
        self.output = Path(self.hparams.output_dir or self.trainer.log_dir or ".")
        num_targets = len(self.trainer.num_test_batches)
        self.target_names = list(getattr(self.trainer.datamodule, "target_names", None) or [f"target{i}" for i in range(num_targets)])
        hp = self.hparams
        self.scores = nn.ModuleList(
            nn.ModuleList(SplitScores(hp.num_classes, hp.ece_bins) for _ in self.methods) for _ in self.target_names
        ).to(self.device)
        self.seconds = [[0.0] * len(self.methods) for _ in self.target_names]
        self.num_images = [0] * len(self.target_names)
        self.stream: int | None = None

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self.stream:  # a new target is a new stream: TENT starts from the source again
            for column in self.segmenters:
                for model in column:
                    model.reset()
            self.stream = dataloader_idx
        images, labels = batch["image"], batch["label"]
        self.num_images[dataloader_idx] += len(batch["name"])
        for k in range(len(self.methods)):
            start = self._clock()
            logits = self.run_method(k, images)
            self.seconds[dataloader_idx][k] += self._clock() - start
            pred = self.scores[dataloader_idx][k].update(upsample(logits, tuple(labels.shape[-2:])), labels)
            if self.hparams.save_predictions:
                self._write_predictions(pred.cpu().numpy().astype(np.uint8), batch["name"], self._prediction_dir(dataloader_idx, k))

    def _prediction_dir(self, target: int, method: int) -> Path:
        parts = [self.target_names[target]] if len(self.target_names) > 1 else []
        parts += [self.methods[method].name] if len(self.methods) > 1 else []
        return self.output.joinpath("predictions", *parts)

    def _write_predictions(self, train_ids: np.ndarray, names: Sequence[str], out: Path) -> None:
        # Always PNG, whatever the input format: a JPEG of label IDs would hold invalid IDs.
        for pred, name in zip(train_ids, names):
            png = Path(name).with_suffix(".png")
            write_png(out / "labelIds" / png, TRAIN_ID_TO_ID_LUT[pred])
            write_png(out / "color" / png, colorize(pred))

    def on_test_epoch_end(self) -> None:
        single = len(self.target_names) == 1 and len(self.methods) == 1
        results: dict[str, dict[str, dict]] = {}
        logged: dict[str, float] = {}
        for t, target in enumerate(self.target_names):
            results[target] = {}
            for k, method in enumerate(self.methods):
                scores = self.scores[t][k]
                report = iou_report(scores.confmat.compute().cpu(), self.eval_subsets)
                report["ECE"] = round(float(scores.ece.compute()) * 100, 2)
                report["seconds_per_image"] = round(self.seconds[t][k] / max(1, self.num_images[t]), 4)
                report["num_images"] = self.num_images[t] * self.trainer.world_size
                results[target][method.name] = report
                prefix = "test/" if single else f"test/{target}/{method.name}/"
                logged.update({prefix + key: value for key, value in report.items() if (key.startswith("mIoU") or key == "ECE") and value is not None})
        self.log_dict(logged, sync_dist=True)
        self.results = results
        if not self.trainer.is_global_zero:
            return
        metrics: dict[str, Any] = {
            "checkpoints": [info["path"] for info in self.checkpoint_info],
            "methods": [m.name for m in self.methods],
            "targets": self.target_names,
            "results": results,
        }
        if single:  # one target, one method: its numbers at the top level too
            only = results[self.target_names[0]][self.methods[0].name]
            metrics = {**only, **metrics}
            rank_zero_info(format_iou_table(only))
            rank_zero_info(f"ECE (%): {only['ECE']:.2f}   seconds per image: {only['seconds_per_image']:.4f}")
        else:
            rank_zero_info(format_results_table(results))
        path = write_json(self.output / "metrics.json", metrics)
        rank_zero_info(f"metrics written to {path}")
        if self.hparams.save_predictions:
            rank_zero_info(f"predictions written to {self.output / 'predictions'}")
