"""The ranking folder's format (intrada_pl.data.ranking_manifest): its writer, its one reader, that
the ranking, the intra-domain stage and the toy check all go through them, and the folder's swap
under crashes (a reader finds the previous ranking or the new one, whole)."""

from __future__ import annotations

import ast
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

import intrada_pl
from helpers import forked
from intrada_pl.data.datamodules import SplitDataModule
from intrada_pl.data.datasets import Cityscapes, read_index_png
from intrada_pl.data.ranking_manifest import (
    EASY,
    HARD,
    PSEUDO_LABELS,
    SCORES,
    SUMMARY,
    Manifest,
    atomic_dir,
    encode_png,
    pseudo_label_path,
    read_ranking,
    write_ranking,
)
from intrada_pl.data.toy import generated_hard_images
from intrada_pl.ranking import ranking_recall
from intrada_pl.ranking.scores import Ranking

NAMES = ["b/b_000001_x.png", "a/a_000000_x.png", "a/a_000002_x.png", "c/c_000003_x.png", "c/c_000004_x.png"]


def labels_for(names: list[str]) -> dict[str, bytes]:
    return {name: encode_png(np.full((2, 3), i, np.uint8)) for i, name in enumerate(names)}


def test_write_then_read_gives_the_ranking_back(tmp_path):
    scores = {name: 0.1 + 0.37 * i / 3 for i, name in enumerate(NAMES)}  # floats that need all their digits
    ranking = Ranking.from_scores(scores, 0.67)
    out = tmp_path / "ranking"
    write_ranking(out, ranking, labels_for(NAMES), {"lambda_": 0.67}, lambda folder: (folder / "extra.txt").write_text("x"))
    back = read_ranking(out)
    assert back == Manifest(ranking.order, ranking.num_easy, ranking.scores)  # scores exactly: written as repr
    assert (back.easy, back.hard) == (ranking.order[:3], ranking.order[3:])
    written = sorted(p.relative_to(out / PSEUDO_LABELS).as_posix() for p in (out / PSEUDO_LABELS).rglob("*.png"))
    assert written == sorted(ranking.easy)
    for i, name in enumerate(NAMES):
        if name in ranking.easy:
            assert (read_index_png(pseudo_label_path(out / PSEUDO_LABELS, name)) == i).all()
    summary = json.loads((out / SUMMARY).read_text())
    assert summary == {"lambda_": 0.67, "num_images": 5, "num_easy": 3, "num_hard": 2, "score_cut": ranking.cut()}
    assert (out / "extra.txt").read_text() == "x"
    assert (out / EASY).read_text() == "".join(f"{name}\n" for name in ranking.easy)  # the reference's list format
    assert (out / SCORES).read_text().splitlines()[:2] == ["name,score,rank,split", f"{ranking.order[0]},{scores[ranking.order[0]]!r},1,easy"]


def test_reader_takes_hand_written_lists_without_scores(tmp_path):
    (tmp_path / EASY).write_text("./a/x.png\r\n\r\n  b\\y.png \n")
    (tmp_path / HARD).write_text("")
    assert read_ranking(tmp_path) == Manifest(["a/x.png", "b/y.png"], 2, None)


def test_reader_refuses_a_missing_list_naming_the_option(tmp_path):
    (tmp_path / EASY).write_text("a.png\n")
    with pytest.raises(FileNotFoundError, match=rf"ranking manifest .*{HARD} not found: .*make rank.* point --opt at its ranking/ folder"):
        read_ranking(tmp_path, "--opt")


def test_crash_while_writing_keeps_the_previous_ranking(tmp_path):
    out = tmp_path / "ranking"
    labels = labels_for(["a.png", "b.png"])
    write_ranking(out, Ranking.from_scores({"a.png": 0.1, "b.png": 0.2}, 0.5), labels, {})
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def crash(folder: Path) -> None:  # after the lists, scores.csv and summary.json are written
        assert (folder / EASY).is_file() and (folder / SUMMARY).is_file()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_ranking(out, Ranking.from_scores({"a.png": 0.3, "b.png": 0.2}, 1.0), labels, {}, crash)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    fresh = tmp_path / "fresh" / "ranking"
    with pytest.raises(RuntimeError):
        write_ranking(fresh, Ranking.from_scores({"a.png": 0.3}, 1.0), labels, {}, crash)
    assert not fresh.exists()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or ".old" in p.name]  # no staging left


