"""Atomic file writes: a crash leaves the old file or none, never half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (same suffix, so writers pick the right format)
    and move it over ``path`` only if the body finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a grey (HxW) or RGB (HxWx3) uint8 array as PNG."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), array):
            raise OSError(f"could not write {path}")
    return Path(path)
