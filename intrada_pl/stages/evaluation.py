"""``intrada test``: score checkpoints (one, or a logit ensemble) on one or several labelled target
splits, under one or several test-time methods (BN calibration, InstCal, TENT) side by side."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from intrada_pl.models.factory import load_segmenter
from intrada_pl.data.datamodules import TargetDataModule
from intrada_pl.data.datasets import resize_nearest
from intrada_pl.data.labels import CLASS_NAMES, IGNORE_INDEX, TRAIN_ID_TO_ID_LUT, colorize
from intrada_pl.errors import ConfigValueError
from intrada_pl.io import atomic_path, write_json, write_png
from intrada_pl.losses import upsample
from intrada_pl.metrics import format_iou_table, iou_report
from intrada_pl.stages.adabn import DEFAULT_CACHE, target_statistics
from intrada_pl.stages.segmentation import SegmentationEvalModule
from intrada_pl.stages.tta import AdaBN, MethodSpec, Statistics, build_test_methods
from intrada_pl.tables import number, text_table
from intrada_pl.visuals import (
    CLASS_LABELS, confusion_figure, figure_array, prediction_pictures, reliability_bins, reliability_figure, resize_bilinear, write_figure,
)


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
    rows = [[target, *("-" if (r := per_method.get(m)) is None else f"{_pair(r)} / {r['seconds_per_image']:.3f}" for m in methods)]
            for target, per_method in results.items()]
    return text_table(["target", *methods], rows, title="mIoU (%) / ECE (%) / seconds per image")


def strength_grid(results: dict[str, dict[str, dict]]) -> dict:
    """mIoU and ECE per manual strength m for every target, and the best m (highest mIoU)."""
    grid: dict[str, dict] = {}
    for target, per_method in results.items():
        rows = {float(name.split("@", 1)[1]): r for name, r in per_method.items() if name.startswith("manual@") and "[" not in name}
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


def layer_study(results: dict[str, dict[str, dict]], method: str, groups: Sequence[str]) -> dict:
    """Per target: mIoU and ECE of ``method`` (a canonical method name) on each layer group alone
    (``METHOD[g]``) and on all layers but it (``METHOD[-g]``), beside ``none`` and ``method`` on
    every layer, from the results of those methods."""
    def scores(per_method: dict[str, dict], name: str) -> dict:
        return {"mIoU": per_method[name]["mIoU"], "ECE": per_method[name]["ECE"]}

    return {
        target: {
            "method": method,
            "none": scores(per_method, "none"),
            "all": scores(per_method, method),
            "alone": {g: scores(per_method, f"{method}[{g}]") for g in groups},
            "all_but": {g: scores(per_method, f"{method}[-{g}]") for g in groups},
        }
        for target, per_method in results.items()
    }


def format_layer_table(study: dict) -> str:
    """The :func:`layer_study` of every target as a text table (mIoU % / ECE %)."""
    tables = []
    for target, row in study.items():
        rows = [[g, _pair(row["alone"][g]), _pair(row["all_but"][g])] for g in row["alone"]]
        rows += [["none", _pair(row["none"]), ""], ["all layers", _pair(row["all"]), ""]]
        tables.append(text_table(["group", "alone", "all but"], rows, title=f"{target}: {row['method']} per layer group, mIoU (%) / ECE (%)"))
    return "\n".join(tables)


def _pair(scores: dict) -> str:
    return f"{number(scores['mIoU'])} / {number(scores['ECE'])}"


def plot_layer_study(study: dict, path: str | Path) -> Path:
    """Bar plot of a :func:`layer_study`, atomically: one row per target, mIoU and ECE per group,
    "alone" beside "all but", with ``none`` and all layers as dashed lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend change
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 3.6 * len(study)), dpi=100)
    FigureCanvasAgg(fig)
    for t, (target, row) in enumerate(study.items()):
        groups = list(row["alone"])
        xs = np.arange(len(groups))
        for k, metric in enumerate(("mIoU", "ECE")):
            ax = fig.add_subplot(len(study), 2, 2 * t + k + 1)
            for offset, variant, color in ((-0.2, "alone", "tab:blue"), (0.2, "all_but", "tab:orange")):
                values = [row[variant][g][metric] or 0.0 for g in groups]
                ax.bar(xs + offset, values, width=0.4, color=color, label=variant.replace("_", " "))
            for ref, color, label in (("none", "black", "none"), ("all", "tab:green", "all layers")):
                if row[ref][metric] is not None:
                    ax.axhline(row[ref][metric], color=color, linestyle="--", label=label)
            ax.set_xticks(xs, groups)
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{target}: {row['method']}, {metric}")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class Evaluator(SegmentationEvalModule):
    """Evaluates ``checkpoints`` (ours or reference ``.pth``; several are averaged as main-head
    logits with equal weights, how ADVENT's AdvEnt+MinEnt row was produced) under every method
    in ``calibrations`` (:mod:`intrada_pl.stages.tta`; default ``none``) on every target of the
    data module, each image once, all methods on it in turn.

    Per (target, method): mIoU, per-class IoU, pixel ECE (%, ``ece_bins`` bins) and the seconds
    per image of the method itself (forward, plus TENT's backward and step; the first image's
    warm-up included). TENT methods restart from the source weights on every target. Writes
    ``metrics.json`` to ``output_dir`` (default: the run directory) once every image is scored
    (a run stopped earlier leaves none, not even an earlier run's), the confusion matrices
    (``confusion.json``) and a reliability diagram per labelled target and method
    (``reliability_<target>_<method>.png``). With ``save_predictions``, per image at label
    resolution, named like the input image with a ``.png`` suffix (under ``<target>/<method>/``
    when there are several): Cityscapes label IDs (``predictions/labelIds``), colours (``color``),
    the colours over the input image with a legend (``overlay``) and, for a labelled image, the
    wrong pixels (``error``). A WandbLogger also gets, per target and method, the per-class IoU
    table, the confusion matrix (heat map and counts), the reliability diagram (and its bins) and
    the first ``wandb_images`` images with their predicted and true masks.

    ``adabn`` methods get, per target and checkpoint, the BN statistics of the target's
    ``adabn_split`` (first ``adabn_max_images`` images, batches of ``adabn_batch_size``), estimated
    before the first image or read from ``adabn_cache`` (None: no cache; ``adabn_recompute``
    refreshes it); see :mod:`intrada_pl.stages.adabn`.

    Args:
        checkpoints: the checkpoints to evaluate (``--ckpt_path``, repeatable: a logit ensemble).
        num_classes: the dataset's class count.
        eval_subsets: class subsets to score besides the 19 (default: the checkpoint's).
        output_dir: where metrics.json and predictions go (``--output``).
        save_predictions: write label-ID, colour, overlay and error-map PNGs (``--save_predictions``).
        wandb_images: images with masks logged per target and method.
        calibrations: the test-time methods (``--calibration``, ``--strengths``).
        strength: m of a plain ``manual`` method (``--strength``).
        tent_lr: TENT's Adam learning rate.
        tent_steps: TENT steps per image.
        tent_episodic: TENT back to the source weights after every image.
        ece_bins: equal-width confidence bins of the ECE.
        adabn_split: the target split AdaBN re-estimates the statistics on.
        adabn_max_images: at most this many images of it (None: all).
        adabn_batch_size: images per AdaBN forward pass.
        adabn_cache: folder caching AdaBN statistics per checkpoint and target (None: no cache).
        adabn_recompute: recompute and overwrite cached AdaBN statistics.
    """

    def __init__(
        self,
        checkpoints: Sequence[str] = (),
        num_classes: int = 19,
        eval_subsets: Sequence[str] | None = None,
        output_dir: str | None = None,
        save_predictions: bool = False,
        wandb_images: int = 4,
        calibrations: Sequence[str] = (),
        strength: float = 0.1,
        tent_lr: float = 1e-3,
        tent_steps: int = 1,
        tent_episodic: bool = False,
        ece_bins: int = 15,
        adabn_split: str = "train",
        adabn_max_images: int | None = None,
        adabn_batch_size: int = 8,
        adabn_cache: str | None = DEFAULT_CACHE,
        adabn_recompute: bool = False,
    ) -> None:
        if not checkpoints:
            raise ConfigValueError("no checkpoint to evaluate: pass --ckpt PATH (repeat it for an ensemble)")
        methods = [MethodSpec.parse(spec, strength) for spec in (calibrations or ["none"])]
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ConfigValueError(f"a test-time method is listed twice (--calibration, --strengths): {names}")
        loaded = [load_segmenter(path, num_classes) for path in checkpoints]
        subsets = eval_subsets or loaded[0][1].eval_subsets
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
        # metrics.json stands for a complete pass of this run only (class docstring)
        (self.output / "metrics.json").unlink(missing_ok=True)
        num_targets = len(self.trainer.num_test_batches)
        self.target_names = list(getattr(self.trainer.datamodule, "target_names", None) or [f"target{i}" for i in range(num_targets)])
        hp = self.hparams
        self.scores = nn.ModuleList(
            nn.ModuleList(SplitScores(hp.num_classes, hp.ece_bins) for _ in self.methods) for _ in self.target_names
        ).to(self.device)
        self.seconds = [[0.0] * len(self.methods) for _ in self.target_names]
        self.num_images = [0] * len(self.target_names)
        self.stream: int | None = None
        self.wandb = next((logger for logger in self.trainer.loggers if isinstance(logger, WandbLogger)), None)
        self.samples: list[list[dict]] = [[] for _ in self.target_names]  # the first images, for W&B
        self.adabn_statistics = self._adabn_statistics()

    def _adabn_statistics(self) -> list[list[Statistics]]:
        """Per target, per checkpoint: the AdaBN statistics (none without an ``adabn`` method)."""
        column = next((c for c, m in zip(self.segmenters, self.methods) if m.calibration == "adabn"), None)
        if column is None:
            return []
        parts = getattr(self.trainer.datamodule, "parts", None)
        if parts is None:
            raise ConfigValueError("adabn needs the targets' data settings to find their training images: evaluate with EvaluationDataModule (intrada test)")
        hp = self.hparams
        return [
            [
                target_statistics(
                    switch.model, info.path, part.hparams, split=hp.adabn_split, max_images=hp.adabn_max_images,
                    batch_size=hp.adabn_batch_size, cache_dir=hp.adabn_cache, recompute=hp.adabn_recompute, device=self.device,
                )
                for switch, info in zip(column, self.checkpoint_info)
            ]
            for part in parts.values()
        ]

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx != self.stream:  # a new target is a new stream: TENT starts from the source again
            for column in self.segmenters:
                for c, model in enumerate(column):
                    model.reset()
                    if isinstance(model, AdaBN):
                        model.use_statistics(self.adabn_statistics[dataloader_idx][c])
            self.stream = dataloader_idx
        images, labels = batch["image"], batch["label"]
        self.num_images[dataloader_idx] += len(batch["name"])
        predictions = []
        for k in range(len(self.methods)):
            start = self._clock()
            logits = self.run_method(k, images)
            self.seconds[dataloader_idx][k] += self._clock() - start
            predictions.append(self.scores[dataloader_idx][k].update(upsample(logits, tuple(labels.shape[-2:])), labels))
        self._pictures(batch, predictions, dataloader_idx)

    def _prediction_dir(self, target: int, method: int) -> Path:
        parts = [self.target_names[target]] if len(self.target_names) > 1 else []
        parts += [self.methods[method].name] if len(self.methods) > 1 else []
        return self.output.joinpath("predictions", *parts)

    def _pictures(self, batch: dict, predictions: list[Tensor], target: int) -> None:
        """Write every method's prediction files (``save_predictions``); keep the first images for W&B."""
        wanted = self.hparams.wandb_images - len(self.samples[target]) if self.wandb is not None else 0
        if not self.hparams.save_predictions and wanted <= 0:
            return
        images = batch["image"].permute(0, 2, 3, 1).byte().cpu().numpy()
        labels = batch["label"].byte().cpu().numpy()
        predictions = [pred.byte().cpu().numpy() for pred in predictions]
        for i, name in enumerate(batch["name"]):
            if self.hparams.save_predictions:
                image = resize_bilinear(images[i], labels[i].shape)  # once for all methods
                for k, pred in enumerate(predictions):
                    self._write_predictions(pred[i], image, labels[i], name, self._prediction_dir(target, k))
            if i < wanted:
                hw = images[i].shape[:2]
                shrunk = [resize_nearest(pred[i], hw) for pred in predictions]
                self.samples[target].append({"name": name, "image": images[i], "label": resize_nearest(labels[i], hw), "predictions": shrunk})

    def _write_predictions(self, pred: np.ndarray, image: np.ndarray, label: np.ndarray, name: str, out: Path) -> None:
        # Always PNG, whatever the input format: a JPEG of label IDs would hold invalid IDs.
        png = Path(name).with_suffix(".png")
        colors = colorize(pred)
        write_png(out / "labelIds" / png, TRAIN_ID_TO_ID_LUT[pred])
        write_png(out / "color" / png, colors)
        for kind, picture in prediction_pictures(image, pred, label, colors).items():
            write_png(out / kind / png, picture)

    def on_test_end(self) -> None:
        """The results table, printed once the progress bar has closed (not on its line)."""
        if self.trainer.is_global_zero:
            rank_zero_info(self.console_report)

    def on_test_epoch_end(self) -> None:
        single = len(self.target_names) == 1 and len(self.methods) == 1
        results: dict[str, dict[str, dict]] = {}
        logged: dict[str, float] = {}
        confmats: dict[str, dict[str, Tensor]] = {}
        bins: dict[str, dict[str, dict]] = {}
        for t, target in enumerate(self.target_names):
            results[target], confmats[target], bins[target] = {}, {}, {}
            for k, method in enumerate(self.methods):
                scores = self.scores[t][k]
                confmats[target][method.name] = confmat = scores.confmat.compute().cpu()
                with scores.ece.sync_context():  # every process's pixels
                    sums = [getattr(scores.ece, name).cpu().numpy() for name in ("count", "confidence", "correct")]
                bins[target][method.name] = reliability_bins(*sums)
                report = iou_report(confmat, self.eval_subsets)
                # no labelled pixel (an unlabelled split): no ECE, as no mIoU, rather than 0
                report["ECE"] = round(float(scores.ece.compute()) * 100, 2) if sums[0].sum() > 0 else None
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
            "checkpoints": [info.path for info in self.checkpoint_info],
            "methods": [m.name for m in self.methods],
            "targets": self.target_names,
            "results": results,
        }
        if single:  # one target, one method: its numbers at the top level too
            only = results[self.target_names[0]][self.methods[0].name]
            metrics = {**only, **metrics}
            self.console_report = f"{format_iou_table(only)}\nECE (%): {number(only['ECE'])}   seconds per image: {only['seconds_per_image']:.4f}"
        else:
            self.console_report = format_results_table(results)
        path = write_json(self.output / "metrics.json", metrics)
        self.console_report += f"\nmetrics written to {path}"
        self._write_diagnostics(confmats, bins)
        if self.hparams.save_predictions:
            rank_zero_info(f"predictions written to {self.output / 'predictions'}")
        if self.wandb is not None:
            self._log_wandb(results, confmats, bins, single)

    def _write_diagnostics(self, confmats: dict[str, dict[str, Tensor]], bins: dict[str, dict[str, dict]]) -> None:
        """``confusion.json`` (pixel counts, ground truth x prediction, per target and method) and
        the reliability diagram of every labelled (target, method)."""
        counts = {target: {method: m.tolist() for method, m in per_method.items()} for target, per_method in confmats.items()}
        write_json(self.output / "confusion.json", {"classes": list(CLASS_NAMES), "rows": "ground truth", "columns": "prediction", "counts": counts})
        for target, per_method in bins.items():
            for method, b in per_method.items():
                if sum(b["count"]):
                    write_figure(self._reliability_path(target, method), reliability_figure(b, f"{target} / {method}"))

    def _reliability_path(self, target: str, method: str) -> Path:
        return self.output / f"reliability_{target}_{method}.png"

    def _log_wandb(self, results: dict, confmats: dict[str, dict[str, Tensor]], bins: dict[str, dict[str, dict]], single: bool) -> None:
        """Per target and method, in one W&B step: the first images with their predicted (and true)
        masks and, for a labelled target, the IoU table, the confusion matrix (heat map and counts)
        and the reliability diagram (and its bins)."""
        import wandb

        payload: dict[str, Any] = {}
        for t, target in enumerate(self.target_names):
            for k, method in enumerate(m.name for m in self.methods):
                prefix = "test/" if single else f"test/{target}/{method}/"
                payload[prefix + "overlays"] = [_wandb_masks(sample, k) for sample in self.samples[t]]
                b, confmat = bins[target][method], confmats[target][method]
                if not sum(b["count"]):
                    continue
                figure = confusion_figure(confmat.numpy(), CLASS_NAMES, f"{target} / {method}")
                edges = b["edges"]
                payload |= {
                    prefix + "iou_table": wandb.Table(columns=["class", "IoU"], data=[list(i) for i in results[target][method]["IoU"].items()]),
                    prefix + "confusion": wandb.Image(figure_array(figure)),
                    prefix + "confusion_counts": wandb.Table(
                        columns=["ground truth", *CLASS_NAMES], data=[[c, *row] for c, row in zip(CLASS_NAMES, confmat.tolist())]
                    ),
                    prefix + "reliability": wandb.Image(str(self._reliability_path(target, method))),
                    prefix + "reliability_bins": wandb.Table(
                        columns=["from", "to", "pixels", "confidence", "accuracy"],
                        data=[[edges[i], edges[i + 1], b["count"][i], b["confidence"][i], b["accuracy"][i]] for i in range(len(b["count"]))],
                    ),
                }
        self.wandb.log_metrics(payload)


def _wandb_masks(sample: dict, method: int) -> Any:
    """A kept test image as a W&B image with the method's predicted mask and, if labelled, the true one."""
    import wandb

    masks = {"predictions": {"mask_data": sample["predictions"][method], "class_labels": CLASS_LABELS}}
    if (sample["label"] != IGNORE_INDEX).any():
        masks["ground_truth"] = {"mask_data": sample["label"], "class_labels": CLASS_LABELS}
    return wandb.Image(sample["image"], caption=sample["name"], masks=masks)
