"""The callback that ranks the images of a ``predict`` run and writes the ranking folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import cv2
import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from intrada_pl.dashboards import Dashboards
from intrada_pl.data.datasets import resize_nearest
from intrada_pl.data.labels import IGNORE_INDEX, colorize
from intrada_pl.data.ranking_manifest import EASY, HARD, PSEUDO_LABELS, SCORES, SUMMARY, encode_png, write_ranking
from intrada_pl.errors import ConfigValueError
from intrada_pl.losses import normalized_entropy
from intrada_pl.ranking.quality import (
    HISTOGRAM_PNG,
    QUALITY_JSON,
    QUALITY_PNG,
    RankingQuality,
    check_hard_list,
    confusion_matrices,
    histogram_figure,
    quality_line,
    read_name_list,
    report_numbers,
)
from intrada_pl.ranking.scores import Ranking, argmax, entropy_scores, pseudo_labels, rare_class_factor
from intrada_pl.visuals import entropy_heatmap, write_figure


class ImageResult(NamedTuple):
    """What the ranking keeps of one image: its score, its pseudo-label as PNG bytes and, when
    the batch has labels, the ``[true, pseudo-label]`` pixel counts (C x C int32, 1.4 KB)."""

    score: float
    label: bytes
    confusion: np.ndarray | None = None


T = TypeVar("T")


def gather_results(results: dict[str, T]) -> dict[str, T]:
    """Merge every rank's results on every rank (``all_gather_object``), one entry per image name."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return results
    parts: list[dict[str, T] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    merged: dict[str, T] = {}
    for part in parts:
        for name, result in (part or {}).items():
            merged.setdefault(name, result)
    return merged


def ground_truth(batch: object, hw: tuple[int, int]) -> Tensor | None:
    """The batch's labels (B x H x W) at the predictions' size ``hw`` (the datasets' nearest
    resize), or None when the batch has none. TargetDataModule's predict labels already are."""
    label = batch.get("label") if isinstance(batch, Mapping) else None
    if label is None or tuple(label.shape[-2:]) == tuple(hw):
        return label
    resized = np.stack([resize_nearest(one.to(torch.uint8).cpu().numpy(), tuple(hw)) for one in label])
    return torch.from_numpy(resized).to(label.device, torch.long)


def listed_names(loaders: object) -> list[str] | None:
    """The image names the predict loaders will give when their datasets list them (as
    :class:`~intrada_pl.data.datasets.SegmentationDataset` does), else None."""
    parts = [getattr(getattr(loader, "dataset", None), "names", None)
             for loader in (loaders if isinstance(loaders, (list, tuple)) else [loaders])]
    return None if any(names is None for names in parts) else [name for names in parts for name in names]


def example_strip(image: np.ndarray | None, entropy: np.ndarray, label: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """One image's row of the examples table, side by side (H x W' x 3 uint8 RGB): the input
    (if given), its entropy map with its colour bar (as the validation panels), the pseudo-label
    and the ground truth (if given) in the Cityscapes colours."""
    tiles = (image, entropy_heatmap(entropy), colorize(label), None if truth is None else colorize(truth))
    return np.concatenate([tile for tile in tiles if tile is not None], axis=1)


def extremes(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` lowest and ``k`` highest scored names (ascending, ties by name as in the ranking)."""
    order = sorted(scores, key=lambda name: (scores[name], name))
    return order if len(order) <= 2 * k else order[:k] + order[-k:]


class RankingCallback(Callback):
    """Entropy ranking of the images a ``predict`` run sees (IntraDA, REFERENCE A4).

    Works with any :class:`~intrada_pl.stages.segmentation.SegmentationEvalModule`, whose
    ``predict_step`` returns ``{"name", "logits"}`` with the main-head logits at the input
    resolution (the ranking resolution: 1024x512 for Cityscapes, as in the reference).

    Per image: score = mean normalised self-information (:func:`entropy_scores`), times
    :func:`rare_class_factor` if ``normalize`` (a real boolean here: the reference's
    ``--normalize False`` switched it *on*); easy = the ``int(N * lambda_)`` lowest scores, ties
    broken by name. Files go to ``<output_dir>/ranking/`` (``output_dir`` defaults to the run
    directory, ``trainer.log_dir``), written by :func:`~intrada_pl.data.ranking_manifest.write_ranking`.

    Memory: Lightning's predict loop would keep every returned logit tensor (19 x 512 x 1024
    float32 = 40 MB per image), so the callback turns ``return_predictions`` off and keeps only
    a float and the pseudo-label as PNG bytes per image (a few tens of KB for a 512x1024 argmax
    map, ~100 MB for Cityscapes train). Every image's label is kept because the split is only
    known once all images are scored; in memory rather than in temporary files, it needs no
    filesystem shared between nodes. Under DDP each rank scores its share (predict does not
    pad), ``all_gather_object`` merges the results by name, and rank 0 alone writes.

    Quality (``quality.json``, :mod:`~intrada_pl.ranking.quality`): when the batches carry labels
    (``TargetDataModule(with_labels=...)``, at the ranking resolution) each image also keeps the
    confusion matrix of its pseudo-label against them, computed on the device; ``hard_list``
    names images known to be hard (a text file as ``easy.txt``), to measure how well the score
    finds them; a list none of whose names is a ranked image is refused (before scoring when the
    dataset lists its names). The run's dashboards (:class:`~intrada_pl.dashboards.Dashboards`)
    get the histogram, the scores table, the report's numbers (``ranking/quality/...``), its
    figure and a table of the ``examples`` easiest and hardest images (input, entropy map,
    pseudo-label, ground truth); each rank keeps only its own ``examples`` lowest and highest,
    among which are the global ones.
    """

    def __init__(
        self,
        lambda_: float = 0.67,
        normalize: bool = False,
        confidence_threshold: float | None = None,
        output_dir: str | None = None,
        hard_list: str | None = None,
        examples: int = 4,
    ) -> None:
        super().__init__()
        if not 0.0 < lambda_ <= 1.0:
            raise ConfigValueError(f"RankingCallback lambda_ is the fraction of images ranked easy and must be in (0, 1], got {lambda_} (the reference uses 0.67)")
        if confidence_threshold is not None and not 0.0 <= confidence_threshold <= 1.0:
            raise ConfigValueError(f"RankingCallback confidence_threshold is a softmax probability and must be in [0, 1], got {confidence_threshold}")
        self.lambda_ = lambda_
        self.normalize = normalize
        self.confidence_threshold = confidence_threshold
        self.output_dir = output_dir
        if examples < 0:
            raise ConfigValueError(f"RankingCallback examples is the number of easiest and of hardest images shown on the dashboards and must be >= 0, got {examples}")
        self.hard_list, self.examples = hard_list, examples
        self.show_examples = False
        self.directory: Path | None = None
        self.results: dict[str, ImageResult] = {}
        self.strips: dict[str, tuple[float, bytes]] = {}  # examples: name -> (score, PNG of its strip)
        self.known_hard: list[str] | None = None
        self.subset = "19"
        self.checkpoint: str | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.predict_loop.return_predictions = False  # the logits are consumed here, see the class docstring
        # trainer.log_dir is a collective under DDP: every rank must read it
        self.directory = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir) / "ranking"
        self.results, self.strips = {}, {}
        self.checkpoint = trainer.ckpt_path or pl_module.initial_weights  # a released .pth: the network's initial weights
        self.known_hard = None if self.hard_list is None else read_name_list(self.hard_list)  # before hours of scoring
        names = listed_names(trainer.predict_dataloaders)
        if self.known_hard is not None and names is not None:
            check_hard_list(self.known_hard, names, f"RankingCallback hard_list {self.hard_list}")
        self.subset = getattr(pl_module, "eval_subsets", ("19",))[0]
        # every rank decides alike (rank 0 alone logs): each keeps the examples among its images
        self.show_examples = self.examples > 0 and Dashboards(trainer.loggers).shows_pictures

    def score(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (B,) and pseudo-labels (B x H x W uint8) of a batch, computed on its device."""
        with torch.inference_mode():
            scores = entropy_scores(logits)
            labels = pseudo_labels(logits, self.confidence_threshold)
            if self.normalize:
                classes = labels if self.confidence_threshold is None else argmax(logits)
                scores = scores * rare_class_factor(classes, logits.shape[1])
        return scores, labels

    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict, batch: dict, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not (isinstance(outputs, dict) and "logits" in outputs and "name" in outputs):
            raise TypeError(f"RankingCallback needs predict_step to return {{'name', 'logits'}} (SegmentationEvalModule does); got {type(outputs).__name__}")
        logits = outputs["logits"]
        scores, labels = self.score(logits)
        truth = ground_truth(batch, labels.shape[-2:])
        confusions = None if truth is None else confusion_matrices(labels, truth, logits.shape[1]).to(torch.int32).cpu().numpy()
        for i, (name, score, label) in enumerate(zip(outputs["name"], scores.tolist(), labels.cpu().numpy())):
            self.results.setdefault(name, ImageResult(score, encode_png(label), None if confusions is None else confusions[i]))
        if self.show_examples:
            self.keep_examples(outputs["name"], scores.tolist(), logits, labels, truth, batch)

    def keep_examples(self, names: Sequence[str], scores: Sequence[float], logits: Tensor, labels: Tensor,
                      truth: Tensor | None, batch: Mapping) -> None:
        """Keep the strips (:func:`example_strip`) of the ``examples`` lowest and highest scores
        seen so far; a strip is drawn only for an image that enters them."""
        candidates = {name: score for name, (score, _) in self.strips.items()} | dict(zip(names, scores))
        image = batch.get("image")
        rgb = image is not None and image.dtype == torch.uint8 and image.shape[1] == 3  # not the logits of a test
        strips = {}
        for name in extremes(candidates, self.examples):
            if name in self.strips:
                strips[name] = self.strips[name]
                continue
            i = list(names).index(name)
            gt = None if truth is None or not (truth[i] != IGNORE_INDEX).any() else truth[i].to(torch.uint8).cpu().numpy()
            strip = example_strip(image[i].permute(1, 2, 0).cpu().numpy() if rgb else None,
                                  normalized_entropy(logits[i : i + 1])[0].cpu().numpy(), labels[i].cpu().numpy(), gt)
            strips[name] = (candidates[name], encode_png(cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)))
        self.strips = strips

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results, strips = gather_results(self.results), gather_results(self.strips)
        self.results, self.strips = {}, {}
        try:
            if trainer.is_global_zero:
                self.write(trainer, results, strips)
        finally:  # every rank returns once the files exist (or rank 0 failed): none waits forever
            trainer.strategy.barrier()

    def write(self, trainer: L.Trainer, results: Mapping[str, ImageResult], strips: Mapping[str, tuple[float, bytes]]) -> None:
        assert self.directory is not None, "on_predict_start sets the output directory"
        if not results:
            raise RuntimeError("the entropy ranking saw no image: is the predict split empty?")
        ranking = Ranking.from_scores({name: result.score for name, result in results.items()}, self.lambda_)
        if self.known_hard is not None:  # a dataset without a list of names: checked now
            check_hard_list(self.known_hard, ranking.order, f"RankingCallback hard_list {self.hard_list}")
        if ranking.num_easy == 0:
            rank_zero_warn(f"int({len(ranking.order)} x {self.lambda_}) = 0: no image is ranked easy")
        summary = {"lambda_": self.lambda_, "normalize": self.normalize, "confidence_threshold": self.confidence_threshold,
                   "checkpoint": self.checkpoint, "hard_list": self.hard_list}
        confusions = {name: result.confusion for name, result in results.items() if result.confusion is not None}
        quality = RankingQuality(ranking, self.lambda_, confusions if len(confusions) == len(results) else None, self.known_hard, self.subset)

        def figures_and_report(folder: Path) -> None:
            write_figure(folder / HISTOGRAM_PNG, histogram_figure(ranking, self.lambda_))
            quality.write(folder)

        write_ranking(self.directory, ranking, {name: result.label for name, result in results.items()}, summary, figures_and_report)
        self.show(Dashboards.of(trainer), quality, strips)
        files = [SCORES, EASY, HARD, f"{PSEUDO_LABELS}/", SUMMARY, HISTOGRAM_PNG, QUALITY_JSON]
        files += [QUALITY_PNG] if (self.directory / QUALITY_PNG).is_file() else []
        rank_zero_info(
            f"entropy ranking written to {self.directory}: {len(ranking.easy)} easy / {len(ranking.hard)} hard of "
            f"{len(ranking.order)} images (lambda_ {self.lambda_}, normalize {self.normalize}); {', '.join(files)}\n"
            + quality_line(quality.report)
        )

    def show(self, dashboards: Dashboards, quality: RankingQuality, strips: Mapping[str, tuple[float, bytes]]) -> None:
        """The histogram, the scores (``scores.csv``, sortable), the report's numbers and figure,
        and the table of the easiest and hardest images."""
        assert self.directory is not None
        ranking = quality.ranking
        dashboards.figure("ranking/histogram", self.directory / HISTOGRAM_PNG)
        split = {name: "easy" if rank <= ranking.num_easy else "hard" for rank, name in enumerate(ranking.order, start=1)}
        dashboards.table("ranking/scores", ["rank", "name", "score", "split"],
                         [[rank, name, ranking.scores[name], split[name]] for rank, name in enumerate(ranking.order, start=1)])
        dashboards.scalars(report_numbers(quality.report, "ranking/quality"))
        if (self.directory / QUALITY_PNG).is_file():
            dashboards.figure("ranking/quality", self.directory / QUALITY_PNG)
        if not strips:
            return
        rank = {name: i for i, name in enumerate(ranking.order, start=1)}
        rows = []
        for name in extremes({name: score for name, (score, _) in strips.items()}, self.examples):
            strip = cv2.cvtColor(cv2.imdecode(np.frombuffer(strips[name][1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            accuracy, miou = quality.per_image.get(name, (None, None))
            rows.append([rank[name], name, split[name], strips[name][0], accuracy, miou, strip])
        dashboards.table("ranking/examples", ["rank", "name", "split", "score", "pixel_accuracy", "mIoU",
                                              "input | entropy | pseudo-label | ground truth"], rows)
