"""Pictures of segmentations, for dashboards and papers.

Per image (cv2/numpy; an overlay plus an error map take about 50 ms at 2048x1024, PNG encoding
aside): prediction overlays with a legend of the classes they show, error maps, heat maps with a
colour bar, titled panels. Per test (matplotlib without pyplot, so no global backend): the
normalised confusion matrix and the reliability diagram.
All arrays are RGB ``uint8``; legends and titles are white text on black or on darkened pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from intrada_pl.data.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, colorize
from intrada_pl.io import atomic_path

Color = tuple[int, int, int]
Entry = tuple[str, Color]  # a legend row: name and swatch colour

#: Mask legend (W&B's ``class_labels``): the train IDs' class names, and 255.
CLASS_LABELS: dict[int, str] = {**dict(enumerate(CLASS_NAMES)), IGNORE_INDEX: "ignore"}
#: Error map colours: correct pixels are the input image in dimmed grey (this grey without one).
ERROR_COLORS: dict[str, Color] = {"correct": (128, 128, 128), "wrong": (255, 0, 0), "ignore": (0, 0, 0)}

FONT = cv2.FONT_HERSHEY_SIMPLEX


# ----------------------------------------------------------------------------------- text and legends
def row_height(image_height: int) -> int:
    """Height of a legend or title row for an image: readable from 64 to 2048 pixels high."""
    return int(np.clip(round(image_height / 28), 10, 36))


def _scale(row: int) -> float:
    return cv2.getFontScaleFromHeight(FONT, max(1, round(row * 0.55)), 1)


def _text_width(text: str, row: int) -> int:
    return cv2.getTextSize(text, FONT, _scale(row), 1)[0][0]


def _put_text(canvas: np.ndarray, text: str, x: int, row_top: int, row: int) -> None:
    """White text in the row starting at ``row_top``, vertically centred."""
    (_, height), _ = cv2.getTextSize(text, FONT, _scale(row), 1)
    baseline = row_top + (row + height) // 2
    cv2.putText(canvas, text, (x, baseline), FONT, _scale(row), (255, 255, 255), 1, cv2.LINE_AA)


def present_classes(*maps: np.ndarray, num_classes: int = NUM_CLASSES) -> list[int]:
    """Train IDs below ``num_classes`` that occur in any of the uint8 ``maps``, ascending."""
    counts = sum(np.bincount(m.ravel(), minlength=256) for m in maps)
    return np.flatnonzero(counts[:num_classes]).tolist()


def class_entries(class_ids: Sequence[int]) -> list[Entry]:
    """Legend rows of train IDs: class name and palette colour."""
    return [(CLASS_NAMES[i], tuple(int(c) for c in PALETTE[i])) for i in class_ids]


def _legend_columns(entries: Sequence[Entry], row: int, height: int) -> list[tuple[list[Entry], int]]:
    """Entries split into columns of at most ``height`` pixels, each with its pixel width."""
    pad = max(2, row // 4)
    per_column = max(1, (height - 2 * pad) // row)
    columns = [list(entries[i : i + per_column]) for i in range(0, len(entries), per_column)]
    return [(c, row + 2 * pad + max(_text_width(name, row) for name, _ in c) + pad) for c in columns]


def legend_size(entries: Sequence[Entry], row: int, height: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`draw_legend`'s box within ``height`` pixels."""
    if not entries:
        return 0, 0
    columns = _legend_columns(entries, row, height)
    pad = max(2, row // 4)
    return sum(width for _, width in columns) + pad, max(len(c) for c, _ in columns) * row + 2 * pad


def draw_legend(canvas: np.ndarray, entries: Sequence[Entry], row: int | None = None, shade: float = 0.35) -> np.ndarray:
    """Draw swatch + name rows, in as many columns as the canvas height needs, into its top-left
    corner on the darkened pixels (``shade``), in place; anything wider than the canvas is cut."""
    if not entries:
        return canvas
    height = canvas.shape[0]
    row = row or row_height(height)
    box_w, box_h = legend_size(entries, row, height)
    canvas[:box_h, :box_w] = (canvas[:box_h, :box_w] * shade).astype(np.uint8)
    pad = max(2, row // 4)
    x = pad
    for column, column_width in _legend_columns(entries, row, height):
        for i, (name, color) in enumerate(column):
            top = pad + i * row
            swatch = (x + pad, top + pad), (x + row - pad, top + row - pad)
            cv2.rectangle(canvas, *swatch, color, cv2.FILLED)
            cv2.rectangle(canvas, *swatch, (200, 200, 200), 1)  # black swatches stay visible
            _put_text(canvas, name, x + row + pad, top, row)
        x += column_width
    return canvas


def legend_panel(entries: Sequence[Entry], height: int, row: int | None = None) -> np.ndarray:
    """A black panel ``height`` pixels high, just wide enough for the legend."""
    row = row or row_height(height)
    width = max(1, legend_size(entries, row, height)[0])
    return draw_legend(np.zeros((height, width, 3), np.uint8), entries, row)


def titled(columns: Sequence[np.ndarray], titles: Sequence[str], row: int | None = None) -> np.ndarray:
    """The ``columns`` (same height) side by side under a black strip with each one's title centred above it."""
    row = row or row_height(columns[0].shape[0])
    strip = np.zeros((row, sum(c.shape[1] for c in columns), 3), np.uint8)
    x = 0
    for column, title in zip(columns, titles):
        _put_text(strip, title, x + max(0, (column.shape[1] - _text_width(title, row)) // 2), 0, row)
        x += column.shape[1]
    return np.concatenate([strip, np.concatenate(columns, axis=1)], axis=0)


# ----------------------------------------------------------------------------------- per-image pictures
def resize_bilinear(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 image at ``hw`` (PIL bilinear); unchanged if it already has that size."""
    if image.shape[:2] == tuple(hw):
        return image
    return np.array(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def overlay(image: np.ndarray, prediction: np.ndarray, alpha: float = 0.5, legend: bool = True,
            colors: np.ndarray | None = None) -> np.ndarray:
    """The input image (resized to the prediction's size) blended with the coloured prediction
    (``alpha``: the colours' weight), with a legend of the classes the prediction shows.
    ``colors``: ``colorize(prediction)`` if the caller has it already (a third of the cost)."""
    image = resize_bilinear(image, prediction.shape)
    out = cv2.addWeighted(image, 1 - alpha, colorize(prediction) if colors is None else colors, alpha, 0)
    return draw_legend(out, class_entries(present_classes(prediction))) if legend else out


def error_map(prediction: np.ndarray, label: np.ndarray, image: np.ndarray | None = None, legend: bool = True) -> np.ndarray:
    """Wrong pixels red, correct ones the input image in dimmed grey (values 48..176, never black
    nor red; plain grey without an image), unlabelled ones black; the legend gives the shares."""
    if image is None:
        out = np.full((*label.shape, 3), ERROR_COLORS["correct"], np.uint8)
    else:
        grey = cv2.cvtColor(resize_bilinear(image, label.shape), cv2.COLOR_RGB2GRAY)
        out = cv2.cvtColor(cv2.convertScaleAbs(grey, alpha=0.5, beta=48), cv2.COLOR_GRAY2RGB)
    ignore = label == IGNORE_INDEX
    wrong = (prediction != label) & ~ignore
    out[wrong] = ERROR_COLORS["wrong"]
    out[ignore] = ERROR_COLORS["ignore"]
    if not legend:
        return out
    scored = max(1, int((~ignore).sum()))
    n_wrong = int(wrong.sum())
    entries = [(f"correct {100 * (scored - n_wrong) / scored:.1f}%", ERROR_COLORS["correct"]),
               (f"wrong {100 * n_wrong / scored:.1f}%", ERROR_COLORS["wrong"])]
    if ignore.any():
        entries.append(("ignore", ERROR_COLORS["ignore"]))
    return draw_legend(out, entries)


def prediction_pictures(image: np.ndarray, prediction: np.ndarray, label: np.ndarray,
                        colors: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{"overlay": ..., "error": ...}`` at the label's size; no error map for an unlabelled image."""
    image = resize_bilinear(image, prediction.shape)
    pictures = {"overlay": overlay(image, prediction, colors=colors)}
    if (label != IGNORE_INDEX).any():
        pictures["error"] = error_map(prediction, label, image)
    return pictures


def heatmap(values: np.ndarray, colormap: int = cv2.COLORMAP_INFERNO) -> np.ndarray:
    """Values in [0, 1] as an RGB heat map (bright = high)."""
    grey = np.clip(values * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, colormap), cv2.COLOR_BGR2RGB)


def colorbar(height: int, colormap: int = cv2.COLORMAP_INFERNO, row: int | None = None) -> np.ndarray:
    """A vertical colour bar for :func:`heatmap` (1 at the top, 0 at the bottom, both ticked), black background."""
    row = row or row_height(height)
    pad = max(2, row // 4)
    bar_width = max(4, row * 3 // 4)
    width = pad + bar_width + pad + _text_width("1", row) + pad
    out = np.zeros((height, width, 3), np.uint8)
    # the ends of the bar sit mid-way in the tick labels' rows; a picture lower than two rows keeps half its height
    top = min(row // 2, height // 4)
    bottom = height - top
    out[top:bottom, pad : pad + bar_width] = heatmap(np.linspace(1, 0, bottom - top)[:, None], colormap)
    for text, y in (("1", top), ("0", bottom - 1)):
        cv2.line(out, (pad + bar_width, y), (pad + bar_width + pad - 1, y), (255, 255, 255), 1)
        _put_text(out, text, pad + bar_width + pad, y - row // 2, row)
    return out


def entropy_heatmap(entropy: np.ndarray) -> np.ndarray:
    """Normalised entropy in [0, 1] as an RGB heat map (bright = uncertain) with its colour bar on
    the right: the one entropy picture of the validation panels and the ranking's examples."""
    return np.concatenate([heatmap(entropy), colorbar(entropy.shape[0])], axis=1)


def mask_panel(image: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """The image (resized to the masks' size) and each mask of train IDs in the Cityscapes
    colours, side by side under their titles (the masks' names), with the legend of the classes
    the masks show on the right: segmentation masks where a dashboard cannot overlay them."""
    hw = next(iter(masks.values())).shape
    columns = [resize_bilinear(image, hw), *(colorize(mask) for mask in masks.values())]
    panel = titled(columns, ["image", *(name.replace("_", " ") for name in masks)])
    legend = legend_panel(class_entries(present_classes(*masks.values())), panel.shape[0])
    return np.concatenate([panel, legend], axis=1)


# ----------------------------------------------------------------------------------- per-test figures
def reliability_bins(count: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> dict[str, list]:
    """Per equal-width confidence bin: pixels, mean confidence and accuracy (None if empty), from the
    bin sums of :class:`~intrada_pl.stages.evaluation.PixelCalibrationError`, whose extra last bin
    (confidence exactly 1) joins the bin below; ``ECE`` (%) from the bins as the metric has them."""
    count, confidence, correct = (np.asarray(a, np.float64) for a in (count, confidence, correct))
    ece = 100 * np.abs(correct - confidence).sum() / max(count.sum(), 1)
    n_bins = len(count) - 1
    count, confidence, correct = (np.concatenate([a[: n_bins - 1], [a[n_bins - 1 :].sum()]]) for a in (count, confidence, correct))
    return {
        "edges": np.linspace(0, 1, n_bins + 1).tolist(),
        "count": count.astype(np.int64).tolist(),
        "confidence": _per_pixel(confidence, count),
        "accuracy": _per_pixel(correct, count),
        "ECE": float(ece),
    }


def _per_pixel(sums: np.ndarray, count: np.ndarray) -> list[float | None]:
    return [None if n == 0 else float(s / n) for s, n in zip(sums, count)]


def reliability_figure(bins: dict[str, list], title: str) -> Figure:
    """Accuracy against confidence per bin (the gap to the diagonal hatched), over the share of pixels per bin."""
    fig = Figure(figsize=(5, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    edges = np.asarray(bins["edges"])
    left, width = edges[:-1], np.diff(edges)
    filled = [i for i, n in enumerate(bins["count"]) if n > 0]
    accuracy = np.array([bins["accuracy"][i] for i in filled])
    confidence = np.array([bins["confidence"][i] for i in filled])
    top.bar(left[filled], accuracy, width[filled], align="edge", color="tab:blue", edgecolor="black", label="accuracy")
    top.bar(left[filled], confidence - accuracy, width[filled], bottom=accuracy, align="edge", color="tab:red",
            alpha=0.3, hatch="//", edgecolor="tab:red", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {bins['ECE']:.2f}%")
    top.legend(loc="upper left")
    share = 100 * np.asarray(bins["count"], np.float64) / max(1, sum(bins["count"]))
    bottom.bar(left, share, width, align="edge", color="tab:gray", edgecolor="black")
    bottom.set(xlabel="confidence (max softmax)", ylabel="% pixels")
    return fig


def confusion_figure(counts: np.ndarray, names: Sequence[str], title: str) -> Figure:
    """The confusion matrix in % of each ground-truth class's pixels (recall; grey where a class
    never occurs), class names on both axes, shares of at least 10% written in the cells."""
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(1, keepdims=True)
    share = np.divide(100 * counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    n = len(names)
    fig = Figure(figsize=(0.38 * n + 2.5, 0.38 * n + 1.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap=colormaps["Blues"].with_extremes(bad="lightgrey"), vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.04, label="% of the ground-truth class's pixels")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(xlabel="prediction", ylabel="ground truth", title=title)
    for (i, j), value in np.ndenumerate(share):
        if value >= 10:
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="white" if value > 60 else "black")
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """The figure rendered as an RGB array (what an image logger takes)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def write_figure(path: str | Path, fig: Figure) -> Path:
    """Save the figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def strength_figure(strengths: Mapping[str, Mapping[str, Tensor]], title: str | None = None) -> Figure:
    """Per-layer channel mean +- std of the calibration strengths (mean and variance) against the
    layer names (:func:`intrada_pl.models.bn_calibration.learned_strengths`)."""
    if not strengths:
        raise ValueError("no strengths to plot")
    names = list(strengths)
    xs = list(range(len(names)))
    fig = Figure(figsize=(max(6.0, 0.12 * len(names) + 3.0), 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, color in (("mean", "tab:blue"), ("var", "tab:orange")):
        stacked = [strengths[n][key].detach().float().cpu() for n in names]
        mu = [float(s.mean()) for s in stacked]
        sd = [float(s.std(correction=0)) if s.numel() > 1 else 0.0 for s in stacked]
        ax.plot(xs, mu, marker="o", markersize=3, color=color, label=f"{key} strength")
        ax.fill_between(xs, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=color, alpha=0.25)
    ax.set_xticks(xs, names, rotation=90, fontsize=6)  # the calibration layers' module names, in model order
    ax.set_xlabel("calibrated layer")
    ax.set_ylabel("strength m (0 = source BN, 1 = instance stats)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(title or f"Calibration strengths over {len(names)} layers (channel mean ± std)")
    fig.tight_layout()
    return fig
