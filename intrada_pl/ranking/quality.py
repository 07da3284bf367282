"""How good is the entropy ranking? ``ranking/quality.json`` and ``quality.png`` (issue 12).

IntraDA trains on the pseudo-labels of the images it ranks easy. That only helps if a low score
means good pseudo-labels; a model can be confidently wrong (after ADVENT, foggy Cityscapes
images looked *more* confident than clear ones), and then the easy split is where the bad labels
are. With the ranked split's labels, the report measures this; with a list of images known to be
hard, it measures how well the score finds them. Everything here is a pure function of the
ranking, per-image confusion matrices and that list, so it can be checked by hand::

    quality.json
      num_images, num_easy, num_hard, lambda_
      score                {min, max, mean, std, median, cut}
      labelled             whether the split had labels (false: only score and hard_list below)
      classes              the classes of mIoU ("19", or the model's first eval subset, "16")
      spearman_score_vs_mIoU, spearman_score_vs_accuracy
                           rank correlation over the labelled images: negative = a good ranking
      all, easy, hard      {images, pixels, pixel_accuracy, mIoU, IoU: {class: value}}
      hard_list            {entries, matched, unmatched, auroc, found, recall, precision, chance_found},
                           with a list of images known to be hard (its path: summary.json)

Rates are fractions in [0, 1] (not %); a value that is undefined (no pixel, one class of
images only) is null. Each image's confusion matrix compares its pseudo-label as written
(``confidence_threshold``'s 255 pixels not counted) with its labels resized (nearest, as PIL)
to the ranking resolution: the size the pseudo-labels are trained at, and cheap (1024x512 rather
than 2048x1024). The split metrics pool the pixels of the split's images into one confusion
matrix, as the evaluation pools a whole split. (Not to be confused with the calibration
"reliability diagram" of ``intrada test``: this is about the ranking, not the softmax.)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from intrada_pl.data.labels import CLASS_NAMES, EVAL_SUBSETS
from intrada_pl.data.ranking_manifest import EASY, parse_names
from intrada_pl.errors import ConfigValueError
from intrada_pl.io import write_json
from intrada_pl.metrics import iou_per_class
from intrada_pl.ranking.scores import Ranking
from intrada_pl.tables import number
from intrada_pl.visuals import write_figure

QUALITY_JSON, QUALITY_PNG, HISTOGRAM_PNG = "quality.json", "quality.png", "histogram.png"


# ---------------------------------------------------------------------------------- statistics
def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span
    (``[10, 20, 20, 30]`` -> ``[1, 2.5, 2.5, 4]``)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    for start, end in zip(starts, np.r_[starts[1:], len(values)]):
        ranks[order[start:end]] = (start + 1 + end) / 2
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None with fewer than 2 pairs
    or when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs: got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / norm if norm > 0 else None


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Probability that a random positive scores higher than a random negative, ties counting
    one half (the Mann-Whitney U statistic over n_pos * n_neg); None without positives or negatives."""
    positives = np.asarray(positives, dtype=bool)
    if len(positives) != len(scores):
        raise ValueError(f"auroc needs one flag per score: got {len(scores)} scores and {len(positives)} flags")
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(average_ranks(scores)[positives].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def split_recall_precision(ranked_hard: Collection[str], known_hard: Collection[str]) -> dict:
    """How many ``known_hard`` images the hard split holds (``found``), as a fraction of the
    known ones (recall) and of the hard split (precision); None where the fraction is 0/0."""
    found = len(set(ranked_hard) & set(known_hard))
    return {
        "found": found,
        "recall": found / len(known_hard) if known_hard else None,
        "precision": found / len(ranked_hard) if ranked_hard else None,
    }


def hard_list_report(scores: Mapping[str, float], ranked_hard: Collection[str], known_hard: Collection[str]) -> dict:
    """AUROC of the score (higher = harder) for the known-hard images among the ranked ones,
    and the hard split's recall/precision; ``chance_found``: what a random split of the same
    size finds on average. Of the list's distinct ``entries``, ``matched`` were ranked and count;
    the ``unmatched`` rest is only counted."""
    entries = set(known_hard)
    known = entries & set(scores)
    names = sorted(scores)
    return {
        "entries": len(entries),
        "matched": len(known),
        "unmatched": len(entries - known),
        "auroc": auroc([scores[n] for n in names], [n in known for n in names]),
        **split_recall_precision(ranked_hard, known),
        "chance_found": len(known) * len(ranked_hard) / len(scores) if scores else 0.0,
    }


def read_name_list(path: str | Path, option: str = "hard_list") -> list[str]:
    """Image names, one per line as in ``easy.txt`` (blank lines skipped, ``./`` dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} file {path} not found (a text file, one image name per line as in {EASY})")
    return parse_names(path.read_text())


def check_hard_list(known_hard: Collection[str], ranked: Collection[str], source: str) -> None:
    """Refuse a list of known-hard images of which no name is a ranked image (its AUROC would be
    null, silently): mostly names in another format. ``source`` says where the list came from."""
    if set(known_hard) & set(ranked) or not ranked:
        return
    expected = f"image paths relative to the split's image folder, as in {EASY}, e.g. {min(ranked)!r}"
    if not known_hard:
        raise ConfigValueError(f"{source} lists no image name; expected {expected}")
    raise ConfigValueError(f"{source}: none of its {len(set(known_hard))} names is a ranked image "
                           f"(its first: {next(iter(known_hard))!r}); expected {expected}")


# ---------------------------------------------------------------------------------- confusion
def confusion_matrices(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-image ``[true, predicted]`` pixel counts, B x C x C int64, on the inputs' device.
    Pixels whose truth or prediction is not a class (255) are not counted."""
    pred, target = pred.long(), target.long()
    valid = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    image = torch.arange(pred.shape[0], device=pred.device).view(-1, 1, 1).expand_as(pred)
    index = (image * num_classes + target) * num_classes + pred
    counts = torch.bincount(index[valid], minlength=pred.shape[0] * num_classes**2)
    return counts.view(pred.shape[0], num_classes, num_classes)


def _fraction(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _mean_iou(confusion: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, float | None]:
    """IoU per class (NaN: class in neither truth nor prediction) and their nan-mean over ``classes``."""
    iou = iou_per_class(torch.from_numpy(np.asarray(confusion, dtype=np.int64))).numpy()
    chosen = iou[list(classes)]
    return iou, float(np.nanmean(chosen)) if np.isfinite(chosen).any() else None


def image_quality(confusion: np.ndarray, classes: Sequence[int]) -> tuple[float | None, float | None]:
    """(pixel accuracy, mIoU) of one image's pseudo-label; None without labelled pixels."""
    pixels = int(confusion.sum())
    if pixels == 0:
        return None, None
    return _fraction(float(np.trace(confusion)), pixels), _mean_iou(confusion, classes)[1]


def split_quality(confusions: Sequence[np.ndarray], classes: Sequence[int]) -> dict:
    """Pixel accuracy, mIoU and IoU per class of the pixels of ``confusions`` pooled."""
    total = np.sum(confusions, axis=0, dtype=np.int64) if len(confusions) else np.zeros((len(CLASS_NAMES),) * 2, np.int64)
    iou, miou = _mean_iou(total, classes)
    return {
        "images": len(confusions),
        "pixels": int(total.sum()),
        "pixel_accuracy": _fraction(float(np.trace(total)), float(total.sum())),
        "mIoU": miou,
        "IoU": {name: (None if math.isnan(v) else float(v)) for name, v in zip(CLASS_NAMES, iou.tolist())},
    }


# ---------------------------------------------------------------------------------- report
def score_stats(scores: Sequence[float]) -> dict:
    values = np.asarray(scores, dtype=np.float64)
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std()), "median": float(np.median(values))}


