"""The Lightning commands: ``fit`` / ``validate`` / ``predict`` are LightningCLI subcommands over any
stage and data module (YAML configs, ``--trainer.*`` overrides); ``test`` is a LightningCLI of its
own around the :class:`~intrada_pl.stages.evaluation.Evaluator`, so ``--ckpt`` can take our
checkpoints, released reference ``.pth`` files, or several of them as an ensemble."""

from __future__ import annotations

import os
import re
from argparse import SUPPRESS
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from jsonargparse import dict_to_namespace, namespace_to_dict
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from intrada_pl.callbacks import SegmentationPanels, StopOnSignal
from intrada_pl.checkpoint_io import AtomicCheckpointIO
from intrada_pl.cli.report import fail
from intrada_pl.data.datamodules import EvaluationDataModule
from intrada_pl.errors import BadInputError
from intrada_pl.loggers import RunRecord, check_wandb_login
from intrada_pl.models.factory import release_spec_and_state
from intrada_pl.models.weights import CheckpointMismatchError, is_lightning_checkpoint, read_checkpoint
from intrada_pl.progress import ConsoleProgressBar
from intrada_pl.runs import check_trainer_settings, default_callbacks, default_loggers, logger_classes, name_wandb_runs, place_loggers, resolve_resume
from intrada_pl.stages.evaluation import Evaluator
from intrada_pl.stages.hparams import differences, upgrade_hparams
from intrada_pl.stages.segmentation import SegmentationEvalModule

# Imported so that short class names (``SegmentationModule``, ``SourceTargetDataModule``) resolve in configs.
from intrada_pl.data import datamodules  # noqa: F401
from intrada_pl.stages import calibration, inter, intra, segmentation  # noqa: F401

EVALUATION_COMMANDS = ("test", "calibrate-grid", "calibrate-layers")
DEFAULT_TEST_RUN = "runs/test"  # intrada test's run folder when its config names none


class TrainerSettingError(BadInputError):
    """A Trainer setting Lightning refuses (``--trainer.accelerator gpu`` without a GPU)."""


@contextmanager
def lightning_errors() -> Iterator[None]:
    """Lightning's refusal of a Trainer setting, anywhere in an error's chain, as bad input."""
    try:
        yield
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, MisconfigurationException):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise TrainerSettingError(f"{cause} (a trainer setting Lightning refuses: see --trainer.*)") from error


def switched_off(trainer: dict) -> tuple[type, ...]:
    """The callbacks a ``trainer`` setting switches off: without loggers those that only write to
    them (Lightning refuses a LearningRateMonitor then), with ``enable_checkpointing: false`` the
    ModelCheckpoints (refused too)."""
    kinds: tuple[type, ...] = (LearningRateMonitor, SegmentationPanels) if trainer.get("logger") in (False, []) else ()
    return kinds + ((ModelCheckpoint,) if trainer.get("enable_checkpointing") is False else ())


def training_main(command: str, args: Sequence[str]) -> None:
    """``intrada fit|validate|predict ARGS``."""
    with lightning_errors():
        TrainingCLI(
            SegmentationEvalModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunRecord,
            save_config_kwargs={"overwrite": True},
            args=one_dialect([command, *args], command),
        )


def test_main(args: Sequence[str]) -> None:
    """``intrada test ARGS``."""
    with lightning_errors():
        EvaluationCLI(Evaluator, EvaluationDataModule, save_config_callback=None, args=repeatable_ckpt(["test", *args]))


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

    def with_console(self, callbacks: list) -> list:
        """``callbacks`` and :class:`ConsoleProgressBar` (plain lines without a terminal: no carriage
        returns in a job's log) unless the config names a progress bar or disables it."""
        config = self._get(self.config_init, "trainer", default={})
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            return [*callbacks, ConsoleProgressBar()]
        return callbacks


