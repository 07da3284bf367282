"""``intrada test``: score checkpoints (one, or a logit ensemble) on one or several labelled target
splits, under one or several test-time methods (BN calibration, InstCal, TENT, AdaBN) side by side.
The :class:`Evaluator` scores; its callbacks (:mod:`intrada_pl.evaluation`) write and show."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from intrada_pl.data.labels import IGNORE_INDEX
from intrada_pl.errors import ConfigValueError
from intrada_pl.inference import sliding_window_logits
from intrada_pl.evaluation import EvaluationReport, EvaluationResults, PredictionWriter
from intrada_pl.losses import upsample
from intrada_pl.metrics import iou_report
from intrada_pl.models.factory import load_segmenter
from intrada_pl.stages.segmentation import SegmentationEvalModule
from intrada_pl.tta import DEFAULT_CACHE, AdaBN, MethodSpec, Statistics, build_test_methods, target_statistics
from intrada_pl.visuals import reliability_bins

# A method list in a folder name: short, and no character a shell or another file system minds.
_PLAIN_METHODS = re.compile(r"[\w.,@+=\[\]-]{1,60}")


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


def checkpoint_name(path: str) -> str:
    """A checkpoint as its file's stem, after its run's folder when it sits in a ``checkpoints/``
    folder, where stems such as ``last`` or ``best-step=8000`` alone would not say which run:
    ``runs/inter_gta5/checkpoints/last.ckpt`` -> ``inter_gta5-last``, ``pretrained/advent.pth`` -> ``advent``."""
    file = Path(path)
    return f"{file.parent.parent.name}-{file.stem}" if file.parent.name == "checkpoints" and file.parent.parent.name else file.stem


def output_name(checkpoints: Sequence[str], methods: Sequence[str]) -> str:
    """The folder of an evaluation in its run folder: the checkpoints (:func:`checkpoint_name`,
    ``+`` between the members of an ensemble), then, unless the only method is ``none``, the
    methods, comma-separated (``inter_gta5-last_none,bn_adapt``), or, where that would be long or
    hold a character paths should not, their count and a hash (``inter_gta5-last_11-methods-1a2b3c4d``).
    Made from the paths as given (a ``last.ckpt`` link stays ``last``), so evaluating the same
    checkpoint with the same methods again replaces that evaluation and nothing else."""
    name = "+".join(checkpoint_name(path) for path in checkpoints)
    if list(methods) == ["none"]:
        return name
    listed = ",".join(methods)
    if _PLAIN_METHODS.fullmatch(listed):
        return f"{name}_{listed}"
    return f"{name}_{len(methods)}-methods-{hashlib.sha256(listed.encode()).hexdigest()[:8]}"


class Evaluator(SegmentationEvalModule):
    """Evaluates ``checkpoints`` (ours or reference ``.pth``; several are averaged as main-head
    logits with equal weights, how ADVENT's AdvEnt+MinEnt row was produced) under every method
    in ``methods`` (:mod:`intrada_pl.tta`; default ``none``) on every target of the data module,
    each image once, all methods on it in turn.

    Per (target, method): mIoU, per-class IoU, pixel ECE (%, ``ece_bins`` bins), the confusion
    matrix, the reliability bins and the seconds per image of the method itself (forward, plus
    TENT's backward and step; the first image's warm-up included), in :attr:`results`
    (:class:`~intrada_pl.evaluation.EvaluationResults`) once every image is scored. TENT methods
    restart from the source weights on every target. Whoever runs it gets its files and
    dashboards (:meth:`configure_callbacks`): ``metrics.json``, ``confusion.json`` and the
    reliability diagrams (:class:`~intrada_pl.evaluation.EvaluationReport`) and, with
    ``save_predictions``, the prediction PNGs (:class:`~intrada_pl.evaluation.PredictionWriter`),
    in :meth:`output_folder`.

    ``adabn`` methods get, per target and checkpoint, the BN statistics of the target's
    ``adabn_split`` (first ``adabn_max_images`` images, batches of ``adabn_batch_size``) from the
    data module's :meth:`~intrada_pl.data.datamodules.EvaluationDataModule.adabn_images`, estimated
    before the first image or read from ``adabn_cache`` (None: no cache; ``adabn_recompute``
    refreshes it); see :mod:`intrada_pl.tta.statistics`.

    Args:
        checkpoints: the checkpoints to evaluate (``--ckpt``, repeatable: a logit ensemble).
        num_classes: the dataset's class count.
        eval_subsets: class subsets to score besides the 19 (default: the checkpoint's).
        output_dir: where the files go (``--output``; default: :func:`output_name` in the run folder).
        save_predictions: write label-ID, colour, overlay and error-map PNGs (``--save_predictions``).
        dashboard_images: images with masks shown per target and method on the run's dashboards.
        methods: the test-time methods (``--method``, ``--strengths``).
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
        sliding_window: [H, W]: sliding-window inference (:func:`intrada_pl.inference.sliding_window_logits`)
            with windows of this size every ``sliding_stride`` (default: two thirds of the window),
            for networks trained on crops (the MiT recipe: 512x512); None: whole-image inference.
    """

    def __init__(
        self,
        checkpoints: Sequence[str] = (),
        num_classes: int = 19,
        eval_subsets: Sequence[str] | None = None,
        output_dir: str | None = None,
        save_predictions: bool = False,
        dashboard_images: int = 4,
        methods: Sequence[str] = (),
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
        sliding_window: tuple[int, int] | None = None,
        sliding_stride: tuple[int, int] | None = None,
    ) -> None:
        if sliding_window is not None and (min(sliding_window) < 1 or (sliding_stride is not None and min(sliding_stride) < 1)):
            raise ConfigValueError(f"--model.sliding_window and --model.sliding_stride take positive [H, W], got {sliding_window} and {sliding_stride}")
        if not checkpoints:
            raise ConfigValueError("no checkpoint to evaluate: pass --ckpt PATH (repeat it for an ensemble)")
        specs = [MethodSpec.parse(spec, strength) for spec in (methods or ["none"])]
        names = [m.name for m in specs]
        if len(set(names)) != len(names):
            raise ConfigValueError(f"a test-time method is listed twice (--method, --strengths): {names}")
        if adabn_batch_size < 1 or (adabn_max_images is not None and adabn_max_images < 1):
            raise ConfigValueError(
                f"AdaBN needs --model.adabn_batch_size >= 1 and --model.adabn_max_images >= 1 (or null), got {adabn_batch_size} and {adabn_max_images}")
        loaded = [load_segmenter(path, num_classes) for path in checkpoints]
        subsets = eval_subsets or loaded[0][1].eval_subsets
        super().__init__(num_classes, subsets)
        self.save_hyperparameters()
        self.methods = specs
        per_checkpoint = [
            build_test_methods(model, info, specs, tent_lr, tent_steps, tent_episodic) for model, info in loaded
        ]
        self.segmenters = nn.ModuleList(nn.ModuleList(column) for column in zip(*per_checkpoint))
        self.checkpoint_info = [info for _, info in loaded]
        self.results: EvaluationResults | None = None

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    def output_folder(self) -> Path:
        """Where the files go: ``output_dir``, else ``<run folder>/<output_name>`` (the run folder
        is the trainer's ``default_root_dir``), one folder per checkpoint and method set."""
        if self.hparams.output_dir:
            return Path(self.hparams.output_dir)
        return Path(self.trainer.default_root_dir) / output_name(self.hparams.checkpoints, self.method_names)

    def configure_callbacks(self) -> list[Callback]:
        """The report, and the prediction writer with ``save_predictions``, for every caller
        (``intrada test``, ``calibrate-grid`` / ``calibrate-layers``, a pipeline's tests, a Trainer)."""
        folder = self.output_folder()
        report = EvaluationReport(folder, self.hparams.dashboard_images)
        return [PredictionWriter(folder / "predictions"), report] if self.hparams.save_predictions else [report]

    def run_method(self, index: int, images: Tensor) -> Tensor:
        # Bilinear upsampling is linear, so averaging on the logit grid equals averaging the
        # upsampled logits (the reference's order) at a fraction of the cost.
        return torch.stack([self._logits(model, images) for model in self.segmenters[index]]).mean(0)

    def _logits(self, model: nn.Module, images: Tensor) -> Tensor:
        """Main-head logits of one method's model: of the whole image, or by sliding windows."""
        window = self.hparams.sliding_window
        if window is None or (window[0] >= images.shape[-2] and window[1] >= images.shape[-1]):  # one window: the image
            return model(images)[1]
        stride = self.hparams.sliding_stride or tuple(max(1, 2 * w // 3) for w in window)
        return sliding_window_logits(lambda crop: model(crop)[1], images, tuple(window), tuple(stride))

    def segment(self, images: Tensor) -> Tensor:
        """The first method (what ``validate`` / ``predict`` use)."""
        return self.run_method(0, images)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_test_start(self) -> None:
        num_targets = len(self.trainer.num_test_batches)
        self.target_names = list(getattr(self.trainer.datamodule, "target_names", None) or [f"target{i}" for i in range(num_targets)])
        hp = self.hparams
        self.scores = nn.ModuleList(
            nn.ModuleList(SplitScores(hp.num_classes, hp.ece_bins) for _ in self.methods) for _ in self.target_names
        ).to(self.device)
        self.seconds = [[0.0] * len(self.methods) for _ in self.target_names]
        self.num_images = [0] * len(self.target_names)
        self.stream: int | None = None
        self.adabn_statistics = self._adabn_statistics()

    def _adabn_statistics(self) -> list[list[Statistics]]:
        """Per target, per checkpoint: the AdaBN statistics (none without an ``adabn`` method)."""
        column = next((c for c, m in zip(self.segmenters, self.methods) if m.calibration == "adabn"), None)
        if column is None:
            return []
        data = self.trainer.datamodule
        if not hasattr(data, "adabn_images"):
            raise ConfigValueError("adabn needs the targets' training images: evaluate with EvaluationDataModule (intrada test)")
        hp = self.hparams
        per_target = [data.adabn_images(target, hp.adabn_split, hp.adabn_max_images, hp.adabn_batch_size) for target in self.target_names]
        return [
            [
                target_statistics(switch.model, info.path, images, cache_dir=hp.adabn_cache, recompute=hp.adabn_recompute, device=self.device)
                for switch, info in zip(column, self.checkpoint_info)
            ]
            for images in per_target
        ]

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> list[Tensor]:
        """Scores every method on the batch; returns their predicted train IDs (at label resolution)."""
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
        return predictions

    def on_test_epoch_end(self) -> None:
        scores: dict[str, dict[str, dict]] = {}
        confusion: dict[str, dict[str, Tensor]] = {}
        reliability: dict[str, dict[str, dict]] = {}
        for t, target in enumerate(self.target_names):
            scores[target], confusion[target], reliability[target] = {}, {}, {}
            for k, method in enumerate(self.method_names):
                split = self.scores[t][k]
                confusion[target][method] = confmat = split.confmat.compute().cpu()
                with split.ece.sync_context():  # every process's pixels
                    sums = [getattr(split.ece, name).cpu().numpy() for name in ("count", "confidence", "correct")]
                reliability[target][method] = reliability_bins(*sums)
                report = iou_report(confmat, self.eval_subsets)
                # no labelled pixel (an unlabelled split): no ECE, as no mIoU, rather than 0
                report["ECE"] = round(float(split.ece.compute()) * 100, 2) if sums[0].sum() > 0 else None
                report["seconds_per_image"] = round(self.seconds[t][k] / max(1, self.num_images[t]), 4)
                report["num_images"] = self.num_images[t] * self.trainer.world_size
                scores[target][method] = report
        self.results = EvaluationResults([info.path for info in self.checkpoint_info], self.method_names, self.target_names, scores, confusion, reliability)
        self.log_dict({
            self.results.key(target, method) + key: value
            for target, per_method in scores.items() for method, report in per_method.items()
            for key, value in report.items() if (key.startswith("mIoU") or key == "ECE") and value is not None
        }, sync_dist=True)
