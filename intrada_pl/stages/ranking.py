"""Stage 2 of IntraDA: rank the target's training images by entropy and split them (REFERENCE A4).

``intrada predict --config configs/rank_gta5.yaml --ckpt_path CKPT`` runs the inter-domain model
over the target's train split with :class:`RankingCallback` attached. The callback turns every
batch of main-head logits into compact per-image results on the device (a score and a
PNG-encoded pseudo-label) and, once every image is scored, writes what the intra-domain stage
(:class:`intrada_pl.data.datamodules.SplitDataModule`) reads::

    <output_dir>/ranking/
      scores.csv         name,score,rank,split (ascending score; rank 1 = lowest entropy)
      easy.txt           the lowest int(N * lambda_) images, the reference's list format
      hard.txt           the others
      pseudo_labels/     argmax train IDs of the easy images, <name> with a .png extension
      histogram.png      the score distribution with the lambda cut
      summary.json       lambda_, normalize, counts, checkpoint, hard_list
      reliability.json   is the ranking reliable? score stats; with labels, Spearman of score vs
                         per-image mIoU and the easy/hard pseudo-label quality; with a hard_list,
                         AUROC, recall, precision (:mod:`intrada_pl.stages.ranking_report`)
      reliability.png    its figure, when there are labels or a hard_list

``--ckpt_path`` may also be a released ADVENT ``.pth`` (a bare state dict): the CLI loads it into
the configured module (:class:`intrada_pl.cli.lightning.TrainingCLI`).

The whole ``ranking/`` folder is built beside the old one and swapped in at the end, so the
files always belong to one run: a crash leaves the previous ranking (or none), never a mix.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import cv2
import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor

from intrada_pl.data.datamodules import pseudo_label_path
from intrada_pl.data.labels import IGNORE_INDEX
from intrada_pl.errors import ConfigValueError
from intrada_pl.io import pid_alive, write_json, write_text
from intrada_pl.losses import normalized_entropy
from intrada_pl.stages.ranking_report import (
    Reliability,
    confusion_matrices,
    example_strip,
    extremes,
    read_name_list,
    reliability_line,
    report_numbers,
)

#: Train IDs the reference's entropy normalisation counts as rare: wall, fence, pole, traffic
#: light, traffic sign, terrain, rider, truck, bus, train, motorcycle.
RARE_TRAIN_IDS: tuple[int, ...] = (3, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17)


def entropy_scores(logits: Tensor) -> Tensor:
    """Per-image mean of the normalised per-class self-information map, shape (B,), float64.

    That is the reference's score, computed as 1/C of the mean per-pixel normalised entropy
    (the same number, one pass fewer over the C x H x W map); pixels are averaged in float64 so
    the value hardly depends on the summation order.
    """
    return normalized_entropy(logits).mean(dim=(1, 2), dtype=torch.float64) / logits.shape[1]


def rare_class_factor(labels: Tensor, num_classes: int) -> Tensor:
    """IntraDA's entropy normalisation, ``(11 - k) / 11 + 0.5`` per image, float64 (B,).

    ``k`` counts the 11 rare classes (:data:`RARE_TRAIN_IDS`) present in the argmax map ``labels``
    (B x H x W), so an image showing more of them gets a lower score and moves towards "easy"
    (factor in [0.5, 1.5]).
    """
    present = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    present.scatter_(1, labels.flatten(1).long(), True)
    k = present[:, list(RARE_TRAIN_IDS)].sum(1).double()
    return (len(RARE_TRAIN_IDS) - k) / len(RARE_TRAIN_IDS) + 0.5


def argmax(logits: Tensor) -> Tensor:
    """Class index per pixel (B x H x W); ``max(1)`` is 2-3x faster than ``argmax(1)`` on CPU."""
    return logits.max(1).indices


def pseudo_labels(logits: Tensor, confidence_threshold: float | None = None) -> Tensor:
    """Argmax train IDs (B x H x W, uint8). With a threshold, pixels whose top softmax probability
    is below it become 255 (ignored by the loss); the reference keeps every pixel."""
    if confidence_threshold is None:
        return argmax(logits).to(torch.uint8)
    confidence, labels = logits.float().softmax(1).max(1)
    labels[confidence < confidence_threshold] = IGNORE_INDEX
    return labels.to(torch.uint8)


def num_easy(num_images: int, lambda_: float) -> int:
    """``int(N * lambda_)`` exactly as the reference (2975 x 0.67 -> 1993), truncation included:
    a tiny ``lambda_`` on few images gives no easy image at all."""
    return int(num_images * lambda_)


@dataclass(frozen=True)
class Ranking:
    """Image names in ascending score order (ties by name) and where the easy part ends."""

    order: list[str]
    scores: dict[str, float]
    num_easy: int

    @classmethod
    def from_scores(cls, scores: Mapping[str, float], lambda_: float) -> Ranking:
        order = sorted(scores, key=lambda name: (scores[name], name))
        return cls(order, dict(scores), num_easy(len(order), lambda_))

    @property
    def easy(self) -> list[str]:
        return self.order[: self.num_easy]

    @property
    def hard(self) -> list[str]:
        return self.order[self.num_easy :]

    def cut(self) -> float | None:
        """Score half-way between the last easy and the first hard image (None if one side is empty)."""
        if not self.easy or not self.hard:
            return None
        return (self.scores[self.easy[-1]] + self.scores[self.hard[0]]) / 2


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path`` that replaces ``path`` (old content
    removed) only if the body finishes; on error the staging folder is removed and ``path`` kept.

    The swap is two renames: ``path`` to ``.<name>.old<pid>``, then the staging folder
    ``.<name>.tmp<pid>`` to ``path``. If the second one fails, the first is undone; if the process
    dies in between, the next call puts the old folder back. Each call first removes what dead
    processes left (see :func:`_clean_swap`), so ``path`` holds one complete run's folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    retired = path.with_name(f".{path.name}.old{os.getpid()}")
    _clean_swap(path)
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            os.rename(path, retired)
        os.rename(staging, path)
    finally:
        _clean_swap(path)


def _clean_swap(path: Path) -> None:
    """Settle the swap leftovers beside ``path`` of this process and of dead ones: a retired
    ``.old<pid>`` folder comes back if ``path`` is missing, the rest (staging folders, retired
    folders no longer needed) is removed. Live processes' leftovers are theirs."""
    prefix = f".{path.name}."
    for entry in sorted(path.parent.glob(f"{prefix}*")):
        kind, pid = entry.name[len(prefix):][:3], entry.name[len(prefix) + 3:]
        if kind not in ("tmp", "old") or not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue
        if kind == "old" and not path.exists():
            os.rename(entry, path)
        else:
            shutil.rmtree(entry, ignore_errors=True)


