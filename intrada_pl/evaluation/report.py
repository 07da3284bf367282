"""The report of an evaluation: its files (``metrics.json``, ``confusion.json``, reliability
diagrams), the console table and the dashboards (:class:`~intrada_pl.dashboards.Dashboards`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from intrada_pl.dashboards import Dashboards
from intrada_pl.data.datasets import resize_nearest
from intrada_pl.data.labels import CLASS_NAMES, IGNORE_INDEX
from intrada_pl.evaluation.results import EvaluationResults
from intrada_pl.io import write_json
from intrada_pl.metrics import format_iou_table
from intrada_pl.tables import number, text_table
from intrada_pl.visuals import confusion_figure, figure_array, reliability_figure, write_figure


def format_results_table(scores: dict[str, dict[str, dict]]) -> str:
    """target x method -> mIoU (%), ECE (%), seconds per image."""
    methods = list(dict.fromkeys(m for per_target in scores.values() for m in per_target))
    rows = [[target, *("-" if (r := per_method.get(m)) is None else f"{percent_pair(r)} / {r['seconds_per_image']:.3f}" for m in methods)]
            for target, per_method in scores.items()]
    return text_table(["target", *methods], rows, title="mIoU (%) / ECE (%) / seconds per image")


def percent_pair(scores: dict) -> str:
    """``mIoU / ECE`` in %, ``n/a`` where undefined."""
    return f"{number(scores['mIoU'])} / {number(scores['ECE'])}"


def console_report(results: EvaluationResults) -> str:
    """The per-class table of a single result, else the target x method table."""
    if not results.single:
        return format_results_table(results.scores)
    only = results.scores[results.targets[0]][results.methods[0]]
    return f"{format_iou_table(only)}\nECE (%): {number(only['ECE'])}   seconds per image: {only['seconds_per_image']:.4f}"


def metrics_json(results: EvaluationResults) -> dict[str, Any]:
    """``metrics.json``: what was evaluated and every score; a single result's numbers at the top level too."""
    metrics: dict[str, Any] = {"checkpoints": results.checkpoints, "methods": results.methods, "targets": results.targets, "results": results.scores}
    if results.single:
        return {**results.scores[results.targets[0]][results.methods[0]], **metrics}
    return metrics


class EvaluationReport(Callback):
    """Writes, into ``folder``, ``metrics.json`` once every image is scored (a run stopped earlier
    leaves none, not even an earlier run's), the confusion matrices (``confusion.json``: pixel
    counts, ground truth x prediction, per target and method) and a reliability diagram per
    labelled target and method (``reliability_<target>_<method>.png``); prints the results table.
    The run's dashboards get, per target and method, the first ``images`` images with their
    predicted (and true) masks and, for a labelled target, the per-class IoU table, the
    confusion matrix (heat map and counts) and the reliability diagram (and its bins).

    Takes the evaluator's ``test_step`` output (per method, the predicted train IDs at label
    resolution) and, at the end, its ``results`` (:class:`EvaluationResults`).
    """

    def __init__(self, folder: str | Path, images: int = 4) -> None:
        self.folder = Path(folder)
        self.images = images

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        (self.folder / "metrics.json").unlink(missing_ok=True)  # stands for a complete pass of this run only
        self.dashboards = Dashboards.of(trainer)
        self.samples: dict[int, list[dict]] = {}  # per target: the first images, for the dashboards

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: dict,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        kept = self.samples.setdefault(dataloader_idx, [])
        wanted = self.images - len(kept) if self.dashboards.shows_pictures else 0
        if wanted <= 0:
            return
        predictions: list[Tensor] = outputs
        images = batch["image"][:wanted].permute(0, 2, 3, 1).byte().cpu().numpy()
        labels = batch["label"][:wanted].byte().cpu().numpy()
        arrays = [pred[:wanted].byte().cpu().numpy() for pred in predictions]
        for i, name in enumerate(batch["name"][:wanted]):
            hw = images[i].shape[:2]
            kept.append({"name": name, "image": images[i], "label": resize_nearest(labels[i], hw),
                         "predictions": [resize_nearest(pred[i], hw) for pred in arrays]})

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        results: EvaluationResults = pl_module.results
        path = write_json(self.folder / "metrics.json", metrics_json(results))
        self._write_diagnostics(results)
        if self.dashboards.shows_pictures or self.dashboards.shows_tables:
            self._show(results, trainer.global_step)
        rank_zero_info(f"{console_report(results)}\nmetrics written to {path}")

    def _write_diagnostics(self, results: EvaluationResults) -> None:
        counts = {target: {method: m.tolist() for method, m in per_method.items()} for target, per_method in results.confusion.items()}
        write_json(self.folder / "confusion.json", {"classes": list(CLASS_NAMES), "rows": "ground truth", "columns": "prediction", "counts": counts})
        for target, per_method in results.reliability.items():
            for method, bins in per_method.items():
                if sum(bins["count"]):
                    write_figure(self._reliability_path(target, method), reliability_figure(bins, f"{target} / {method}"))

    def _reliability_path(self, target: str, method: str) -> Path:
        return self.folder / f"reliability_{target}_{method}.png"

    def _show(self, results: EvaluationResults, step: int) -> None:
        """Per target and method: the kept images with their masks and, if labelled, the tables and figures."""
        for t, target in enumerate(results.targets):
            samples = self.samples.get(t, [])
            for k, method in enumerate(results.methods):
                prefix = results.key(target, method)
                masks = [{**({"ground_truth": s["label"]} if (s["label"] != IGNORE_INDEX).any() else {}), "predictions": s["predictions"][k]}
                         for s in samples]
                self.dashboards.images(prefix + "overlays", [s["image"] for s in samples], step, captions=[s["name"] for s in samples], masks=masks)
                bins, confmat = results.reliability[target][method], results.confusion[target][method]
                if not sum(bins["count"]):
                    continue
                edges = bins["edges"]
                self.dashboards.table(prefix + "iou_table", ["class", "IoU"], [list(i) for i in results.scores[target][method]["IoU"].items()], step)
                self.dashboards.images(prefix + "confusion", [figure_array(confusion_figure(confmat.numpy(), CLASS_NAMES, f"{target} / {method}"))], step)
                self.dashboards.table(prefix + "confusion_counts", ["ground truth", *CLASS_NAMES],
                                      [[c, *row] for c, row in zip(CLASS_NAMES, confmat.tolist())], step)
                self.dashboards.figure(prefix + "reliability", self._reliability_path(target, method), step)
                self.dashboards.table(prefix + "reliability_bins", ["from", "to", "pixels", "confidence", "accuracy"],
                                      [[edges[i], edges[i + 1], bins["count"][i], bins["confidence"][i], bins["accuracy"][i]]
                                       for i in range(len(bins["count"]))], step)