@dataclass
class RankingQuality:
    """The quality report of one ranking. ``confusions``: per-image ``[true, pseudo-label]`` pixel
    counts (None, or all zero, when the split has no labels); ``known_hard``: the names of a
    hard list; ``subset``: the eval subset whose classes mIoU averages."""

    ranking: Ranking
    lambda_: float
    confusions: Mapping[str, np.ndarray] | None = None
    known_hard: Collection[str] | None = None
    subset: str = "19"

    @cached_property
    def labelled(self) -> bool:
        return self.confusions is not None and any(c.any() for c in self.confusions.values())

    @cached_property
    def per_image(self) -> dict[str, tuple[float | None, float | None]]:
        """(pixel accuracy, mIoU) per image (:func:`image_quality`); empty without labels."""
        if not self.labelled:
            return {}
        return {name: image_quality(self.confusions[name], EVAL_SUBSETS[self.subset]) for name in self.ranking.order}

    @cached_property
    def report(self) -> dict:
        """The content of ``quality.json`` (see the module docstring)."""
        ranking = self.ranking
        report: dict = {
            "num_images": len(ranking.order), "num_easy": len(ranking.easy), "num_hard": len(ranking.hard),
            "lambda_": self.lambda_,
            "score": {**score_stats([ranking.scores[n] for n in ranking.order]), "cut": ranking.cut()},
            "labelled": self.labelled,
        }
        if self.labelled:
            rated = [name for name in ranking.order if self.per_image[name][1] is not None]
            scores = [ranking.scores[name] for name in rated]
            classes = EVAL_SUBSETS[self.subset]
            report.update({
                "classes": self.subset,
                "spearman_score_vs_mIoU": spearman(scores, [self.per_image[n][1] for n in rated]),
                "spearman_score_vs_accuracy": spearman(scores, [self.per_image[n][0] for n in rated]),
                **{part: split_quality([self.confusions[n] for n in names], classes)
                   for part, names in (("all", ranking.order), ("easy", ranking.easy), ("hard", ranking.hard))},
            })
        if self.known_hard is not None:  # a list that matches no ranked image is refused: check_hard_list
            report["hard_list"] = hard_list_report(ranking.scores, ranking.hard, self.known_hard)
        return report

    def write(self, directory: Path) -> None:
        """``quality.json`` and, when there is more to show than ``histogram.png`` (labels or
        a hard list), ``quality.png``."""
        write_json(directory / QUALITY_JSON, self.report)
        if self.labelled or self.known_hard is not None:
            write_figure(directory / QUALITY_PNG, quality_figure(self))


