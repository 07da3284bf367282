"""The ``intrada`` command.

``fit`` / ``validate`` / ``predict`` are LightningCLI subcommands over any stage and data
module (YAML configs, ``--trainer.*`` overrides); ``test`` is a LightningCLI of its own around the
:class:`Evaluator`, so ``--ckpt`` can take our checkpoints, released reference ``.pth`` files, or
several of them as an ensemble; ``toy-data`` and ``inspect`` are plain helpers.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would query PyPI on import

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from lightning.pytorch.cli import LightningCLI  # noqa: E402

from intrada_pl.io import write_json  # noqa: E402

# Imported so that short class names (``SegmentationModule``, ``SourceTargetDataModule``) resolve in configs.
from intrada_pl.data import datamodules  # noqa: E402,F401
from intrada_pl.stages import calibration, inter, intra, segmentation  # noqa: E402,F401
from intrada_pl.stages.evaluation import EvaluationDataModule, Evaluator, strength_grid  # noqa: E402
from intrada_pl.stages.segmentation import SegmentationEvalModule  # noqa: E402

USAGE = """usage: intrada COMMAND [options]

commands:
  fit        train a stage:            intrada fit --config configs/source_only_gta5.yaml
  validate   validate a stage:         intrada validate --config CFG --ckpt_path CKPT
  predict    run a stage's prediction: intrada predict --config CFG --ckpt_path CKPT
  test       evaluate checkpoints:     intrada test --config configs/test_cityscapes.yaml --ckpt PATH [--ckpt PATH2]
                                         [--data.root DIR] [--output OUT] [--save_predictions]
                                         [--calibration METHOD ...] [--strength M] (test-time methods side by side)
  calibrate-grid  manual strength grid: intrada calibrate-grid --config configs/test_cityscapes.yaml --ckpt PATH
                                         [--strengths 0,0.1,...,1]   (mIoU/ECE per m -> OUT/grid.json)
  pipeline   the whole method:         intrada pipeline --config configs/pipeline_gta5.yaml
  toy-data   write the demo data:      intrada toy-data OUT [--check-ranking RANKING_DIR]
  inspect    check a dataset on disk:  intrada inspect {gta5,synthia,synscapes,cityscapes,...} ROOT [--split S] [--json]

'intrada COMMAND --help' lists a command's options."""


class TrainingCLI(LightningCLI):
    """fit / validate / predict over any stage (``test`` has its own CLI, see :class:`EvaluationCLI`)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        return {name: commands[name] for name in ("fit", "validate", "predict")}


class EvaluationCLI(LightningCLI):
    """``intrada test``: the Evaluator on one or several targets, with short flags for the common options."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"test": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt", type=list[str], default=[], help="checkpoint(s) to evaluate; repeat for a logit ensemble")
        parser.add_argument("--output", type=str | None, default=None, help="where metrics.json and predictions go (default: the run directory)")
        parser.add_argument("--save_predictions", type=bool, default=False, help="write label-ID and colour PNGs")
        parser.link_arguments("ckpt", "model.checkpoints")
        parser.link_arguments("output", "model.output_dir")
        parser.link_arguments("save_predictions", "model.save_predictions")
        parser.add_argument(
            "--calibration", type=list[str], default=[],
            help="test-time method(s): none, manual[@M], bn_adapt, instcal_u, instcal_c, tent, instcal_u+tent, instcal_c+tent; repeat to compare",
        )
        parser.add_argument("--strength", type=float, default=0.1, help="m of a plain 'manual' method")
        parser.add_argument("--strengths", type=list[float], default=[], help="adds manual@M for each M (comma-separated)")
        parser.link_arguments(
            ("calibration", "strengths"), "model.calibrations", compute_fn=lambda methods, ms: [*methods, *(f"manual@{m:g}" for m in ms)]
        )
        parser.link_arguments("strength", "model.strength")


def _repeatable_ckpt(args: list[str]) -> list[str]:
    """``--ckpt a --ckpt b`` -> ``--ckpt+ a --ckpt+ b`` (jsonargparse's list-append syntax), the same
    for ``--calibration``; ``--strengths 0,0.5`` -> ``--strengths [0,0.5]``."""
    out = []
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag in ("--ckpt", "--calibration"):
            out.append(f"{flag}+{eq}{value}")
        elif flag == "--strengths" and eq and not value.startswith("["):
            out.append(f"--strengths=[{value}]")
        elif out and out[-1] == "--strengths" and not arg.startswith("["):
            out.append(f"[{arg}]")
        elif arg == "--save_predictions":
            out.append("--save_predictions=true")
        else:
            out.append(arg)
    return out


