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

# Imported so that short class names (``SegmentationModule``, ``SourceTargetDataModule``) resolve in configs.
from intrada_pl.data import datamodules  # noqa: E402,F401
from intrada_pl.data.datamodules import TargetDataModule  # noqa: E402
from intrada_pl.stages import segmentation  # noqa: E402,F401
from intrada_pl.stages.evaluation import Evaluator  # noqa: E402
from intrada_pl.stages.segmentation import SegmentationEvalModule  # noqa: E402

USAGE = """usage: intrada COMMAND [options]

commands:
  fit        train a stage:            intrada fit --config configs/source_only_gta5.yaml
  validate   validate a stage:         intrada validate --config CFG --ckpt_path CKPT
  predict    run a stage's prediction: intrada predict --config CFG --ckpt_path CKPT
  test       evaluate checkpoints:     intrada test --config configs/test_cityscapes.yaml --ckpt PATH [--ckpt PATH2]
                                         [--data.root DIR] [--output OUT] [--save_predictions]
  toy-data   write the demo data:      intrada toy-data OUT
  inspect    check a dataset on disk:  intrada inspect {gta5,synthia,synscapes,cityscapes,...} ROOT [--split S] [--json]

'intrada COMMAND --help' lists a command's options."""


class TrainingCLI(LightningCLI):
    """fit / validate / predict over any stage (``test`` has its own CLI, see :class:`EvaluationCLI`)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        return {name: commands[name] for name in ("fit", "validate", "predict")}


class EvaluationCLI(LightningCLI):
    """``intrada test``: the Evaluator on a TargetDataModule, with short flags for the common options."""

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


def _repeatable_ckpt(args: list[str]) -> list[str]:
    """``--ckpt a --ckpt b`` -> ``--ckpt+ a --ckpt+ b`` (jsonargparse's list-append syntax)."""
    out = []
    for arg in args:
        if arg == "--ckpt":
            out.append("--ckpt+")
        elif arg.startswith("--ckpt="):
            out.append("--ckpt+=" + arg.split("=", 1)[1])
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
    ns = parser.parse_args(args)
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
        EvaluationCLI(Evaluator, TargetDataModule, save_config_callback=None, args=_repeatable_ckpt(args))
        return
    TrainingCLI(
        SegmentationEvalModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
