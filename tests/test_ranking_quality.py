"""The ranking's quality report (intrada_pl.ranking.quality, ranking/quality.json)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_ranking import SIZE, FixedLogits, rank_args
from torch.utils.data import DataLoader

from intrada_pl.cli import main
from intrada_pl.data.datamodules import TargetDataModule
from intrada_pl.data.datasets import DatasetLayoutError
from intrada_pl.errors import ConfigValueError
from intrada_pl import visuals
from intrada_pl.ranking import RankingCallback, ranking_recall
from intrada_pl.ranking.callback import extremes
from intrada_pl.ranking.quality import (
    RankingQuality,
    auroc,
    average_ranks,
    check_hard_list,
    confusion_matrices,
    hard_list_report,
    image_quality,
    read_name_list,
    spearman,
    split_quality,
    split_recall_precision,
)
from intrada_pl.ranking.scores import Ranking


# ---------------------------------------------------------------------------------- statistics
def test_average_ranks_share_tied_ranks():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]  # ranks 2, 3, 4 -> 3 each
    assert average_ranks([0.5]).tolist() == [1]


def test_spearman_by_hand():
    # no ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: x ranks [1, 2.5, 2.5, 4] vs y [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([0.1, 0.2, 0.3], [9, 5, 1]) == pytest.approx(-1.0)  # monotone, not linear
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant side
    assert spearman([1], [2]) is None
    with pytest.raises(ValueError, match="pairs"):
        spearman([1, 2], [1])


def test_auroc_by_hand():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 / 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    # ties count one half: positives {2, 3} vs negatives {1, 2}: 1 + 0.5 + 1 + 1 -> 3.5 / 4
    assert auroc([1, 2, 2, 3], [False, True, False, True]) == 0.875
    assert auroc([1, 2, 3], [True, False, False]) == 0.0  # the known-hard image scores lowest
    assert auroc([1, 2], [True, True]) is None and auroc([1, 2], [False, False]) is None


def test_auroc_equals_the_pairwise_definition_with_many_ties():
    rng = np.random.default_rng(0)
    scores, positives = rng.integers(0, 5, 40).tolist(), (rng.random(40) < 0.3).tolist()
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    pairwise = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auroc(scores, positives) == pytest.approx(pairwise)


def test_split_recall_precision_and_hard_list_report():
    assert split_recall_precision({"a", "b", "c"}, {"b", "c", "d", "e"}) == {"found": 2, "recall": 0.5, "precision": 2 / 3}
    assert split_recall_precision([], {"b"}) == {"found": 0, "recall": 0.0, "precision": None}
    assert split_recall_precision({"a"}, set()) == {"found": 0, "recall": None, "precision": 0.0}
    scores = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    report = hard_list_report(scores, ["c", "d"], ["b", "d", "not_ranked.png"])
    assert report == {"entries": 3, "matched": 2, "unmatched": 1, "auroc": 0.75, "found": 1, "recall": 0.5,
                      "precision": 0.5, "chance_found": 1.0}


def test_read_name_list(tmp_path):
    path = tmp_path / "hard.txt"
    path.write_text("a/x.png\n\n./b/y.png\n  c\\z.png  \n")
    assert read_name_list(path) == ["a/x.png", "b/y.png", "c/z.png"]
    with pytest.raises(FileNotFoundError, match=r"hard_list file .*missing.txt not found"):
        read_name_list(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------- confusion
def test_confusion_matrices_per_image_by_hand():
    pred = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [2, 2]]], dtype=torch.uint8)
    target = torch.tensor([[[0, 1], [0, 1]], [[2, 255], [0, 2]]])
    confusion = confusion_matrices(pred, target, 3)
    assert confusion.shape == (2, 3, 3) and confusion.dtype == torch.int64
    assert confusion[0].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]  # [true, predicted]; pred 255 not counted
    assert confusion[1].tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 2]]  # truth 255 not counted


def test_image_and_split_quality_by_hand():
    first = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]])  # accuracy 2/3; IoU 1/2, 1/2, (absent)
    assert image_quality(first, [0, 1, 2]) == (pytest.approx(2 / 3), pytest.approx(0.5))
    assert image_quality(np.zeros((3, 3), int), [0, 1, 2]) == (None, None)
    second = np.array([[0, 0, 1], [0, 0, 0], [0, 0, 2]])  # pooled: [[1,1,1],[0,1,0],[0,0,2]]
    pooled = split_quality([first, second], [0, 1, 2])
    assert pooled["images"] == 2 and pooled["pixels"] == 6
    assert pooled["pixel_accuracy"] == pytest.approx(4 / 6)
    # IoU: road 1/(3+1-1), sidewalk 1/(1+2-1), building 2/(2+3-2)
    assert pooled["IoU"]["road"] == pytest.approx(1 / 3) and pooled["IoU"]["building"] == pytest.approx(2 / 3)
    assert pooled["mIoU"] == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)


def hand_ranking() -> tuple[Ranking, dict[str, np.ndarray]]:
    """4 images; the higher the score, the fewer pixels right (a reliable ranking)."""
    scores = {"a.png": 0.1, "b.png": 0.2, "c.png": 0.3, "d.png": 0.4}
    confusions = {}
    for right, name in zip((4, 3, 2, 1), scores):
        confusion = np.zeros((19, 19), np.int32)
        confusion[0, 0], confusion[0, 1] = right, 4 - right
        confusions[name] = confusion
    return Ranking.from_scores(scores, 0.5), confusions


def test_report_with_labels_and_hard_list():
    ranking, confusions = hand_ranking()
    report = RankingQuality(ranking, 0.5, confusions, known_hard=["c.png", "d.png"]).report
    assert report["labelled"] and report["classes"] == "19"
    assert report["spearman_score_vs_accuracy"] == pytest.approx(-1.0)
    assert report["spearman_score_vs_mIoU"] == pytest.approx(-1.0)
    assert report["easy"]["images"] == 2 and report["easy"]["pixel_accuracy"] == pytest.approx(7 / 8)
    assert report["hard"]["pixel_accuracy"] == pytest.approx(3 / 8)
    assert report["all"]["pixel_accuracy"] == pytest.approx(10 / 16)
    # easy: road 7 right of 8, sidewalk 1 predicted, never true -> IoU road 7/8, sidewalk 0
    assert report["easy"]["IoU"]["road"] == pytest.approx(7 / 8) and report["easy"]["IoU"]["sidewalk"] == 0.0
    assert report["easy"]["IoU"]["car"] is None and report["easy"]["mIoU"] == pytest.approx(7 / 16)
    assert report["hard_list"] == {"entries": 2, "matched": 2, "unmatched": 0, "auroc": 1.0, "found": 2, "recall": 1.0,
                                   "precision": 1.0, "chance_found": 1.0}
    assert report["score"]["cut"] == pytest.approx(0.25) and report["score"]["median"] == pytest.approx(0.25)
    json.dumps(report, allow_nan=False)  # strict JSON: undefined values are null


def test_report_without_labels_holds_only_label_free_parts(tmp_path):
    ranking, confusions = hand_ranking()
    for unlabelled in (None, {name: np.zeros_like(c) for name, c in confusions.items()}):
        plain = RankingQuality(ranking, 0.5, unlabelled)
        assert set(plain.report) == {"num_images", "num_easy", "num_hard", "lambda_", "score", "labelled"}
        assert plain.report["labelled"] is False
    plain.write(tmp_path)
    assert (tmp_path / "quality.json").is_file() and not (tmp_path / "quality.png").exists()  # histogram.png has it all
    with_list = RankingQuality(ranking, 0.5, None, known_hard=["a.png"])
    with_list.write(tmp_path)
    assert json.loads((tmp_path / "quality.json").read_text())["hard_list"]["auroc"] == 0.0
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_extremes_keep_the_lowest_and_highest():
    scores = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 5.0, "e": 4.0, "f": 1.0}
    assert extremes(scores, 2) == ["b", "f", "e", "d"]
    assert extremes(scores, 3) == ["b", "f", "c", "a", "e", "d"]
    assert extremes(scores, 10) == ["b", "f", "c", "a", "e", "d"]


# ---------------------------------------------------------------------------------- labels
def test_target_datamodule_labels_for_predict(toy_root, tmp_path):
    def first_label(stage, root=toy_root / "Cityscapes", **kwargs):
        data = TargetDataModule(root=str(root), split="train", size=SIZE, num_workers=0, **kwargs)
        data.setup(stage)
        return next(iter(data.predict_dataloader()))["label"][0]

    assert (first_label("predict") == 255).all()  # default: the reference's ranking reads no labels
    assert first_label("test").shape == (64, 128)  # evaluation at full resolution
    for with_labels in (True, "auto"):
        label = first_label("predict", with_labels=with_labels)
        assert label.shape == (SIZE[1], SIZE[0]) and (label < 19).all()  # at the ranking size
    root = tmp_path / "Cityscapes"
    shutil.copytree(toy_root / "Cityscapes", root)
    next((root / "gtFine" / "train").rglob("*_labelIds.png")).unlink()
    assert (first_label("predict", root, with_labels="auto") == 255).all()  # one missing: none used
    with pytest.raises(DatasetLayoutError, match="no label file"):
        first_label("predict", root, with_labels=True)
    with pytest.raises(ValueError, match="with_labels"):
        TargetDataModule(with_labels="yes")


# ---------------------------------------------------------------------------------- CLI
def test_ranking_with_labels_writes_the_report(toy_root, deeplab_ckpt, tmp_path, capsys):
    """configs/rank_gta5.yaml (with_labels: auto) on the toy data, which has labels."""
    hard_list = toy_root / "hard_list.txt"
    main([*rank_args(toy_root, deeplab_ckpt, tmp_path), "--trainer.callbacks.init_args.hard_list", str(hard_list)])
    out = tmp_path / "ranking"
    report = json.loads((out / "quality.json").read_text())
    easy, hard = (out / "easy.txt").read_text().split(), (out / "hard.txt").read_text().split()
    assert report["labelled"] is True
    assert (report["num_easy"], report["num_hard"]) == (len(easy), len(hard)) == (4, 2)
    assert report["easy"]["images"] == len(easy) and report["hard"]["images"] == len(hard)
    assert report["all"]["pixels"] == 6 * SIZE[0] * SIZE[1]  # toy labels cover every pixel, at the ranking size
    for part in ("all", "easy", "hard"):
        assert 0 <= report[part]["pixel_accuracy"] <= 1 and 0 <= report[part]["mIoU"] <= 1
        assert all(v is None or 0 <= v <= 1 for v in report[part]["IoU"].values())
    assert -1 <= report["spearman_score_vs_mIoU"] <= 1
    known = read_name_list(hard_list)
    assert report["hard_list"]["matched"] == report["hard_list"]["entries"] == len(known) == 2
    assert report["hard_list"]["found"] == len(set(known) & set(hard))
    assert json.loads((out / "summary.json").read_text())["hard_list"] == str(hard_list)
    assert (out / "quality.png").stat().st_size > 0
    # the toy data's check is the same report
    check = ranking_recall(toy_root, out)
    assert (check["recall"], check["precision"], check["auroc"]) == tuple(report["hard_list"][k] for k in ("recall", "precision", "auroc"))
    main(["toy-data", str(toy_root), "--check-ranking", str(out)])
    assert f"AUROC of the score {report['hard_list']['auroc']:.3f}" in capsys.readouterr().out


def test_ranking_without_labels_writes_the_label_free_report(toy_root, deeplab_ckpt, tmp_path):
    main([*rank_args(toy_root, deeplab_ckpt, tmp_path), "--data.init_args.with_labels", "false"])
    out = tmp_path / "ranking"
    report = json.loads((out / "quality.json").read_text())
    assert set(report) == {"num_images", "num_easy", "num_hard", "lambda_", "score", "labelled"}
    assert report["labelled"] is False and report["num_images"] == 6
    assert report["score"]["min"] <= report["score"]["median"] <= report["score"]["max"]
    assert not (out / "quality.png").exists()


def test_missing_hard_list_fails_before_scoring(toy_root, deeplab_ckpt, tmp_path, monkeypatch, capsys):
    from intrada_pl.cli import run

    monkeypatch.setattr("sys.argv", ["intrada", *rank_args(toy_root, deeplab_ckpt, tmp_path),
                                     "--trainer.callbacks.init_args.hard_list", str(tmp_path / "nope.txt")])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    assert "hard_list file" in capsys.readouterr().err and not (tmp_path / "ranking").exists()


# ---------------------------------------------------------------------------------- W&B
def test_wandb_gets_the_numbers_the_figure_and_the_examples(tmp_path, monkeypatch, offline_wandb):
    from lightning.pytorch.loggers import WandbLogger

    logged: dict[str, list] = {"image": [], "metrics": [], "table": []}
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, **kw: logged["image"].append(key))
    monkeypatch.setattr(WandbLogger, "log_metrics", lambda self, metrics, step=None: logged["metrics"].append(metrics))
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, key, columns, data, **kw: logged["table"].append((key, columns, data)))
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(7):  # logits as "images" (FixedLogits), ground truth = their argmax on 1 pixel in (i + 1)
        logits = torch.randn(19, 6, 8, generator=gen) * (1 + i)
        label = torch.full((6, 8), 255, dtype=torch.long)
        label.view(-1)[:: i + 1] = logits.argmax(0).view(-1)[:: i + 1]
        items.append({"image": logits, "label": label, "name": f"img_{i}.png"})
    trainer = L.Trainer(
        accelerator="cpu", logger=WandbLogger(save_dir=str(tmp_path), offline=True), enable_checkpointing=False,
        enable_progress_bar=False, callbacks=[RankingCallback(lambda_=0.5, output_dir=str(tmp_path), examples=2)],
    )
    trainer.predict(FixedLogits(), dataloaders=DataLoader(items, batch_size=3))
    assert logged["image"] == ["ranking/histogram", "ranking/quality"]
    (metrics,) = logged["metrics"]
    assert metrics["ranking/quality/easy/pixel_accuracy"] == 1.0 and metrics["ranking/quality/num_images"] == 7  # the argmax is right
    (scores_key, scores_columns, score_rows), (key, columns, rows) = logged["table"]
    order = (tmp_path / "ranking" / "easy.txt").read_text().split() + (tmp_path / "ranking" / "hard.txt").read_text().split()
    assert scores_key == "ranking/scores" and scores_columns == ["rank", "name", "score", "split"]
    assert [row[1] for row in score_rows] == order and [row[3] for row in score_rows] == ["easy"] * 3 + ["hard"] * 4
    assert key == "ranking/examples" and columns[:6] == ["rank", "name", "split", "score", "pixel_accuracy", "mIoU"]
    assert [row[0] for row in rows] == [1, 2, 6, 7] and [row[1] for row in rows] == order[:2] + order[-2:]
    assert [row[2] for row in rows] == ["easy", "easy", "hard", "hard"] and rows[0][4] == 1.0
    strip = np.asarray(rows[0][6].image)
    # entropy with its colour bar | pseudo-label | ground truth (the "image" holds logits here)
    assert strip.shape == (6, 8 * 3 + visuals.colorbar(6).shape[1], 3)
    trainer.logger.experiment.finish()


# ---------------------------------------------------------------------------------- hard_list matching (issue 18.8)
def test_check_hard_list_refuses_a_list_that_matches_no_ranked_image():
    ranked = ["b/b_1.png", "a/a_0.png"]
    check_hard_list(["x.png", "a/a_0.png"], ranked, "hard_list h.txt")  # one match is enough
    check_hard_list([], [], "hard_list h.txt")  # nothing ranked: nothing to compare with
    with pytest.raises(ConfigValueError) as refused:
        check_hard_list(["a_0.png", "b_1.png"], ranked, "hard_list h.txt")
    assert str(refused.value) == ("hard_list h.txt: none of its 2 names is a ranked image (its first: 'a_0.png'); expected "
                                  "image paths relative to the split's image folder, as in easy.txt, e.g. 'a/a_0.png'")
    with pytest.raises(ConfigValueError, match=r"^hard_list h.txt lists no image name; expected .* e.g. 'a/a_0.png'$"):
        check_hard_list([], ranked, "hard_list h.txt")


def test_hard_list_matching_no_ranked_image_is_refused_before_scoring(toy_root, deeplab_ckpt, tmp_path, monkeypatch, capsys):
    """Names without their city folder, a likely slip: one line, exit 2, nothing written (it was
    ``"auroc": null`` and no word)."""
    from intrada_pl.cli import run

    hard_list = tmp_path / "hard.txt"
    hard_list.write_text("".join(Path(name).name + "\n" for name in read_name_list(toy_root / "hard_list.txt")))
    monkeypatch.setattr("sys.argv", ["intrada", *rank_args(toy_root, deeplab_ckpt, tmp_path),
                                     "--trainer.callbacks.init_args.hard_list", str(hard_list)])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("intrada")]  # W&B has its say too
    assert len(ours) == 1 and ours[0].startswith(f"intrada: error: RankingCallback hard_list {hard_list}: none of its 2 names")
    assert "e.g. 'aachen/aachen_000000_000019_leftImg8bit.png'" in ours[0]
    assert not (tmp_path / "ranking").exists()


def test_hard_list_matched_count_in_quality_json_and_console(toy_root, deeplab_ckpt, tmp_path, caplog):
    hard_list = tmp_path / "hard.txt"
    hard_list.write_text((toy_root / "hard_list.txt").read_text() + "munich/munich_000000_000019_leftImg8bit.png\n")
    caplog.set_level(logging.INFO)
    main([*rank_args(toy_root, deeplab_ckpt, tmp_path), "--trainer.callbacks.init_args.hard_list", str(hard_list)])
    known = json.loads((tmp_path / "ranking" / "quality.json").read_text())["hard_list"]
    assert (known["entries"], known["matched"], known["unmatched"]) == (3, 2, 1)
    assert "hard_list: 2 of 3 names ranked, AUROC " in caplog.text


def test_hard_list_is_checked_after_scoring_when_the_dataset_lists_no_names(tmp_path):
    """A dataset without ``names`` (here a list of dicts): refused once the names are known, before writing."""
    hard_list = tmp_path / "hard.txt"
    hard_list.write_text("img_0\n")
    items = [{"image": torch.randn(19, 6, 8), "name": f"img_{i}.png"} for i in range(3)]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[RankingCallback(output_dir=str(tmp_path), hard_list=str(hard_list))])
    with pytest.raises(ConfigValueError, match=r"none of its 1 names is a ranked image \(its first: 'img_0'\).* e.g. 'img_0.png'"):
        trainer.predict(FixedLogits(), dataloaders=DataLoader(items, batch_size=3))
    assert not (tmp_path / "ranking").exists()
