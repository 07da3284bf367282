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
import difflib  # noqa: E402
import re  # noqa: E402
from importlib.metadata import version as package_version  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import NoReturn  # noqa: E402

import yaml  # noqa: E402

from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import ProgressBar  # noqa: E402
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI  # noqa: E402
from jsonargparse import dict_to_namespace, namespace_to_dict  # noqa: E402
from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch.plugins.io import TorchCheckpointIO  # noqa: E402

from intrada_pl.callbacks import StopOnSignal  # noqa: E402
from intrada_pl.checkpoint_io import AtomicCheckpointIO  # noqa: E402
from intrada_pl.errors import BadInputError, ConfigValueError  # noqa: E402
from intrada_pl.io import write_json  # noqa: E402
from intrada_pl.loggers import RunRecord  # noqa: E402
from intrada_pl.quiet import silence_noise  # noqa: E402
from intrada_pl.models.factory import release_spec  # noqa: E402
from intrada_pl.models.weights import CheckpointMismatchError, is_lightning_checkpoint, read_checkpoint, unwrap_state_dict  # noqa: E402
from intrada_pl.stages.hparams import differences, upgrade_hparams  # noqa: E402
from intrada_pl.progress import ConsoleProgressBar  # noqa: E402
from intrada_pl.runs import default_callbacks, default_loggers, place_loggers, resolve_resume, run_folder  # noqa: E402

# Imported so that short class names (``SegmentationModule``, ``SourceTargetDataModule``) resolve in configs.
from intrada_pl.data import datamodules  # noqa: E402,F401
from intrada_pl.stages import calibration, inter, intra, segmentation  # noqa: E402,F401
from intrada_pl.stages.evaluation import (  # noqa: E402
    EvaluationDataModule,
    Evaluator,
    format_layer_table,
    layer_study,
    plot_layer_study,
    strength_grid,
)
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
  calibrate-layers  which layers matter: intrada calibrate-layers --config CFG --ckpt PATH [--calibration bn_adapt]
                                         [--groups stem,layer1,...]  (each group alone / all but it -> OUT/layers.json, .png)
  pipeline   the whole method:         intrada pipeline --config configs/pipeline_gta5.yaml [--seeds 0,1,2]
  toy-data   write the demo data:      intrada toy-data OUT [--check-ranking RANKING_DIR]
  inspect    check a dataset on disk:  intrada inspect {gta5,synthia,synscapes,cityscapes,...} ROOT [--split S] [--json]
                                         [--option KEY=VALUE ...] (e.g. condition=night); exit 1 if problems

'intrada COMMAND --help' lists a command's options."""