class TrainingCLI(NamedCommandCLI):
    """fit / validate / predict over any stage (``test`` has its own CLI, see :class:`EvaluationCLI`).

    A config's run lives in ``trainer.default_root_dir`` (:mod:`intrada_pl.runs`): loggers without
    ``save_dir`` log there (a W&B run without ``name`` is named after it), ``--ckpt_path last``
    resumes its ``last.ckpt`` or fails, and ``--ckpt_path last_if_present`` resumes it or starts fresh.

    The run's defaults are settings, not code: ``trainer.logger`` defaults to CSV + W&B and, for
    ``fit``, ``trainer.callbacks`` to the best and last checkpoints, a learning-rate monitor and
    validation panels (:func:`~intrada_pl.runs.default_loggers`, :func:`~intrada_pl.runs.default_callbacks`),
    as each subcommand parser's defaults. So ``--print_config`` shows them with every argument,
    the run's ``config.yaml`` records them, and a config changes them with plain LightningCLI /
    jsonargparse rules: a ``logger`` or ``callbacks`` list replaces the default list (name the
    CSV logger alone to drop W&B), ``logger: false`` switches logging off, ``callbacks+:`` in a
    config or ``--trainer.callbacks+=...`` on the command line appends to it. A list merged by
    kind, a callback added in code or a ``trainer_defaults`` entry (always added, unconfigurable)
    would each hide what runs. Switches win over the list: without a logger the callbacks that
    only write to loggers (LearningRateMonitor, which Lightning would refuse, SegmentationPanels)
    are left out, with ``enable_checkpointing: false`` the ModelCheckpoints. What is not a setting:
    the console progress display (as Lightning's own bar, unless the config names a progress bar
    or disables it) and :class:`StopOnSignal`, on every trainer.

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

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        for name, subcommand_parser in self._subcommand_parsers.items():
            subcommand_parser.set_defaults({"trainer.logger": default_loggers(), "trainer.callbacks": default_callbacks(name)})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        command = self.config.get("subcommand")
        if command:  # the run folder (intrada_pl.runs): loggers' save_dir and W&B name, --ckpt_path last / last_if_present
            config = self.config[command]
            check_trainer_settings(config.trainer)
            check_wandb_login(logger_classes(config.trainer))
            place_loggers(config.trainer)
            name_wandb_runs(config.trainer)
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
        if path and os.path.isdir(path):
            raise CheckpointMismatchError(f"--ckpt_path {path} is a directory; give a checkpoint file in it (e.g. {path}/last.ckpt) or 'last'")
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
        spec = saved["segmenter"] if lightning else release_spec_and_state(blob, path)[0]
        model.segmenter = dict_to_namespace({**spec, "init_args": {**spec.get("init_args", {}), "pretrained": path}})
        config.ckpt_path = None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's Trainer with the configured callbacks less those a switch turns off (see the
        class), saving checkpoints beside their target (:class:`AtomicCheckpointIO`) unless a
        CheckpointIO plugin was given, with its loggers that are callbacks too (the CSVLogger's
        resume hook, :class:`intrada_pl.loggers.CSVLogger`) among its callbacks, and with
        :class:`ConsoleProgressBar` unless the config names a progress bar or disables it."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs["callbacks"] = self.with_console([c for c in callbacks if not isinstance(c, switched_off(config))])
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        trainer.callbacks += [logger for logger in trainer.loggers if isinstance(logger, Callback) and logger not in trainer.callbacks]
        return trainer

class EvaluationCLI(NamedCommandCLI):
    """``intrada test``: the Evaluator on one or several targets, with short flags for the common options.

    Its run folder is ``trainer.default_root_dir`` (``runs/test`` unless the config names one):
    each evaluation's files go to a folder of their own there, named after the checkpoint and
    methods (:meth:`~intrada_pl.stages.evaluation.Evaluator.output_folder`), unless ``--output``
    says where; loggers without ``save_dir`` log there: the run's default loggers
    (:func:`intrada_pl.runs.default_loggers`, shown by ``--print_config``) unless the config names
    its own, never Lightning's ``lightning_logs/`` in the working directory. Checkpoints are ``--ckpt`` (``--ckpt_path``
    is read as it, without Lightning's ``best`` / ``last``, which name a fit's checkpoints).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"test": {"model", "dataloaders", "datamodule", "ckpt_path", "weights_only"}}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, auto_configure_optimizers=False, **kwargs)  # nothing to optimise: no --optimizer

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.default_root_dir": DEFAULT_TEST_RUN, "trainer.logger": default_loggers()})
        parser.add_argument("--ckpt", type=list[str], default=[], help="checkpoint(s) to evaluate; repeat for a logit ensemble")
        parser.add_argument("--output", type=str | None, default=None,
                            help="where metrics.json and predictions go (default: <run folder>/<checkpoint>[_<methods>]/)")
        parser.add_argument("--save_predictions", type=bool, default=False, help="write label-ID, colour, overlay and error-map PNGs")
        parser.link_arguments("ckpt", "model.checkpoints")
        parser.link_arguments("output", "model.output_dir")
        parser.link_arguments("save_predictions", "model.save_predictions")
        parser.add_argument(
            "--method", type=list[str], default=[],
            help="test-time method(s): none, manual[@M], bn_adapt, adabn, instcal_u, instcal_c, tent, instcal_u+tent, instcal_c+tent; "
                 "repeat to compare; METHOD[GROUP,...] restricts it to BatchNorm layers (the network's layer groups, e.g. "
                 "DeepLabV2's stem, layer1..4; name patterns; -GROUP: all but)",
        )
        parser.add_argument("--calibration", type=list[str], default=[], help=SUPPRESS)  # --method's older name, for configs
        parser.add_argument("--strength", type=float, default=0.1, help="m of a plain 'manual' method")
        parser.add_argument("--strengths", type=list[float], default=[], help="adds manual@M for each M (comma-separated)")
        parser.link_arguments(
            ("method", "calibration", "strengths"), "model.methods",
            compute_fn=lambda methods, older, ms: [*methods, *older, *(f"manual@{m:g}" for m in ms)],
        )
        parser.link_arguments("strength", "model.strength")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        check_wandb_login(logger_classes(self.config.test.trainer))
        place_loggers(self.config.test.trainer)
        name_wandb_runs(self.config.test.trainer)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """Lightning's Trainer with the console of :class:`ConsoleProgressBar`."""
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        kwargs["callbacks"] = self.with_console(callbacks if isinstance(callbacks, list) else [callbacks])
        return super().instantiate_trainer(**kwargs)