def report_numbers(report: Mapping, prefix: str) -> dict[str, float]:
    """The report's numbers flattened to ``prefix/key/subkey`` (what a logger takes); nulls left out."""
    numbers: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, Mapping):
            numbers.update(report_numbers(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"{prefix}/{key}"] = value
    return numbers


def quality_line(report: Mapping) -> str:
    """The report in one line for the terminal."""
    parts = [f"score {report['score']['min']:.4g}..{report['score']['max']:.4g}"]
    if report["labelled"]:
        parts.append(f"Spearman(score, image mIoU) {number(report['spearman_score_vs_mIoU'])} (good: negative)")
        parts += [f"{split} pseudo-labels: accuracy {number(report[split]['pixel_accuracy'])}, mIoU {number(report[split]['mIoU'])}"
                  for split in ("easy", "hard")]
    else:
        parts.append("no labels")
    if "hard_list" in report:
        known = report["hard_list"]
        parts.append(f"hard_list: {known['matched']} of {known['entries']} names ranked, AUROC {number(known['auroc'])}, "
                     f"recall {number(known['recall'])}, precision {number(known['precision'])}")
    return "ranking quality: " + "; ".join(parts)


# ---------------------------------------------------------------------------------- figures
def histogram_figure(ranking: Ranking, lambda_: float) -> Figure:
    """The score distribution with the lambda cut (``histogram.png``)."""
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
    return fig


def quality_figure(quality: RankingQuality) -> Figure:
    """Histogram of the scores (bars coloured by the images' mean pixel accuracy, known-hard
    images outlined); with labels also score vs per-image mIoU and IoU per class, easy vs hard."""
    ranking, report, per_image = quality.ranking, quality.report, quality.per_image
    known_hard = set(quality.known_hard or ())
    labelled = quality.labelled
    panels = 3 if labelled else 1
    fig = Figure(figsize=(6.5 * panels, 4.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    names = ranking.order
    scores = np.array([ranking.scores[n] for n in names])
    edges = np.histogram_bin_edges(scores, bins="auto")
    ax = axes[0]
    _, _, bars = ax.hist(scores, bins=edges, color="tab:gray", label="all images")
    if labelled:
        accuracy = np.array([np.nan if per_image[n][0] is None else per_image[n][0] for n in names])
        which = np.clip(np.digitize(scores, edges) - 1, 0, len(edges) - 2)
        cmap = matplotlib.colormaps["viridis"]
        for b, bar in enumerate(bars):
            in_bin = accuracy[(which == b) & np.isfinite(accuracy)]
            if len(in_bin):
                bar.set_color(cmap(float(in_bin.mean())))
        fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax,
                     label="mean pixel accuracy of the bin's pseudo-labels")
    if known_hard:
        ax.hist([ranking.scores[n] for n in names if n in known_hard], bins=edges, histtype="step", linewidth=2,
                color="tab:red", label=f"known hard (AUROC {number(report['hard_list']['auroc'])})")
    cut = ranking.cut()
    if cut is not None:
        ax.axvline(cut, color="black", linestyle="--", label=f"cut: {len(ranking.easy)} easy | {len(ranking.hard)} hard")
    ax.set(xlabel="score (higher = harder)", ylabel="images", title=f"Entropy ranking of {len(names)} images")
    ax.legend()
    if not labelled:
        return fig
    ax = axes[1]
    rated = [n for n in names if per_image[n][1] is not None]
    easy = set(ranking.easy)
    for split, colour in (("easy", "tab:blue"), ("hard", "tab:orange")):
        chosen = [n for n in rated if (n in easy) == (split == "easy")]
        ax.scatter([ranking.scores[n] for n in chosen], [per_image[n][1] for n in chosen], s=12, color=colour, label=split)
    marked = [n for n in rated if n in known_hard]
    if marked:
        ax.scatter([ranking.scores[n] for n in marked], [per_image[n][1] for n in marked], s=40, marker="x",
                   color="tab:red", label="known hard")
    ax.set(xlabel="score (higher = harder)", ylabel=f"per-image mIoU ({report['classes']} classes)",
           title=f"Spearman {number(report['spearman_score_vs_mIoU'])} (good: negative)")
    ax.legend()
    ax = axes[2]
    classes = [CLASS_NAMES[c] for c in EVAL_SUBSETS[report["classes"]]]
    x = np.arange(len(classes))
    for offset, split, colour in ((-0.2, "easy", "tab:blue"), (0.2, "hard", "tab:orange")):
        part = report[split]
        values = [np.nan if part["IoU"][c] is None else part["IoU"][c] for c in classes]
        ax.bar(x + offset, values, width=0.4, color=colour,
               label=f"{split}: accuracy {number(part['pixel_accuracy'])}, mIoU {number(part['mIoU'])}")
    ax.set_xticks(x, classes, rotation=90)
    ax.set(ylabel="IoU of the pseudo-labels", ylim=(0, 1), title="Pseudo-label IoU per class")
    ax.legend()
    return fig
