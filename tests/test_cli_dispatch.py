"""The dispatcher (intrada_pl/cli/dispatch.py): commands that need no Lightning start without it, a
config of the wrong shape is one error, and the console script's exit status says how a run ended."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from intrada_pl.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = ("lightning", "torchmetrics", "intrada_pl.stages", "intrada_pl.cli.lightning", "wandb")
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy or name in heavy)))
"""


@pytest.mark.system
@pytest.mark.parametrize("command", [["--version"], ["--help"], ["inspect", "--help"], ["toy-data", "--help"], ["pipeline", "--help"], ["tset"]])
def test_light_commands_import_neither_lightning_nor_the_stages(command):
    done = subprocess.run([sys.executable, "-c", PROBE, *command], capture_output=True, text=True, timeout=120)
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert [m for m in imported if m.startswith(("lightning", "torchmetrics", "intrada_pl.stages", "intrada_pl.cli.lightning", "wandb"))] == []


def test_version_and_unknown_command(capsys):
    from intrada_pl.cli import main

    main(["--version"])
    assert capsys.readouterr().out.startswith("intrada ")
    with pytest.raises(SystemExit) as exit_info:
        main(["tset"])
    assert exit_info.value.code == 2 and "did you mean 'test'?" in capsys.readouterr().err



@pytest.mark.parametrize(
    "text, expected",
    [
        ("", " is empty: expected settings as key: value lines"),
        ("# only comments\n", " is empty: expected settings as key: value lines"),
        ("- trainer\n- model\n", " must hold settings as key: value lines, got a list"),
        ("trainer:\n  - max_steps: 4\n  - devices: 1\n", ": trainer must hold Trainer settings as indented key: value lines, got a list"),
        ("trainer:\nmodel: {}\n", ": trainer must hold Trainer settings as indented key: value lines, got nothing"),
    ],
    ids=["empty", "comments", "list", "trainer-list", "trainer-null"],
)
@pytest.mark.parametrize("command", ["fit", "test", "pipeline"])
def test_a_config_of_the_wrong_shape_is_refused_naming_the_file(command, text, expected, tmp_path, monkeypatch, capsys):
    """Issue 18 item 3: ``trainer:`` as a YAML list reset every Trainer setting to Lightning's defaults
    (1000 epochs, no step limit); an empty file gave ``Unexpected config:`` without naming it."""
    from intrada_pl.cli import run

    path = tmp_path / "shape.yaml"
    path.write_text(text)
    monkeypatch.setattr(sys, "argv", ["intrada", command, "--config", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"intrada: error: --config {path}{expected}"]


@pytest.mark.parametrize("returncode,status", [(143, 143), (-signal.SIGKILL, 128 + signal.SIGKILL)])
def test_the_console_script_exits_with_the_failed_stage_status(monkeypatch, capsys, returncode, status):
    """A stage's status is the pipeline's (one killed by a signal: 128 + its number, as a shell says)."""
    from intrada_pl.cli import dispatch as cli

    def stage_fails(args=None):
        raise subprocess.CalledProcessError(returncode, [sys.executable, "-m", "intrada_pl.cli", "fit", "--config", "x.yaml"])

    monkeypatch.setattr(cli, "main", stage_fails)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == status
    assert capsys.readouterr().err.strip().endswith(f"fit --config x.yaml ended with exit status {status}")


def test_a_ctrl_c_that_lightning_caught_exits_130(monkeypatch):
    """Before the run's loops start, a Ctrl+C is Lightning's KeyboardInterrupt, after which it exits 1."""
    from intrada_pl.cli import dispatch as cli

    def lightning_caught_ctrl_c(args=None):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setattr(cli, "main", lightning_caught_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == 128 + signal.SIGINT