def fail(message: str) -> NoReturn:
    """Report bad input as the console script does: one ``intrada: error:`` line, exit status 2."""
    print(f"intrada: error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineErrorParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a bad option or config value as one ``intrada: error:`` line
    naming the option (``--data.resize: Expected one of 'pil', 'opencv'. Got value: bicubic``)
    instead of the whole usage and jsonargparse's nested message, which ``INTRADA_TRACEBACK=1``
    still shows."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("INTRADA_TRACEBACK"):  # jsonargparse trying alternatives, or asked for all
            super().error(message, ex)
        keys: list[str] = []
        cause: BaseException | None = ex
        while cause is not None:  # jsonargparse chains one error per nesting level, each naming its key
            key = re.match(r'Parser key "([^"]+)":', str(cause))
            if key and key[1] not in keys:
                keys.append(key[1])
            message, cause = str(cause), cause.__cause__
        message = " ".join(message.split())
        message = re.sub(r"<class '([\w.]+)'>", r"\1", re.sub(r"(?:a )?(?:typing\.)?Literal\[(.*?)\]", r"one of \1", message))
        fail(f"--{'.'.join(keys)}: {message}" if keys else message)


class NamedCommandCLI(LightningCLI):
    """A LightningCLI whose help says ``usage: intrada <command>``: ``prog`` names the command
    (``intrada calibrate-grid`` runs ``test``'s parser), else the subcommand's own name; its
    trainer stops on SIGTERM / SIGINT with exit status 128 + the signal (:class:`StopOnSignal`)."""

    def __init__(self, *args, prog: str | None = None, **kwargs) -> None:
        self.prog = prog
        super().__init__(*args, parser_class=OneLineErrorParser, trainer_defaults={"callbacks": [StopOnSignal()]}, **kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subcommand_parser in self._subcommand_parsers.items():
            subcommand_parser.prog = self.prog or f"intrada {name}"


class TrainingCLI(NamedCommandCLI):
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

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, auto_configure_optimizers=False, **kwargs)  # optimisers are the stages' components

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        command = self.config.get("subcommand")
        if command:  # the run folder (intrada_pl.runs): loggers' save_dir, --ckpt_path last / last_if_present
            config = self.config[command]
            place_loggers(config.trainer)
            config.ckpt_path = resolve_resume(config.get("ckpt_path"), config.trainer)

    def _parse_ckpt_path(self) -> None:
        """What ``--ckpt_path`` holds, decided from its keys (memory-mapped: the tensors are read
        once, when the weights are loaded), instead of LightningCLI's overlay of the checkpoint's
        hyper-parameters on the command line, which silently dropped the user's overrides.

        - validate / predict: the configured stage runs the file's network (a stage checkpoint's
          ``segmenter`` block, or the configured one for a bare state dict such as a released
          ``.pth``) starting from the file's weights (``segmenter.init_args.pretrained``), so any
          stage's checkpoint can be validated or ranked under any stage's config. A stage without
          a ``segmenter`` argument (calibration) restores its own checkpoints.
        - fit (resume): the checkpoint must come from the configured stage and its settings must
          equal the command's (initial weight files aside): otherwise one error lists what differs.
        """
        command = self.config.get("subcommand")
        config = self.config[command] if command else {}
        path = config.get("ckpt_path")
        if not path or not os.path.isfile(path):  # "best", or a missing file: Lightning's to report
            return
        blob = read_checkpoint(path, mmap=True)
        lightning = is_lightning_checkpoint(blob)
        saved = upgrade_hparams(blob.get("hyper_parameters") or {}) if lightning else {}
        stage, configured = saved.get("_class_path"), config.model.class_path
        same_stage = stage is None or stage.rsplit(".", 1)[-1] == configured.rsplit(".", 1)[-1]
        model = config.model.init_args
        if command == "fit":
            if not lightning:
                raise CheckpointMismatchError(
                    f"{path} holds weights, not a Lightning checkpoint to resume training from; "
                    f"start from them with --model.init_args.segmenter.init_args.pretrained {path}")
            if not same_stage:
                raise CheckpointMismatchError(f"{path} is a checkpoint of {stage}, not of {configured} (the config's stage): resume it with its own stage's config")
            changed = differences(saved, namespace_to_dict(model))
            if changed:
                raise CheckpointMismatchError(
                    f"--ckpt_path {path} was trained with other model settings than this command's ({'; '.join(changed)}); "
                    "resume with the settings it was trained with, or start a new run in another --trainer.default_root_dir")
            return
        if "segmenter" not in model:
            if not (lightning and same_stage):
                raise CheckpointMismatchError(f"{path} is not a checkpoint of {configured}, the only kind its config can {command}")
            return
        if saved.get("calibration"):
            raise CheckpointMismatchError(
                f"{path} is a {saved['calibration']} calibration checkpoint: evaluate it with intrada test --method {saved['calibration']}")
        spec = saved["segmenter"] if lightning else release_spec(unwrap_state_dict(blob), path)
        model.segmenter = dict_to_namespace({**spec, "init_args": {**spec.get("init_args", {}), "pretrained": path}})
        config.ckpt_path = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's Trainer, with the run's default loggers and callbacks where the config names
        none (:mod:`intrada_pl.runs`), saving checkpoints beside their target (:class:`AtomicCheckpointIO`)
        unless a CheckpointIO plugin was given, with its loggers that are callbacks too (the
        CSVLogger's resume hook, :class:`intrada_pl.loggers.CSVLogger`) among its callbacks, and
        with :class:`ConsoleProgressBar` unless the config names a progress bar or disables it."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if config.get("logger") in (None, True):  # not configured: the run's default dashboards
            kwargs["logger"] = default_loggers(run_folder(config))
        if config.get("enable_checkpointing") is not False:
            callbacks = [*callbacks, *default_callbacks(self.subcommand, callbacks, logging=config.get("logger") is not False)]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks = [*callbacks, ConsoleProgressBar()]
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks += [logger for logger in trainer.loggers if isinstance(logger, Callback) and logger not in trainer.callbacks]
        return trainer

class EvaluationCLI(NamedCommandCLI):
    """``intrada test``: the Evaluator on one or several targets, with short flags for the common options."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"test": {"model", "dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt", type=list[str], default=[], help="checkpoint(s) to evaluate; repeat for a logit ensemble")
        parser.add_argument("--output", type=str | None, default=None, help="where metrics.json and predictions go (default: the run directory)")
        parser.add_argument("--save_predictions", type=bool, default=False, help="write label-ID, colour, overlay and error-map PNGs")
        parser.link_arguments("ckpt", "model.checkpoints")
        parser.link_arguments("output", "model.output_dir")
        parser.link_arguments("save_predictions", "model.save_predictions")
        parser.add_argument(
            "--calibration", type=list[str], default=[],
            help="test-time method(s): none, manual[@M], bn_adapt, adabn, instcal_u, instcal_c, tent, instcal_u+tent, instcal_c+tent; "
                 "repeat to compare; METHOD[GROUP,...] restricts it to BatchNorm layers (stem, layer1..4, name patterns, -GROUP: all but)",
        )
        parser.add_argument("--strength", type=float, default=0.1, help="m of a plain 'manual' method")
        parser.add_argument("--strengths", type=list[float], default=[], help="adds manual@M for each M (comma-separated)")
        parser.link_arguments(
            ("calibration", "strengths"), "model.calibrations", compute_fn=lambda methods, ms: [*methods, *(f"manual@{m:g}" for m in ms)]
        )
        parser.link_arguments("strength", "model.strength")


def _one_dialect(args: list[str], command: str) -> list[str]:
    """One spelling for every command: ``--ckpt_path`` and ``--ckpt`` name checkpoints, ``--data.X``
    and ``--data.init_args.X`` (``--model.*`` too) set options, whatever the command's parser is
    (``fit``/``validate``/``predict`` choose classes from the config; ``test`` has fixed ones)."""
    if command not in EVALUATION_COMMANDS:
        args = _nested_nulls(args)
        return [("--ckpt_path" + arg[len("--ckpt"):]) if arg.partition("=")[0] == "--ckpt" else arg for arg in args]
    out = []
    for arg in args:
        arg = arg.replace("--data.init_args.", "--data.", 1).replace("--model.init_args.", "--model.", 1)
        out.append(("--ckpt" + arg[len("--ckpt_path"):]) if arg.partition("=")[0] == "--ckpt_path" else arg)
    return out


def _nested_nulls(args: list[str]) -> list[str]:
    """``--model.init_args.segmenter.init_args.pretrained null`` -> ``--model.init_args.segmenter
    {"init_args": {"pretrained": null}}``: jsonargparse (4.53) reads a ``null`` given on the command
    line for an argument of a class nested in another config class as the string ``'None'``, but
    a ``null`` inside a mapping as None."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        prefix, marker, leaf = flag.rpartition(".init_args.")
        if flag.startswith("--") and marker and ".init_args." in prefix and "." not in leaf and value == "null":
            out.append(f'{prefix}={{"init_args": {{"{leaf}": null}}}}')
            i += 1 if eq else 2
            continue
        out.append(args[i])
        i += 1
    return out


def _repeatable_ckpt(args: list[str]) -> list[str]:
    """``--ckpt a --ckpt b`` -> ``--ckpt+ a --ckpt+ b`` (jsonargparse's list-append syntax), the same
    for ``--calibration``; ``--strengths 0,0.5`` -> ``--strengths [0,0.5]``; in :func:`_one_dialect`."""
    out = []
    for arg in _one_dialect(args, "test"):
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
        help="write nothing; report how many of OUT's generated hard images this entropy ranking put in its hard split, and its AUROC",
    )
    ns = parser.parse_args(args)
    if ns.check_ranking:
        from intrada_pl.ranking.toy_check import ranking_recall

        r = ranking_recall(ns.out, ns.check_ranking)
        auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
        print(
            f"entropy ranking vs the toy data's ground truth: {r['found']} of the {r['generated_hard']} rainy/night "
            f"train images are among the {r['ranked_hard']} ranked hard (a random split would find {r['chance']:.1f}); "
            f"AUROC of the score {auroc} (random 0.5)"
        )
        return
    for flag in ("source_images", "target_train", "target_val"):
        if getattr(ns, flag) < 1:
            raise ConfigValueError(f"--{flag.replace('_', '-')} must be at least 1 (the demo trains on both domains and "
                                   f"validates on the target), got {getattr(ns, flag)}")
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
    cli = EvaluationCLI(
        Evaluator, EvaluationDataModule, save_config_callback=None, args=_repeatable_ckpt(["test", *default, *args]), prog="intrada calibrate-grid"
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
    from intrada_pl.stages.tta import LAYER_GROUPS, MethodSpec

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
    cli = EvaluationCLI(
        Evaluator, EvaluationDataModule, save_config_callback=None, args=_repeatable_ckpt(["test", *rest, *calibrations]), prog="intrada calibrate-layers"
    )
    if cli.trainer.is_global_zero:
        study = layer_study(cli.model.results, MethodSpec.parse(ns.calibration, cli.model.hparams.strength).name, groups)
        print(format_layer_table(study))
        print(f"layer study written to {write_json(cli.model.output / 'layers.json', study)} "
              f"and {plot_layer_study(study, cli.model.output / 'layers.png')}")


def pipeline_main(args: Sequence[str]) -> None:
    from intrada_pl.pipeline import Pipeline, parse_seeds

    parser = argparse.ArgumentParser(prog="intrada pipeline", description="Run a whole method, stage by stage (resumable).")
    parser.add_argument("--config", required=True, help="a pipeline YAML, e.g. configs/pipeline_gta5.yaml")
    parser.add_argument(
        "--seeds", default=None,
        help="comma-separated seeds, e.g. 0,1,2 (overrides the YAML's seeds): every stage once per seed in "
             "RUN_DIR/seed_S/, summary mean +- std over seeds",
    )
    ns = parser.parse_args(args)
    pipeline = Pipeline.from_yaml(ns.config)
    if ns.seeds is not None:
        pipeline.seeds = parse_seeds(ns.seeds)
    pipeline.run()


def _check_config_files(args: Sequence[str]) -> None:
    """Every ``--config`` file given parses as YAML: jsonargparse reports a syntax error without
    the file's name, ``intrada pipeline`` with a traceback."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        path = value if eq else args[i + 1] if i + 1 < len(args) else ""
        if flag in ("--config", "-c") and os.path.isfile(path):
            try:
                with open(path) as file:
                    yaml.safe_load(file)
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(error, "problem", None) or " ".join(str(error).split())
                raise ConfigValueError(f"--config {path} is not valid YAML: {problem}{where}") from None


def run() -> None:
    """The console script: :func:`main`, with bad input reported as one ``intrada: error:`` line
    and exit status 2 instead of a traceback (``INTRADA_TRACEBACK=1`` shows it): a
    :class:`~intrada_pl.errors.BadInputError` or FileNotFoundError anywhere in the error's chain,
    where jsonargparse puts a class's refusal of its arguments (``lambda_`` out of range, a
    calibration ``init_ckpt`` that is no checkpoint). Options and configs that jsonargparse
    itself refuses are reported by :class:`OneLineErrorParser`. A training run stopped by its
    finiteness guard also ends with one line, exit status 1. A run stopped by a signal exits
    128 + its number (:class:`~intrada_pl.callbacks.StopOnSignal`; a Ctrl+C that Lightning caught
    before the run's loops started, 130 too, not its 1), and a pipeline whose stage failed exits
    with the stage's status."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and isinstance(stop.__context__, KeyboardInterrupt):  # Lightning's sys.exit(1) after a Ctrl+C
            raise SystemExit(128 + signal.SIGINT) from None
        raise
    except FloatingPointError as error:  # a run gone non-finite (check_finite): no bad input, but no traceback either
        if os.environ.get("INTRADA_TRACEBACK"):
            raise
        print(f"intrada: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except subprocess.CalledProcessError as error:  # a pipeline's stage or test failed, and has said why
        if os.environ.get("INTRADA_TRACEBACK"):
            raise
        status = error.returncode if error.returncode > 0 else 128 - error.returncode  # killed by a signal: as a shell says
        print(f"intrada: error: {shlex.join(map(str, error.cmd))} ended with exit status {status}", file=sys.stderr)
        raise SystemExit(status) from None
    except Exception as error:
        bad = _bad_input(error)
        if bad is None or os.environ.get("INTRADA_TRACEBACK"):
            raise
        lightning = " (a trainer setting Lightning refuses: see --trainer.*)" if isinstance(bad, MisconfigurationException) else ""
        fail(_original_message(bad) + lightning)


def _bad_input(error: BaseException | None) -> BaseException | None:
    """The first bad-input error in ``error``'s chain of causes and contexts, as a traceback shows
    them: ours, a missing file, or a Trainer setting Lightning refuses (``--trainer.accelerator gpu``
    without a GPU)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (BadInputError, FileNotFoundError, MisconfigurationException)):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def _original_message(error: BaseException) -> str:
    """The error's message; for one that a DataLoader worker raised, which PyTorch raises again
    in the main process with the worker's traceback as its message, the original message alone."""
    text = str(error)
    if not re.match(r"Caught \w+ in .*\nOriginal Traceback \(most recent call last\):\n", text):
        return text
    lines = text.rsplit("Traceback (most recent call last):\n", 1)[1].rstrip().split("\n")
    first = next((i for i, line in enumerate(lines) if not line.startswith(" ")), len(lines))  # after the frames
    return "\n".join(lines[first:]).partition(": ")[2] or text


EVALUATION_COMMANDS = ("test", "calibrate-grid", "calibrate-layers")
COMMANDS = ("fit", "validate", "predict", *EVALUATION_COMMANDS, "pipeline", "toy-data", "inspect")


def main(args: Sequence[str] | None = None) -> None:
    silence_noise()
    args = list(sys.argv[1:] if args is None else args)
    command = args[0] if args else None
    if command in (None, "-h", "--help"):
        print(USAGE)
        return
    if command in ("-V", "--version"):
        print(f"intrada {package_version('intrada_pl')}")
        return
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        fail(f"unknown command '{command}'{hint}; commands: {', '.join(COMMANDS)} ('intrada --help')")
    _check_config_files(args)
    if command == "toy-data":
        return toy_data_main(args[1:])
    if command == "inspect":
        return inspect_main(args[1:])
    if command == "test":
        EvaluationCLI(Evaluator, EvaluationDataModule, save_config_callback=None, args=_repeatable_ckpt(args))
        return
    if command == "calibrate-grid":
        return calibrate_grid_main(args[1:])
    if command == "calibrate-layers":
        return calibrate_layers_main(args[1:])
    if command == "pipeline":
        return pipeline_main(args[1:])
    TrainingCLI(
        SegmentationEvalModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunRecord,
        save_config_kwargs={"overwrite": True},
        args=_one_dialect(args, command),
    )


if __name__ == "__main__":
    run()
