"""Entropy ranking (intrada_pl.ranking: scores, split, RankingCallback; `intrada predict` +
configs/rank_gta5.yaml) and SplitDataModule."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from intrada_pl.cli import main
from intrada_pl.data.datamodules import SplitDataModule
from intrada_pl.data.datasets import DatasetLayoutError, read_index_png
from intrada_pl.data.ranking_manifest import pseudo_label_path
from intrada_pl.ranking import RankingCallback
from intrada_pl.ranking.scores import RARE_TRAIN_IDS, Ranking, entropy_scores, num_easy, pseudo_labels, rare_class_factor
from intrada_pl.stages.segmentation import SegmentationEvalModule

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 32)  # ranking resolution (W, H) of the CLI runs; the toy images are 128x64


def hand_score(logits: np.ndarray) -> float:
    """The reference's score of one C x H x W logit map, in float64 numpy."""
    shifted = logits - logits.max(0, keepdims=True)
    prob = np.exp(shifted) / np.exp(shifted).sum(0, keepdims=True)
    return float(np.mean(-prob * np.log2(prob)) / np.log2(logits.shape[0]))


def peaked_logits(class_map: np.ndarray, peak: float = 4.0, num_classes: int = 19) -> Tensor:
    """C x H x W logits with the same confidence everywhere and argmax ``class_map``."""
    logits = torch.zeros(num_classes, *class_map.shape)
    logits.scatter_(0, torch.from_numpy(class_map).long()[None], peak)
    return logits


# ---------------------------------------------------------------------------------- scores
def test_scores_equal_hand_computation():
    logits = torch.randn(3, 19, 5, 7, generator=torch.Generator().manual_seed(0)) * 3
    expected = [hand_score(x) for x in logits.double().numpy()]
    np.testing.assert_allclose(entropy_scores(logits).numpy(), expected, rtol=1e-6)
    assert entropy_scores(logits).dtype == torch.float64


def test_rare_class_factor_counts_rare_classes_in_the_argmax():
    labels = torch.tensor([[[0, 3], [5, 5]], [[0, 1], [2, 8]], [list(RARE_TRAIN_IDS[:2]), list(RARE_TRAIN_IDS[2:4])]])
    factor = rare_class_factor(labels, 19)
    np.testing.assert_allclose(factor.numpy(), [(11 - 2) / 11 + 0.5, 1.5, (11 - 4) / 11 + 0.5])


def test_normalisation_moves_rare_class_images_towards_easy():
    common = peaked_logits(np.zeros((4, 4), np.uint8))  # all road
    rare = peaked_logits(np.array([[3, 4, 5, 6]] * 4, np.uint8))  # wall, fence, pole, light
    logits = torch.stack([common, rare])
    scores = entropy_scores(logits)
    assert scores[0] == pytest.approx(scores[1].item(), rel=1e-6)  # same confidence: a tie by entropy alone
    callback = RankingCallback(normalize=True)
    normalized, _ = callback.score(logits)
    assert normalized[1] < normalized[0]
    order = Ranking.from_scores({"a_common": normalized[0].item(), "b_rare": normalized[1].item()}, 0.5).order
    assert order == ["b_rare", "a_common"]


# ---------------------------------------------------------------------------------- split
@pytest.mark.parametrize(
    "n, lambda_, easy",
    [(2975, 0.67, 1993), (10, 0.5, 5), (10, 1.0, 10), (1, 1.0, 1), (1, 0.67, 0), (3, 0.34, 1), (7, 0.01, 0)],
)
def test_split_sizes_and_easy_are_the_lowest_scores(n, lambda_, easy):
    rng = np.random.default_rng(n)
    scores = {f"img_{i:05d}.png": float(s) for i, s in enumerate(rng.random(n))}
    result = Ranking.from_scores(scores, lambda_)
    assert num_easy(n, lambda_) == len(result.easy) == easy
    assert len(result.hard) == n - easy and sorted(result.easy + result.hard) == sorted(scores)
    if result.easy and result.hard:
        assert max(scores[x] for x in result.easy) < min(scores[x] for x in result.hard)
        assert max(scores[x] for x in result.easy) < result.cut() < min(scores[x] for x in result.hard)
    assert [scores[x] for x in result.order] == sorted(scores.values())


def test_ties_are_broken_by_name():
    assert Ranking.from_scores({"c": 0.1, "a": 0.1, "b": 0.05}, 0.67).order == ["b", "a", "c"]


@pytest.mark.parametrize("lambda_", [0.0, -0.5, 1.01, math.nan])
def test_invalid_lambda_is_refused(lambda_):
    with pytest.raises(ValueError, match=r"lambda_ .* must be in \(0, 1\]"):
        RankingCallback(lambda_=lambda_)


