"""The entropy ranking's folder, ``<run>/ranking/``: its format, its one writer and its one reader.

The ranking callback (:mod:`intrada_pl.ranking`) writes it; the intra-domain stage
(:class:`~intrada_pl.data.datamodules.SplitDataModule`) and ``intrada toy-data --check-ranking``
read it. Both sides use this module, so the format lives here only::

    scores.csv         name,score,rank,split (ascending score; rank 1 = lowest entropy)
    easy.txt           the easy images, one name per line (the reference's list format)
    hard.txt           the others
    pseudo_labels/     argmax train IDs of the easy images, 8-bit PNG, <name> with a .png extension
    summary.json       the ranking's settings, counts and the score at the cut

plus what the writer's caller adds (``histogram.png``, ``quality.json``, ``quality.png``). It sits
in ``data`` because a data module reads it and data imports nothing above it.

The whole folder is built beside the old one and swapped in at the end (:func:`atomic_dir`), so
its files always belong to one run: a crash leaves the previous ranking (or none), never a mix.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from intrada_pl.io import pid_alive, write_json, write_text

SCORES, EASY, HARD, PSEUDO_LABELS, SUMMARY = "scores.csv", "easy.txt", "hard.txt", "pseudo_labels", "summary.json"


@dataclass(frozen=True)
class Manifest:
    """What a ranking folder lists: image names in ascending score order, how many of the first
    are easy, and their scores (None for a folder without ``scores.csv``: hand-written lists)."""

    order: list[str]
    num_easy: int
    scores: dict[str, float] | None = None

    @property
    def easy(self) -> list[str]:
        return self.order[: self.num_easy]

    @property
    def hard(self) -> list[str]:
        return self.order[self.num_easy :]

    def cut(self) -> float | None:
        """Score half-way between the last easy and the first hard image (None if one side is empty)."""
        if not self.easy or not self.hard or self.scores is None:
            return None
        return (self.scores[self.easy[-1]] + self.scores[self.hard[0]]) / 2


# ---------------------------------------------------------------------------------- names and files
def pseudo_label_path(label_dir: str | Path, name: str) -> Path:
    """Where the pseudo-label of image ``name`` is: the same relative path with a ``.png``
    extension (``aachen/aachen_000000_000019_leftImg8bit.png`` stays as it is)."""
    return Path(label_dir) / Path(name).with_suffix(".png")


def list_text(names: Sequence[str]) -> str:
    """The reference's list format: one relative image name per line."""
    return "".join(f"{name}\n" for name in names)


def parse_names(text: str) -> list[str]:
    """Image names of a list file (blank lines skipped, ``\\`` as ``/``, a leading ``./`` dropped),
    the rules the datasets apply to their list files."""
    names = (line.strip().replace("\\", "/") for line in text.splitlines())
    return [name.removeprefix("./") for name in names if name]


def encode_png(array: np.ndarray) -> bytes:
    """A pseudo-label (or any uint8 picture, BGR) as the bytes of a PNG file."""
    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise OSError("could not PNG-encode an array")
    return buffer.tobytes()


def scores_csv(manifest: Manifest) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "score", "rank", "split"])
    for rank, name in enumerate(manifest.order, start=1):
        writer.writerow([name, repr(manifest.scores[name]), rank, "easy" if rank <= manifest.num_easy else "hard"])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------- writer
def write_ranking(directory: Path, manifest: Manifest, labels: Mapping[str, bytes], summary: Mapping,
                  extra: Callable[[Path], None] | None = None) -> None:
    """Write the lists, ``scores.csv``, the easy images' pseudo-labels (``labels``: PNG bytes per
    name, :func:`encode_png`), ``summary.json`` (``summary`` and the counts) and what ``extra``
    writes into its folder, replacing ``directory`` as a whole (see :func:`atomic_dir`)."""
    with atomic_dir(directory) as staging:
        for name in manifest.easy:
            path = pseudo_label_path(staging / PSEUDO_LABELS, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(labels[name])
        write_text(staging / SCORES, scores_csv(manifest))
        write_text(staging / HARD, list_text(manifest.hard))
        write_text(staging / EASY, list_text(manifest.easy))
        write_json(staging / SUMMARY, {**summary, "num_images": len(manifest.order), "num_easy": manifest.num_easy,
                                       "num_hard": len(manifest.hard), "score_cut": manifest.cut()})
        if extra is not None:
            extra(staging)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path`` that replaces ``path`` (old content
    removed) only if the body finishes; on error the staging folder is removed and ``path`` kept.

    The swap is two renames: ``path`` to ``.<name>.old<pid>``, then the staging folder
    ``.<name>.tmp<pid>`` to ``path``. If the second one fails, the first is undone; if the process
    dies in between, the next call puts the old folder back. Each call first removes what dead
    processes left (see :func:`_clean_swap`), so ``path`` holds one complete run's folder.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    retired = path.with_name(f".{path.name}.old{os.getpid()}")
    _clean_swap(path)
    staging.mkdir()
    try:
        yield staging
        if path.exists():
            os.rename(path, retired)
        os.rename(staging, path)
    finally:
        _clean_swap(path)


def _clean_swap(path: Path) -> None:
    """Settle the swap leftovers beside ``path`` of this process and of dead ones: a retired
    ``.old<pid>`` folder comes back if ``path`` is missing, the rest (staging folders, retired
    folders no longer needed) is removed. Live processes' leftovers are theirs."""
    prefix = f".{path.name}."
    for entry in sorted(path.parent.glob(f"{prefix}*")):
        kind, pid = entry.name[len(prefix):][:3], entry.name[len(prefix) + 3:]
        if kind not in ("tmp", "old") or not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue
        if kind == "old" and not path.exists():
            os.rename(entry, path)
        else:
            shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------------- reader
def ranking_file(directory: str | Path, filename: str, option: str) -> Path:
    """``directory/filename``, refused if missing: ``option`` is where the user names the folder."""
    path = Path(directory) / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"ranking manifest {path} not found: run the entropy ranking first (make rank CKPT=...) "
            f"or point {option} at its ranking/ folder"
        )
    return path


def read_ranking(directory: str | Path, option: str = "the ranking directory") -> Manifest:
    """The easy and hard images of a ranking folder, in ascending score order, and their scores
    when it has ``scores.csv``; a missing list is refused naming ``option``."""
    easy, hard = (parse_names(ranking_file(directory, name, option).read_text()) for name in (EASY, HARD))
    scores_path = Path(directory) / SCORES
    scores = None
    if scores_path.is_file():
        with scores_path.open(newline="") as f:
            scores = {row["name"]: float(row["score"]) for row in csv.DictReader(f)}
    return Manifest(easy + hard, len(easy), scores)
