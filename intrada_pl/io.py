"""Atomic file writes: a crash leaves the old file or none, never half a file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

# The name atomic_path gives its temporary file: ``.<stem>.tmp<pid><suffix>``.
TEMP_NAME = re.compile(r"\..*\.tmp(?P<pid>\d+)(\.[^.]*)?")


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix, so writers pick the right format)
    and move it over ``path`` only if the body finishes; the temporary file is removed on any error.

    ``fsync``: flush the file to disk before the rename and the rename after it, so that even a
    power loss leaves the old file or the whole new one (worth it for large, rare files: checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs here: the leftovers of a dead one may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left in ``folder`` for processes that
    died mid-write (killed, out of memory); return them."""
    stale = [entry for entry in Path(folder).iterdir()
             if (match := TEMP_NAME.fullmatch(entry.name)) and entry.is_file() and not pid_alive(int(match["pid"]))]
    for entry in stale:
        entry.unlink(missing_ok=True)
    return stale


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a grey (HxW) or RGB (HxWx3) uint8 array as PNG.

    Encoded in memory and written by Python: OpenCV's ``imwrite`` kills the process (SIGSEGV) on
    a path that is not valid UTF-8 (a Latin-1 file name, which Python holds as surrogate escapes)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not PNG-encode the array for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    return Path(path)