def test_pseudo_labels_are_argmax_train_ids_and_threshold_ignores_unsure_pixels():
    logits = torch.stack([peaked_logits(np.array([[0, 13], [10, 18]], np.uint8), peak=p) for p in (8.0, 1.0)])
    labels = pseudo_labels(logits)
    assert labels.dtype == torch.uint8
    assert labels.tolist() == [[[0, 13], [10, 18]]] * 2
    # peak 8: p_max ~ 0.994; peak 1: p_max ~ 0.13
    assert pseudo_labels(logits, confidence_threshold=0.9).tolist() == [[[0, 13], [10, 18]], [[255, 255], [255, 255]]]


# ---------------------------------------------------------------------------------- callback
class FixedLogits(SegmentationEvalModule):
    """Its "images" are logits: predict_step hands them to the callback unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def segment(self, images: Tensor) -> Tensor:
        return images


def predict_fixed(items: list[dict], out: Path, batch_size: int = 4, **callback_args) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[RankingCallback(output_dir=str(out), **callback_args)],
    )
    trainer.predict(FixedLogits(), dataloaders=DataLoader(items, batch_size=batch_size))


def fixed_items(n: int = 6) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(19, 6, 8, generator=gen) * (1 + i), "name": f"city/img_{i}_leftImg8bit.png"} for i in range(n)]


def test_callback_writes_manifests_and_easy_pseudo_labels(tmp_path):
    items = fixed_items()
    predict_fixed(items, tmp_path, lambda_=0.5)  # 6 images in batches of 4 and 2
    out = tmp_path / "ranking"
    rows = [line.split(",") for line in (out / "scores.csv").read_text().splitlines()]
    assert rows[0] == ["name", "score", "rank", "split"]
    expected = sorted((hand_score(item["image"].double().numpy()), item["name"]) for item in items)
    assert [r[0] for r in rows[1:]] == [name for _, name in expected]
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], [s for s, _ in expected], rtol=1e-6)
    assert [r[2] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert [r[3] for r in rows[1:]] == ["easy"] * 3 + ["hard"] * 3
    easy = (out / "easy.txt").read_text().splitlines()
    assert easy == [name for _, name in expected[:3]]
    assert (out / "hard.txt").read_text().splitlines() == [name for _, name in expected[3:]]
    by_name = {item["name"]: item["image"] for item in items}
    written = sorted(p.relative_to(out / "pseudo_labels").as_posix() for p in (out / "pseudo_labels").rglob("*.png"))
    assert written == sorted(easy)  # easy images only
    for name in easy:
        assert np.array_equal(read_index_png(pseudo_label_path(out / "pseudo_labels", name)), by_name[name].argmax(0).numpy())
    assert (out / "histogram.png").stat().st_size > 0
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or ".old" in p.name]


def test_callback_confidence_threshold_writes_255(tmp_path):
    items = [{"image": peaked_logits(np.full((4, 4), 13, np.uint8), peak=1.0), "name": "a.png"}]
    predict_fixed(items, tmp_path, lambda_=1.0, confidence_threshold=0.5)
    assert np.all(read_index_png(tmp_path / "ranking" / "pseudo_labels" / "a.png") == 255)


def test_histogram_is_logged_to_wandb(tmp_path, monkeypatch, offline_wandb):
    from lightning.pytorch.loggers import WandbLogger

    logged = []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, **kw: logged.append((key, images)))
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns, data, **kw: logged.append((key, [row[1] for row in data])))
    trainer = L.Trainer(
        accelerator="cpu", logger=WandbLogger(save_dir=str(tmp_path), offline=True), enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[RankingCallback(output_dir=str(tmp_path))],
    )
    trainer.predict(FixedLogits(), dataloaders=DataLoader(fixed_items(2), batch_size=2))
    order = (tmp_path / "ranking" / "easy.txt").read_text().split() + (tmp_path / "ranking" / "hard.txt").read_text().split()
    assert logged[:2] == [("ranking/histogram", [str(tmp_path / "ranking" / "histogram.png")]), ("ranking/scores", order)]


def test_the_old_class_path_of_the_callback_still_works():
    """Configs name ``intrada_pl.stages.ranking.RankingCallback`` (the shipped rank configs too)."""
    from intrada_pl.stages import ranking as old_path

    assert old_path.RankingCallback is RankingCallback and old_path.__all__ == ["RankingCallback"]


# ---------------------------------------------------------------------------------- CLI, DDP
def rank_args(toy_root: Path, ckpt: Path, out: Path) -> list[str]:
    """`intrada predict` with the shipped config, pointed at the toy data and a small size."""
    return [
        "predict", "--config", str(REPO / "configs" / "rank_gta5.yaml"), "--ckpt_path", str(ckpt),
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.callbacks.init_args.output_dir", str(out),
        "--data.init_args.root", str(toy_root / "Cityscapes"), "--data.init_args.size", str(list(SIZE)),
        "--data.init_args.batch_size", "1", "--data.init_args.num_workers", "0",
    ]


@pytest.fixture(scope="module")
def ranked(toy_root, deeplab_ckpt, tmp_path_factory):
    """One `intrada predict` run (1 process, 1 thread, batch 1) and its checkpoint."""
    tmp = tmp_path_factory.mktemp("rank")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process below: same kernels, same rounding
    try:
        main(rank_args(toy_root, deeplab_ckpt, tmp / "run"))
    finally:
        torch.set_num_threads(threads)
    return tmp / "run" / "ranking", deeplab_ckpt


def test_predict_cli_writes_every_file(ranked, toy_root):
    out, _ = ranked
    names = sorted(p.relative_to(toy_root / "Cityscapes" / "leftImg8bit" / "train").as_posix()
                   for p in (toy_root / "Cityscapes" / "leftImg8bit" / "train").rglob("*.png"))
    easy, hard = (out / "easy.txt").read_text().splitlines(), (out / "hard.txt").read_text().splitlines()
    assert len(easy) == int(len(names) * 0.67) and sorted(easy + hard) == names
    assert len((out / "scores.csv").read_text().splitlines()) == len(names) + 1
    for name in easy:
        label = read_index_png(pseudo_label_path(out / "pseudo_labels", name))
        assert label.shape == (SIZE[1], SIZE[0]) and label.max() < 19
    assert not any(pseudo_label_path(out / "pseudo_labels", name).exists() for name in hard)
    assert (out / "histogram.png").is_file() and (out / "summary.json").is_file()


@pytest.mark.system
def test_ddp_two_processes_write_identical_files(ranked, toy_root, tmp_path):
    """Each image scored once on one of 2 ranks, gathered, written by rank 0: byte-identical to
    1 process. (Batch 1 and 1 thread on both sides: float32 kernels may round differently for
    another batch composition or thread count, which could reorder near-ties.)"""
    single, ckpt = ranked
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [sys.executable, "-m", "intrada_pl.cli", *rank_args(toy_root, ckpt, tmp_path / "run"),
               "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    assert "entropy ranking written to" in done.stderr + done.stdout
    ddp = tmp_path / "run" / "ranking"
    files = sorted(p.relative_to(single) for p in single.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ddp) for p in ddp.rglob("*") if p.is_file())
    for rel in files:
        assert (single / rel).read_bytes() == (ddp / rel).read_bytes(), rel


# ---------------------------------------------------------------------------------- SplitDataModule
def split_module(ranking_dir: Path, toy_root: Path, **kwargs) -> SplitDataModule:
    return SplitDataModule(ranking_dir=str(ranking_dir), root=str(toy_root / "Cityscapes"), size=SIZE, val_size=SIZE,
                           batch_size=2, num_workers=0, **kwargs)


def test_split_datamodule_yields_easy_with_pseudo_labels_and_hard(ranked, toy_root):
    out, _ = ranked
    data = split_module(out, toy_root)
    data.setup("fit")
    loaders = data.train_dataloader()
    source, target = next(iter(loaders["source"])), next(iter(loaders["target"]))
    easy = set((out / "easy.txt").read_text().split())
    assert set(source["name"]) <= easy and not set(target["name"]) & easy
    for batch in (source, target):
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 3, SIZE[1], SIZE[0])
        assert batch["label"].dtype == torch.long
    for name, label in zip(source["name"], source["label"]):  # back to the image grid and down again: unchanged
        assert np.array_equal(label.numpy(), read_index_png(pseudo_label_path(out / "pseudo_labels", name)))
    assert (target["label"] == 255).all()
    val = next(iter(data.val_dataloader()))
    assert val["label"].shape[-2:] == (64, 128)  # labels at full resolution, as in every evaluation


def test_split_datamodule_refuses_missing_files(ranked, toy_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="make rank"):
        split_module(tmp_path / "nowhere", toy_root).setup("fit")
    out = tmp_path / "ranking"
    shutil.copytree(ranked[0], out)
    first = (out / "easy.txt").read_text().split()[0]
    pseudo_label_path(out / "pseudo_labels", first).unlink()
    with pytest.raises(FileNotFoundError, match="no pseudo-label"):
        split_module(out, toy_root).setup("fit")
    (out / "easy.txt").write_text("aachen/aachen_999999_000019_leftImg8bit.png\n")
    with pytest.raises(DatasetLayoutError, match="no image"):
        split_module(out, toy_root).setup("fit")
    (out / "easy.txt").write_text("")
    with pytest.raises(ValueError, match="lists no image"):
        split_module(out, toy_root).setup("fit")


def test_split_datamodule_without_hard_images_trains_on_pseudo_labels_alone(ranked, toy_root, tmp_path):
    out = tmp_path / "ranking"
    shutil.copytree(ranked[0], out)
    (out / "hard.txt").write_text("")
    data = split_module(out, toy_root)
    data.setup("fit")
    assert list(data.train_dataloader()) == ["source"]

