"""The ``intrada`` command: a dispatcher that imports a command's code only when that command runs,
so ``intrada --version``, ``--help``, ``inspect``, ``toy-data`` and ``pipeline`` start without
Lightning or the stages."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would query PyPI on import

import difflib  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from importlib.metadata import version as package_version  # noqa: E402

import yaml  # noqa: E402

from intrada_pl.cli.report import bad_input, fail, original_message  # noqa: E402
from intrada_pl.errors import ConfigValueError  # noqa: E402
from intrada_pl.quiet import silence_noise  # noqa: E402
from intrada_pl.runs import yaml_kind  # noqa: E402


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
  pipeline   the whole method:         intrada pipeline --config configs/pipeline_gta5.yaml [--root NAME=DIR ...] [--seeds 0,1,2]
  toy-data   write the demo data:      intrada toy-data OUT [--check-ranking RANKING_DIR]
  inspect    check a dataset on disk:  intrada inspect {gta5,synthia,synscapes,cityscapes,...} ROOT [--split S] [--json]
                                         [--option KEY=VALUE ...] (e.g. condition=night); exit 1 if problems

'intrada COMMAND --help' lists a command's options."""


def _check_config_files(args: Sequence[str]) -> None:
    """Every ``--config`` file given parses as YAML and holds settings (:func:`_check_shape`):
    jsonargparse reports a syntax error without the file's name, ``intrada pipeline`` with a
    traceback."""
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        path = value if eq else args[i + 1] if i + 1 < len(args) else ""
        if flag in ("--config", "-c") and os.path.isfile(path):
            try:
                with open(path) as file:
                    content = yaml.safe_load(file)
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                problem = getattr(error, "problem", None) or " ".join(str(error).split())
                raise ConfigValueError(f"--config {path} is not valid YAML: {problem}{where}") from None
            _check_shape(path, content)


def _check_shape(path: str, content: object) -> None:
    """A config is a mapping, and its ``trainer`` one of Trainer settings (or the path of a file of
    them): jsonargparse takes a ``trainer:`` written as a YAML list for a whole new Trainer config,
    silently resetting every setting to Lightning's defaults (1000 epochs, no step limit), and
    says ``Unexpected config:`` of an empty file without naming it."""
    if content is None:
        raise ConfigValueError(f"--config {path} is empty: expected settings as key: value lines")
    if not isinstance(content, dict):
        raise ConfigValueError(f"--config {path} must hold settings as key: value lines, got {yaml_kind(content)}")
    trainer = content.get("trainer", {})
    if not isinstance(trainer, (dict, str)):
        raise ConfigValueError(f"--config {path}: trainer must hold Trainer settings as indented key: value lines, got {yaml_kind(trainer)}")


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
        bad = bad_input(error)
        if bad is None or os.environ.get("INTRADA_TRACEBACK"):
            raise
        fail(original_message(bad))


PLAIN_COMMANDS = ("pipeline", "toy-data", "inspect")  # no Lightning
COMMANDS = ("fit", "validate", "predict", "test", "calibrate-grid", "calibrate-layers", *PLAIN_COMMANDS)


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
    if command in PLAIN_COMMANDS:
        from intrada_pl.cli import plain

        return {"toy-data": plain.toy_data_main, "inspect": plain.inspect_main, "pipeline": plain.pipeline_main}[command](args[1:])
    if command in ("calibrate-grid", "calibrate-layers"):
        from intrada_pl.cli import calibrate

        return {"calibrate-grid": calibrate.calibrate_grid_main, "calibrate-layers": calibrate.calibrate_layers_main}[command](args[1:])
    from intrada_pl.cli import lightning

    if command == "test":
        return lightning.test_main(args[1:])
    return lightning.training_main(command, args[1:])


if __name__ == "__main__":
    run()
