"""``intrada calibrate-grid`` and ``intrada calibrate-layers``: ``intrada test`` over many test-time
method variants, then a study of their results."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from intrada_pl.cli.lightning import EvaluationCLI, lightning_errors, repeatable_ckpt
from intrada_pl.io import write_json
from intrada_pl.stages.evaluation import EvaluationDataModule, Evaluator, format_layer_table, layer_study, plot_layer_study, strength_grid
from intrada_pl.stages.tta import LAYER_GROUPS, MethodSpec


def calibrate_grid_main(args: Sequence[str]) -> None:
    """``intrada test`` over manual strengths m (``--strengths``, default 0, 0.1, ..., 1), then the
    mIoU / ECE per m and the best m of every target in ``OUT/grid.json``."""
    default = ["--strengths", "[" + ",".join(f"{m / 10:g}" for m in range(11)) + "]"]
    with lightning_errors():
        cli = EvaluationCLI(
            Evaluator, EvaluationDataModule, save_config_callback=None, args=repeatable_ckpt(["test", *default, *args]), prog="intrada calibrate-grid"
        )
    if cli.trainer.is_global_zero:
        grid = strength_grid(cli.model.results)
        for target, row in grid.items():
            best = f"{row['best_strength']:g}"
            print(f"{target}: best manual strength m = {best} (mIoU {row['mIoU'][best]})")
        print(f"manual strength grid written to {write_json(cli.model.output / 'grid.json', grid)}")


def calibrate_layers_main(args: Sequence[str]) -> None:
    """``intrada test`` with one calibration on every layer group alone and on all layers but it,
    beside ``none`` and all layers, in one pass over the target; ``OUT/layers.json`` holds the
    mIoU / ECE per variant and ``OUT/layers.png`` plots them. Other options are ``intrada test``'s."""
    parser = argparse.ArgumentParser(
        prog="intrada calibrate-layers",
        description="Which BatchNorm layers matter: a calibration on each layer group alone and on all but it. "
                    "Every other option (--config, --ckpt, --output, --model.*) is intrada test's.",
    )
    parser.add_argument("--calibration", default="bn_adapt", help="the method to restrict (default bn_adapt; e.g. manual@0.3, adabn, instcal_u)")
    default_groups = ",".join(g for g in LAYER_GROUPS if g != "heads")  # DeepLabV2's heads hold no BatchNorm
    parser.add_argument("--groups", default=default_groups, help=f"layer groups or name patterns, comma-separated (default {default_groups})")
    ns, rest = parser.parse_known_args(args)
    groups = list(dict.fromkeys(g.strip() for g in ns.groups.split(",") if g.strip()))
    variants = ["none", ns.calibration, *(f"{ns.calibration}[{sign}{g}]" for g in groups for sign in ("", "-"))]
    try:
        if not groups or MethodSpec.parse(ns.calibration).layers:
            raise ValueError(f"give --groups and a --calibration without a layer selection, got {ns.calibration!r}")
        for variant in variants:
            MethodSpec.parse(variant)
    except ValueError as error:
        parser.error(str(error))
    calibrations = [f"--calibration={v}" for v in variants]
    with lightning_errors():
        cli = EvaluationCLI(
            Evaluator, EvaluationDataModule, save_config_callback=None, args=repeatable_ckpt(["test", *rest, *calibrations]), prog="intrada calibrate-layers"
        )
    if cli.trainer.is_global_zero:
        study = layer_study(cli.model.results, MethodSpec.parse(ns.calibration, cli.model.hparams.strength).name, groups)
        print(format_layer_table(study))
        print(f"layer study written to {write_json(cli.model.output / 'layers.json', study)} "
              f"and {plot_layer_study(study, cli.model.output / 'layers.png')}")
