"""Writes (intrada_pl/io.py): atomic, the temporaries of dead processes removed, and PNG files under
names that are not UTF-8 (issue 18, item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from intrada_pl import io
from intrada_pl.io import atomic_path, write_json

NOT_UTF8 = os.fsdecode(b"\xff\xfe.png")   # what Python makes of a Latin-1 name on Linux: surrogate escapes


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "manifest.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.system
def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    names = [f".last.tmp{dead}.ckpt", f".best-step=2.tmp{dead}.ckpt", f".last.tmp{alive}.ckpt", "last.ckpt", ".notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in io.remove_stale_temps(tmp_path)) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


@pytest.mark.system
def test_write_png_to_a_name_that_is_not_utf8(tmp_path):
    """OpenCV's path-taking imwrite kills the process (SIGSEGV) on such a name; write_png must not.
    Run in a child process so that a crash fails this test instead of ending the test session."""
    code = ("import sys, numpy as np; from pathlib import Path; from intrada_pl.io import write_png; "
            f"folder = Path(sys.argv[1]); write_png(folder / {NOT_UTF8!r}, np.arange(12, dtype=np.uint8).reshape(3, 4)); "
            f"write_png(folder / 'rgb' / {NOT_UTF8!r}, np.full((3, 4, 3), (255, 0, 0), np.uint8))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["rgb", NOT_UTF8])
    with Image.open(tmp_path / NOT_UTF8) as grey, Image.open(tmp_path / "rgb" / NOT_UTF8) as rgb:
        assert grey.mode == "L" and (np.array(grey) == np.arange(12).reshape(3, 4)).all()
        assert rgb.mode == "RGB" and (np.array(rgb) == (255, 0, 0)).all()   # RGB in, RGB on disk
    assert os.listdir(tmp_path / "rgb") == [NOT_UTF8]                      # no temporary file left