def scores_csv(ranking: Ranking) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "score", "rank", "split"])
    for rank, name in enumerate(ranking.order, start=1):
        writer.writerow([name, repr(ranking.scores[name]), rank, "easy" if rank <= ranking.num_easy else "hard"])
    return buffer.getvalue()


def list_file(names: Sequence[str]) -> str:
    """The reference's list format: one relative image name per line."""
    return "".join(f"{name}\n" for name in names)


def write_histogram(path: Path, ranking: Ranking, lambda_: float) -> None:
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.hist([ranking.scores[name] for name in ranking.order], bins="auto", color="tab:blue")
    cut = ranking.cut()
    if cut is not None:
        ax.axvline(cut, color="tab:red", linestyle="--", label=f"lambda = {lambda_:g}: {len(ranking.easy)} easy | {len(ranking.hard)} hard")
        ax.legend()
    ax.set_xlabel("score (mean normalised self-information)")
    ax.set_ylabel("images")
    ax.set_title(f"Entropy ranking of {len(ranking.order)} images")
    fig.savefig(path)


def write_ranking(
    directory: Path, ranking: Ranking, labels: Mapping[str, bytes], lambda_: float, summary: Mapping,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write the manifests, the easy images' pseudo-labels (already PNG-encoded), the histogram,
    a summary and what ``extra`` writes (the reliability report) into ``directory``, replacing it
    as a whole (see :func:`atomic_dir`)."""
    with atomic_dir(directory) as staging:
        for name in ranking.easy:
            path = pseudo_label_path(staging / "pseudo_labels", name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(labels[name])
        write_text(staging / "scores.csv", scores_csv(ranking))
        write_text(staging / "hard.txt", list_file(ranking.hard))
        write_text(staging / "easy.txt", list_file(ranking.easy))
        write_histogram(staging / "histogram.png", ranking, lambda_)
        write_json(staging / "summary.json", {**summary, "num_images": len(ranking.order), "num_easy": ranking.num_easy,
                                              "num_hard": len(ranking.hard), "score_cut": ranking.cut()})
        if extra is not None:
            extra(staging)


def encode_png(label: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", label)
    if not ok:
        raise OSError("could not PNG-encode a pseudo-label")
    return buffer.tobytes()


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
    """The batch's labels (B x H x W) at the predictions' size ``hw`` (nearest, pixel centres as
    PIL's), or None when the batch has none. TargetDataModule's predict labels already are."""
    label = batch.get("label") if isinstance(batch, Mapping) else None
    if label is None or tuple(label.shape[-2:]) == tuple(hw):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(hw), mode="nearest-exact")[:, 0].long()


class RankingCallback(Callback):
    """Entropy ranking of the images a ``predict`` run sees (IntraDA, REFERENCE A4).

    Works with any :class:`~intrada_pl.stages.segmentation.SegmentationEvalModule`, whose
    ``predict_step`` returns ``{"name", "logits"}`` with the main-head logits at the input
    resolution (the ranking resolution: 1024x512 for Cityscapes, as in the reference).

    Per image: score = mean normalised self-information (:func:`entropy_scores`), times
    :func:`rare_class_factor` if ``normalize`` (a real boolean here: the reference's
    ``--normalize False`` switched it *on*); easy = the ``int(N * lambda_)`` lowest scores, ties
    broken by name. Files go to ``<output_dir>/ranking/`` (``output_dir`` defaults to the run
    directory, ``trainer.log_dir``).

    Memory: Lightning's predict loop would keep every returned logit tensor (19 x 512 x 1024
    float32 = 40 MB per image), so the callback turns ``return_predictions`` off and keeps only
    a float and the pseudo-label as PNG bytes per image (a few tens of KB for a 512x1024 argmax
    map, ~100 MB for Cityscapes train). Every image's label is kept because the split is only
    known once all images are scored; in memory rather than in temporary files, it needs no
    filesystem shared between nodes. Under DDP each rank scores its share (predict does not
    pad), ``all_gather_object`` merges the results by name, and rank 0 alone writes.

    Reliability (``reliability.json``, :mod:`~intrada_pl.stages.ranking_report`): when the
    batches carry labels (``TargetDataModule(with_labels=...)``, at the ranking resolution) each
    image also keeps the confusion matrix of its pseudo-label against them, computed on the
    device; ``hard_list`` names images known to be hard (a text file as ``easy.txt``), to measure
    how well the score finds them. With a :class:`~lightning.pytorch.loggers.WandbLogger`, the
    report's numbers, its figure and a table of the ``examples`` easiest and hardest images
    (input, entropy map, pseudo-label, ground truth) go to W&B; each rank keeps only its own
    ``examples`` lowest and highest, among which are the global ones.
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
            raise ConfigValueError(f"RankingCallback examples is the number of easiest and of hardest images shown on W&B and must be >= 0, got {examples}")
        self.hard_list, self.examples = hard_list, examples
        self.show_examples = False
        self.directory: Path | None = None
        self.results: dict[str, ImageResult] = {}
        self.strips: dict[str, tuple[float, bytes]] = {}  # W&B examples: name -> (score, PNG of its strip)
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
        self.subset = getattr(pl_module, "eval_subsets", ("19",))[0]
        self.show_examples = self.examples > 0 and any(isinstance(logger, WandbLogger) for logger in trainer.loggers)

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
        if ranking.num_easy == 0:
            rank_zero_warn(f"int({len(ranking.order)} x {self.lambda_}) = 0: no image is ranked easy")
        summary = {"lambda_": self.lambda_, "normalize": self.normalize, "confidence_threshold": self.confidence_threshold,
                   "checkpoint": self.checkpoint, "hard_list": self.hard_list}
        confusions = {name: result.confusion for name, result in results.items() if result.confusion is not None}
        reliability = Reliability(ranking, self.lambda_, confusions if len(confusions) == len(results) else None, self.known_hard, self.subset)
        write_ranking(self.directory, ranking, {name: result.label for name, result in results.items()}, self.lambda_, summary,
                      reliability.write)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("ranking/histogram", [str(self.directory / "histogram.png")])
                easy = set(ranking.easy)
                rows = [[i + 1, name, ranking.scores[name], "easy" if name in easy else "hard"] for i, name in enumerate(ranking.order)]
                logger.log_table("ranking/scores", ["rank", "name", "score", "split"], rows)  # scores.csv, sortable in the UI
                self.log_reliability(logger, reliability, strips)
        rank_zero_info(
            f"entropy ranking written to {self.directory}: {len(ranking.easy)} easy / {len(ranking.hard)} hard of "
            f"{len(ranking.order)} images (lambda_ {self.lambda_}, normalize {self.normalize}); "
            "scores.csv, easy.txt, hard.txt, pseudo_labels/, histogram.png, reliability.json"
            + (", reliability.png" if (self.directory / "reliability.png").is_file() else "")
            + "\n" + reliability_line(reliability.report)
        )

    def log_reliability(self, logger: WandbLogger, reliability: Reliability, strips: Mapping[str, tuple[float, bytes]]) -> None:
        """The report's numbers, its figure and the table of the easiest and hardest images."""
        import wandb

        assert self.directory is not None
        logger.log_metrics(report_numbers(reliability.report, "ranking"))
        if (self.directory / "reliability.png").is_file():
            logger.log_image("ranking/reliability", [str(self.directory / "reliability.png")])
        if not strips:
            return
        rank = {name: i for i, name in enumerate(reliability.ranking.order, start=1)}
        rows = []
        for name in extremes({name: score for name, (score, _) in strips.items()}, self.examples):
            strip = cv2.cvtColor(cv2.imdecode(np.frombuffer(strips[name][1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            accuracy, miou = reliability.quality.get(name, (None, None))
            split = "easy" if rank[name] <= reliability.ranking.num_easy else "hard"
            rows.append([rank[name], name, split, strips[name][0], accuracy, miou, wandb.Image(strip)])
        logger.log_table("ranking/examples", ["rank", "name", "split", "score", "pixel_accuracy", "mIoU",
                                              "input | entropy | pseudo-label | ground truth"], rows)
