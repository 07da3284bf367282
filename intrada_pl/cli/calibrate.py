"""``intrada calibrate-grid`` and ``intrada calibrate-layers``: ``intrada test`` over many test-time
method variants, then a study of their results."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from intrada_pl.cli.lightning import EvaluationCLI, lightning_errors, one_dialect, repeatable_ckpt
from intrada_pl.data.datamodules import EvaluationDataModule
from intrada_pl.evaluation.report import percent_pair
from intrada_pl.io import write_json
from intrada_pl.models.factory import load_segmenter
from intrada_pl.stages.evaluation import Evaluator
from intrada_pl.tables import text_table
from intrada_pl.tta import MethodSpec, groups_with_batchnorm
from intrada_pl.tta.spec import CHANNEL_METHODS
from intrada_pl.visuals import write_figure


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
        rows = [[g, percent_pair(row["alone"][g]), percent_pair(row["all_but"][g])] for g in row["alone"]]
        rows += [["none", percent_pair(row["none"]), ""], ["all layers", percent_pair(row["all"]), ""]]
        tables.append(text_table(["group", "alone", "all but"], rows, title=f"{target}: {row['method']} per layer group, mIoU (%) / ECE (%)"))
    return "\n".join(tables)


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
    write_figure(path, fig)
    return path


def calibrate_grid_main(args: Sequence[str]) -> None:
    """``intrada test`` over manual strengths m (``--strengths``, default 0, 0.1, ..., 1), then the
    mIoU / ECE per m and the best m of every target in ``OUT/grid.json``."""
    default = ["--strengths", "[" + ",".join(f"{m / 10:g}" for m in range(11)) + "]"]
    with lightning_errors():
        cli = EvaluationCLI(
            Evaluator, EvaluationDataModule, save_config_callback=None, args=repeatable_ckpt(["test", *default, *args]), prog="intrada calibrate-grid"
        )
    if cli.trainer.is_global_zero:
        grid = strength_grid(cli.model.results.scores)
        for target, row in grid.items():
            best = f"{row['best_strength']:g}"
            print(f"{target}: best manual strength m = {best} (mIoU {row['mIoU'][best]})")
        print(f"manual strength grid written to {write_json(cli.model.output_folder() / 'grid.json', grid)}")


def layer_variants(method: str, groups: Sequence[str]) -> list[str]:
    """``none``, ``method`` on every layer, and on each group alone and on all but it."""
    return ["none", method, *(f"{method}[{sign}{g}]" for g in groups for sign in ("", "-"))]


class LayerStudyCLI(EvaluationCLI):
    """``intrada test`` with ``method`` on every layer group alone and on all layers but it, beside
    ``none`` and ``method`` on all layers; ``groups`` (None: the first checkpoint's segmenter's groups,
    those that hold BatchNorm layers for a BatchNorm method) are settled before the evaluator is built."""

    def __init__(self, method: str, groups: list[str] | None, *args, **kwargs) -> None:
        self.method, self.groups = method, groups
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        model = self.config.test.model
        if not model.checkpoints:  # the evaluator says what is missing
            return
        if self.groups is None:
            segmenter = load_segmenter(model.checkpoints[0])[0]
            channel = MethodSpec.parse(self.method).calibration in CHANNEL_METHODS  # sites everywhere, not only BNs
            self.groups = list(segmenter.layer_groups()) if channel else groups_with_batchnorm(segmenter)
        model.methods = [*model.methods, *layer_variants(self.method, self.groups)]


def calibrate_layers_main(args: Sequence[str]) -> None:
    """``intrada test`` with one method on every layer group alone and on all layers but it,
    beside ``none`` and all layers, in one pass over the target; ``OUT/layers.json`` holds the
    mIoU / ECE per variant and ``OUT/layers.png`` plots them. Other options are ``intrada test``'s."""
    parser = argparse.ArgumentParser(
        prog="intrada calibrate-layers",
        description="Which BatchNorm layers matter: a test-time method on each layer group alone and on all but it. "
                    "Every other option (--config, --ckpt, --output, --model.*) is intrada test's.",
    )
    parser.add_argument("--method", default="bn_adapt", help="the method to restrict (default bn_adapt; e.g. manual@0.3, adabn, instcal_u)")
    parser.add_argument("--groups", default=None,
                        help="layer groups or name patterns, comma-separated (default: the network's groups that hold BatchNorm layers, "
                             "e.g. DeepLabV2's stem,layer1,layer2,layer3,layer4)")
    ns, rest = parser.parse_known_args(one_dialect(list(args), "calibrate-layers"))
    groups = None if ns.groups is None else list(dict.fromkeys(g.strip() for g in ns.groups.split(",") if g.strip()))
    try:
        spec = MethodSpec.parse(ns.method)
        if groups == [] or spec.layers or spec.calibration == "none":
            raise ValueError(f"give --groups and a --method that calibrates BatchNorm layers, without a layer selection; got {ns.method!r}")
    except ValueError as error:
        parser.error(str(error))
    with lightning_errors():
        cli = LayerStudyCLI(
            ns.method, groups, Evaluator, EvaluationDataModule, save_config_callback=None, args=repeatable_ckpt(["test", *rest]),
            prog="intrada calibrate-layers",
        )
    if cli.trainer.is_global_zero:
        study = layer_study(cli.model.results.scores, MethodSpec.parse(ns.method, cli.model.hparams.strength).name, cli.groups)
        folder = cli.model.output_folder()
        print(format_layer_table(study))
        print(f"layer study written to {write_json(folder / 'layers.json', study)} and {plot_layer_study(study, folder / 'layers.png')}")