def test_the_folder_format_is_spelt_in_one_module():
    """The folder's names are string constants of ranking_manifest only (docstrings, messages and
    ``__all__`` aside; ``summary.json`` is also the pipeline's own file, so not checked)."""
    names = {SCORES, EASY, HARD, PSEUDO_LABELS}
    package = Path(intrada_pl.__file__).parent
    spelt = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        skipped = {id(node.body[0].value) for node in ast.walk(tree)
                   if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node) is not None}
        skipped |= {id(constant) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets) for constant in ast.walk(node.value)}
        hits = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names and id(node) not in skipped}
        if hits:
            spelt[path.relative_to(package).as_posix()] = hits
    assert spelt == {"data/ranking_manifest.py": names}


def test_the_intra_stage_and_the_toy_check_read_the_same_ranking(toy_root, tmp_path):
    """A ranking with hand-set scores over the toy train images: SplitDataModule trains on exactly
    its easy (with their pseudo-labels) and hard images, and the toy check counts the same split."""
    names = Cityscapes(toy_root / "Cityscapes", split="train").names
    generated = generated_hard_images(toy_root)
    scores = {name: (2.0 if name in generated else 1.0) + i / 100 for i, name in enumerate(names)}  # generated: hardest
    ranking = Ranking.from_scores(scores, 0.5)
    out = tmp_path / "ranking"
    write_ranking(out, ranking, {name: encode_png(np.zeros((32, 64), np.uint8)) for name in names}, {})
    data = SplitDataModule(ranking_dir=str(out), root=str(toy_root / "Cityscapes"), size=(64, 32), val_size=(64, 32), num_workers=0)
    data.setup("fit")
    manifest = read_ranking(out)
    assert data.source_set.images.names == manifest.easy == ranking.easy
    assert data.target_set.names == manifest.hard == ranking.hard
    check = ranking_recall(toy_root, out)
    found = len(set(generated) & set(manifest.hard))
    assert (check["ranked_hard"], check["found"], check["generated_hard"]) == (len(manifest.hard), found, len(generated))
    assert check["auroc"] == 1.0 and found == len(generated) == 2  # every generated image scores above the others


# ---------------------------------------------------------------------------------- the folder's swap, under crashes

FILES = ("scores.csv", "easy.txt", "hard.txt")


def write_run(folder, run: str, files=FILES) -> None:
    for name in files:
        (folder / name).write_text(run)


def reader(out) -> str | None:
    """What a reader of ``out`` finds: the run of a complete folder, None if there is none."""
    if not out.is_dir():
        return None
    contents = {(out / name).read_text() if (out / name).is_file() else "missing" for name in FILES}
    assert len(contents) == 1 and "missing" not in contents, f"mixed or partial ranking: {contents}"
    return contents.pop()


def leftovers(out) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("failing", [1, 2], ids=["retire-old", "move-new-in"])
def test_failed_rename_keeps_the_previous_ranking(tmp_path, monkeypatch, failing):
    out = tmp_path / "ranking"
    with atomic_dir(out) as staging:
        write_run(staging, "old")
    calls = []
    rename = os.rename

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == failing:
            raise OSError(errno.EIO, "rename failed")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_dir(out) as staging:
            write_run(staging, "new")
    assert reader(out) == "old"
    assert leftovers(out) == []


@pytest.mark.system
@pytest.mark.parametrize("renames_done", [0, 1, 2], ids=["while-writing", "between-renames", "after-swap"])
def test_killed_swap_is_settled_by_the_next_run(tmp_path, renames_done):
    out = tmp_path / "ranking"
    with atomic_dir(out) as staging:
        write_run(staging, "old")

    def killed():
        rename = os.rename
        done = []

        def rename_then_die(src, dst):
            rename(src, dst)
            done.append(dst)
            if len(done) == renames_done:
                os._exit(0)

        os.rename = rename_then_die
        with atomic_dir(out) as staging:
            write_run(staging, "new", FILES[:1])
            if renames_done == 0:
                os._exit(0)
            write_run(staging, "new")

    assert forked(killed) == 0
    assert reader(out) == {0: "old", 1: None, 2: "new"}[renames_done]  # between the renames: hidden as .ranking.old<pid>
    with atomic_dir(out) as staging:
        assert reader(out) == {0: "old", 1: "old", 2: "new"}[renames_done]  # the next run starts from a complete folder
        assert leftovers(out) == [staging.name]  # and nothing of the dead run
        write_run(staging, "next")
    assert reader(out) == "next"
    assert leftovers(out) == []