def toy_data_main(args: Sequence[str]) -> None:
    from intrada_pl.data.toy import ToySpec, generate

    parser = argparse.ArgumentParser(prog="intrada toy-data", description="Write the generated two-domain demo data.")
    parser.add_argument("out", help="output folder (gets GTA5/, Cityscapes/ and toy_meta.json)")
    defaults = ToySpec()
    parser.add_argument("--source-images", type=int, default=defaults.source_images)
    parser.add_argument("--target-train", type=int, default=defaults.target_train)
    parser.add_argument("--target-val", type=int, default=defaults.target_val)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--check-ranking", metavar="RANKING_DIR", default=None,
        help="write nothing; report how many of OUT's generated hard images this entropy ranking put in its hard split",
    )
    ns = parser.parse_args(args)
    if ns.check_ranking:
        from intrada_pl.data.toy import ranking_recall

        r = ranking_recall(ns.out, ns.check_ranking)
        print(
            f"entropy ranking vs the toy data's ground truth: {r['found']} of the {r['generated_hard']} rainy/night "
            f"train images are among the {r['ranked_hard']} ranked hard (a random split would find {r['chance']:.1f})"
        )
        return
    spec = ToySpec(source_images=ns.source_images, target_train=ns.target_train, target_val=ns.target_val, seed=ns.seed)
    summary = generate(ns.out, spec)
    print(f"source (GTA5 layout):       {summary['source_root']} ({spec.source_images} images)")
    print(f"target (Cityscapes layout): {summary['target_root']} ({spec.target_train} train, {spec.target_val} val)")
    print(f"summary: {os.path.join(ns.out, 'toy_meta.json')}")


def inspect_main(args: Sequence[str]) -> None:
    from intrada_pl.data.datasets import DATASETS
    from intrada_pl.data.inspect import format_report, inspect_dataset

    parser = argparse.ArgumentParser(prog="intrada inspect", description="Report a dataset's images, sizes, class pixels and problems.")
    parser.add_argument("dataset", help=f"one of {', '.join(DATASETS)} or a dotted class path")
    parser.add_argument("root")
    parser.add_argument("--split", default=None)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    ns = parser.parse_args(args)
    report = inspect_dataset(ns.dataset, ns.root, split=ns.split)
    print(json.dumps(report, indent=2) if ns.json else format_report(report))


def calibrate_grid_main(args: Sequence[str]) -> None:
    """``intrada test`` over manual strengths m (``--strengths``, default 0, 0.1, ..., 1), then the
    mIoU / ECE per m and the best m of every target in ``OUT/grid.json``."""
    default = ["--strengths", "[" + ",".join(f"{m / 10:g}" for m in range(11)) + "]"]
    cli = EvaluationCLI(Evaluator, EvaluationDataModule, save_config_callback=None, args=_repeatable_ckpt(["test", *default, *args]))
    if cli.trainer.is_global_zero:
        grid = strength_grid(cli.model.results)
        for target, row in grid.items():
            best = f"{row['best_strength']:g}"
            print(f"{target}: best manual strength m = {best} (mIoU {row['mIoU'][best]})")
        print(f"manual strength grid written to {write_json(cli.model.output / 'grid.json', grid)}")


def pipeline_main(args: Sequence[str]) -> None:
    from intrada_pl.pipeline import Pipeline

    parser = argparse.ArgumentParser(prog="intrada pipeline", description="Run a whole method, stage by stage (resumable).")
    parser.add_argument("--config", required=True, help="a pipeline YAML, e.g. configs/pipeline_gta5.yaml")
    Pipeline.from_yaml(parser.parse_args(args).config).run()


def run() -> None:
    """The console script: :func:`main`, with bad input (a dataset root, list, label file or
    checkpoint that does not fit) reported as one message and exit status 2 instead of a
    traceback. ``INTRADA_TRACEBACK=1`` shows the traceback too."""
    from intrada_pl.data.datasets import DatasetLayoutError, LabelFormatError
    from intrada_pl.models.weights import CheckpointMismatchError

    try:
        main()
    except (DatasetLayoutError, LabelFormatError, CheckpointMismatchError, FileNotFoundError) as error:
        if os.environ.get("INTRADA_TRACEBACK"):
            raise
        print(f"intrada: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main(args: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if args is None else args)
    command = args[0] if args else None
    if command in (None, "-h", "--help"):
        print(USAGE)
        return
    if command == "toy-data":
        return toy_data_main(args[1:])
    if command == "inspect":
        return inspect_main(args[1:])
    if command == "test":
        EvaluationCLI(Evaluator, EvaluationDataModule, save_config_callback=None, args=_repeatable_ckpt(args))
        return
    if command == "calibrate-grid":
        return calibrate_grid_main(args[1:])
    if command == "pipeline":
        return pipeline_main(args[1:])
    TrainingCLI(
        SegmentationEvalModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    run()