def one_dialect(args: list[str], command: str) -> list[str]:
    """One spelling for every command: ``--ckpt_path`` and ``--ckpt`` name checkpoints, ``--data.X``
    and ``--data.init_args.X`` (``--model.*`` too) set options, whatever the command's parser is
    (``fit``/``validate``/``predict`` choose classes from the config; ``test`` has fixed ones), and
    ``--calibration`` is ``--method``'s older name."""
    if command not in EVALUATION_COMMANDS:
        args = _nested_nulls(args)
        return [("--ckpt_path" + arg[len("--ckpt"):]) if arg.partition("=")[0] == "--ckpt" else arg for arg in args]
    renamed = {"--ckpt_path": "--ckpt", "--calibration": "--method"}
    out = []
    for arg in args:
        arg = arg.replace("--data.init_args.", "--data.", 1).replace("--model.init_args.", "--model.", 1)
        flag, eq, value = arg.partition("=")
        out.append(renamed.get(flag, flag) + eq + value)
    return out


def _nested_nulls(args: list[str]) -> list[str]:
    """``--model.init_args.segmenter.init_args.pretrained null`` (or ``--model.segmenter.pretrained
    null``) -> ``--model.init_args.segmenter={"init_args": {"pretrained": null}}``: jsonargparse
    (4.53) reads a ``null`` given on the command line for an argument of a component nested in the
    stage as the string ``'None'``, but a ``null`` inside a mapping as None."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if not eq and i + 1 < len(args):
            value = args[i + 1]
        parts = [part for part in flag[len("--model."):].split(".") if part != "init_args"] if flag.startswith("--model.") else []
        if len(parts) >= 2 and value == "null":
            out.append(f'--model.init_args.{".init_args.".join(parts[:-1])}={{"init_args": {{"{parts[-1]}": null}}}}')
            i += 1 if eq else 2
            continue
        out.append(args[i])
        i += 1
    return out


def repeatable_ckpt(args: list[str]) -> list[str]:
    """``--ckpt a --ckpt b`` -> ``--ckpt+ a --ckpt+ b`` (jsonargparse's list-append syntax), the same
    for ``--method``; ``--strengths 0,0.5`` -> ``--strengths [0,0.5]``; in :func:`one_dialect`."""
    out = []
    for arg in one_dialect(args, "test"):
        flag, eq, value = arg.partition("=")
        if flag in ("--ckpt", "--method"):
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
