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
import sys  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402

from intrada_pl.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from intrada_pl.checkpoints import build_segmenter  # noqa: E402
from intrada_pl.io import write_json  # noqa: E402
from intrada_pl.models.deeplabv2 import DeepLabV2  # noqa: E402
from intrada_pl.models.weights import CheckpointMismatchError, is_lightning_checkpoint, read_checkpoint  # noqa: E402
from intrada_pl.runs import place_loggers, resolve_resume  # noqa: E402

# Imported so that short class names (``SegmentationModule``, ``SourceTargetDataModule``) resolve in configs.
from intrada_pl.data import datamodules  # noqa: E402,F401
from intrada_pl.stages import calibration, inter, intra, segmentation  # noqa: E402,F401
from intrada_pl.stages.evaluation import EvaluationDataModule, Evaluator, strength_grid  # noqa: E402
from intrada_pl.stages.segmentation import SegmentationEvalModule  # noqa: E402

# main() dispatches on the command and hands LightningCLI the arguments itself, which LightningCLI
# warns about whenever sys.argv holds arguments too: on every run of the console script.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

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
                                         [--option KEY=VALUE ...] (e.g. condition=night); exit 1 if problems

'intrada COMMAND --help' lists a command's options."""


class TrainingCLI(LightningCLI):
    """fit / validate / predict over any stage (``test`` has its own CLI, see :class:`EvaluationCLI`).

    A config's run lives in ``trainer.default_root_dir`` (:mod:`intrada_pl.runs`): loggers without
    ``save_dir`` log there, ``--ckpt_path last`` resumes its ``last.ckpt`` or fails, and
    ``--ckpt_path last_if_present`` resumes it or starts fresh.

    ``--ckpt_path`` takes our Lightning checkpoints, restored by Lightning (class and architecture
    from their hyperparameters), and, for validate / predict, a bare DeepLabV2 state dict such as
    the released ADVENT / IntraDA ``.pth``: Lightning cannot restore that, so the configured
    module gets the segmenter rebuilt from it instead (architecture read off the weights, as
    ``intrada test`` does). The summary of a ranking names it like any checkpoint.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        return {name: commands[name] for name in ("fit", "validate", "predict")}

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        self.weights: tuple[str, DeepLabV2] | None = None
        command = self.config.get("subcommand")
        config = self.config[command] if command else {}
        if command:  # the run folder (intrada_pl.runs): loggers' save_dir, --ckpt_path last / last_if_present
            place_loggers(config.trainer)
            config.ckpt_path = resolve_resume(config.get("ckpt_path"), config.trainer)
        path = config.get("ckpt_path")
        if not path or not os.path.isfile(path):  # "last", "best", or a missing file: Lightning's to report
            return
        blob = read_checkpoint(path)  # one clear error for a file that is no checkpoint at all
        if is_lightning_checkpoint(blob):
            return
        if command == "fit":
            raise CheckpointMismatchError(
                f"{path} holds weights, not a Lightning checkpoint to resume training from; "
                f"start from them with --model.init_args.pretrained {path}")
        segmenter, _ = build_segmenter(blob, path, config.get("model.init_args.num_classes"))
        self.weights = (path, segmenter)
        config.ckpt_path = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's Trainer, saving checkpoints beside their target (:class:`AtomicCheckpointIO`)
        unless a CheckpointIO plugin was given, and with its loggers that are callbacks too (the
        CSVLogger's resume hook, :class:`intrada_pl.loggers.CSVLogger`) among its callbacks."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks += [logger for logger in trainer.loggers if isinstance(logger, Callback) and logger not in trainer.callbacks]
        return trainer

    def after_instantiate_classes(self) -> None:
        if self.weights is not None:
            path, segmenter = self.weights
            self.model.model = segmenter
            self.model.weights_file = path  # what the ranking's summary names


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
    """``intrada inspect``: exit status 1 when the report lists problems (scripts gate on it)."""
    from intrada_pl.data.inspect import main as inspect

    if inspect(args, prog="intrada inspect"):
        raise SystemExit(1)


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
    traceback. ``INTRADA_TRACEBACK=1`` shows the traceback too.

    A class's ``__init__`` that refuses its arguments (a calibration ``init_ckpt`` that is no
    checkpoint) reaches here wrapped in jsonargparse's ValueError, with the error as its cause."""
    from intrada_pl.data.datasets import DatasetLayoutError, LabelFormatError
    from intrada_pl.pipeline import PipelineError

    try:
        main()
    except Exception as error:
        cause: BaseException | None = error
        known = (DatasetLayoutError, LabelFormatError, CheckpointMismatchError, FileNotFoundError, PipelineError)
        while cause is not None and not isinstance(cause, known):
            cause = cause.__cause__
        if cause is None or os.environ.get("INTRADA_TRACEBACK"):
            raise
        print(f"intrada: error: {cause}", file=sys.stderr)
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
