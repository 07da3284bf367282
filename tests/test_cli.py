"""`intrada fit` then `intrada test` on toy data, through the real CLI, plus its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from intrada_pl.cli import main
from intrada_pl.data.labels import CITYSCAPES_ID_TO_TRAIN_ID
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.weights import CheckpointMismatchError
from helpers import eval_config, fit_config, write_yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(toy_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", write_yaml(run_dir / "fit.yaml", fit_config(toy_root, run_dir))])
    return run_dir


def test_fit_writes_checkpoints_with_hyperparameters(trained):
    last = trained / "checkpoints" / "last.ckpt"
    assert last.is_file()
    blob = torch.load(last, map_location="cpu", weights_only=False)
    assert blob["global_step"] == 4
    assert blob["hyper_parameters"]["segmenter"]["init_args"]["depth"] == 18
    assert any(key.startswith("model.layer6.") for key in blob["state_dict"])


def test_test_writes_metrics_and_prediction_files(trained, toy_root, tmp_path):
    out = tmp_path / "out"
    cfg = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    main(["test", "--config", cfg, "--ckpt", str(trained / "checkpoints" / "last.ckpt"), "--output", str(out), "--save_predictions"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mIoU"] <= 100.0
    assert set(metrics["IoU"]) >= {"road", "sky", "car"}
    assert metrics["num_images"] == 4
    label_files = sorted((out / "predictions" / "labelIds").rglob("*.png"))
    color_files = sorted((out / "predictions" / "color").rglob("*.png"))
    assert len(label_files) == len(color_files) == 4
    assert label_files[0].name.endswith("_leftImg8bit.png")  # named like the input image
    pred = cv2.imread(str(label_files[0]), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (64, 128)  # label resolution, not the 64x32 input
    assert set(np.unique(pred)) <= set(CITYSCAPES_ID_TO_TRAIN_ID)  # label IDs, not train IDs
    assert cv2.imread(str(color_files[0])).shape == (64, 128, 3)


def test_ensemble_of_two_checkpoints(trained, toy_root, tmp_path):
    out = tmp_path / "ens"
    cfg = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    ckpts = sorted((trained / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) >= 2
    main(["test", "--config", cfg, "--ckpt", str(ckpts[0]), "--ckpt", str(ckpts[1]), "--output", str(out)])
    assert json.loads((out / "metrics.json").read_text())["checkpoints"] == [str(ckpts[0]), str(ckpts[1])]


def test_reference_state_dict_is_evaluated(toy_root, deeplab_pth, tmp_path):
    cfg = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    main(["test", "--config", cfg, "--ckpt", str(deeplab_pth), "--output", str(tmp_path / "ref")])
    assert (tmp_path / "ref" / "metrics.json").is_file()


def test_checkpoint_with_other_class_count_is_refused(toy_root, tmp_path):
    path = tmp_path / "sixteen.pth"
    torch.save(DeepLabV2(16, depth=18).state_dict(), path)
    cfg = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    with pytest.raises(CheckpointMismatchError, match="16 classes"):
        main(["test", "--config", cfg, "--ckpt", str(path)])


def test_missing_dataset_root_names_the_layout(toy_root, tmp_path):
    config = fit_config(toy_root, tmp_path)
    config["data"]["init_args"]["source_root"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="images/"):
        main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])


def test_empty_dataset_is_refused(toy_root, tmp_path):
    empty = tmp_path / "empty_gta"
    (empty / "images").mkdir(parents=True)
    (empty / "labels").mkdir()
    config = fit_config(toy_root, tmp_path)
    config["data"]["init_args"]["source_root"] = str(empty)
    with pytest.raises(FileNotFoundError, match="no images"):
        main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])


def test_inspect_command_prints_json(toy_root, capsys):
    main(["inspect", "cityscapes", str(toy_root / "Cityscapes"), "--split", "val", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 4
    assert len(report["class_pixels"]) == 19
    assert sum(report["class_pixels"]) + report["ignored_pixels"] == 4 * 128 * 64
    assert report["problems"] == []


def test_toy_data_command_writes_both_layouts(tmp_path, capsys):
    main(["toy-data", str(tmp_path / "toy"), "--source-images", "2", "--target-train", "2", "--target-val", "1"])
    assert len(list((tmp_path / "toy" / "GTA5" / "labels").glob("*.png"))) == 2
    assert len(list((tmp_path / "toy" / "Cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))) == 1
    assert "toy_meta.json" in capsys.readouterr().out


def test_toy_data_check_ranking_counts_generated_hard_images_ranked_hard(toy_root, tmp_path, capsys):
    meta = json.loads((toy_root / "toy_meta.json").read_text())
    hard = meta["hard_train_images"]  # 6 train images, hard fraction 0.3 -> 2
    names = sorted(p.relative_to(toy_root / "Cityscapes/leftImg8bit/train").as_posix()
                   for p in (toy_root / "Cityscapes/leftImg8bit/train").rglob("*.png"))
    clean = [n for n in names if n not in hard]
    ranking = tmp_path / "ranking"
    ranking.mkdir()
    (ranking / "hard.txt").write_text(f"{hard[0]}\n{clean[0]}\n")  # one generated hard image found
    (ranking / "easy.txt").write_text("".join(f"{n}\n" for n in [hard[1], *clean[1:]]))
    main(["toy-data", str(toy_root), "--check-ranking", str(ranking)])
    out = capsys.readouterr().out
    assert f"1 of the {len(hard)} rainy/night train images are among the 2 ranked hard" in out
    assert f"would find {len(hard) * 2 / len(names):.1f}" in out
    assert sorted(p.name for p in ranking.iterdir()) == ["easy.txt", "hard.txt"]  # nothing written
    with pytest.raises(FileNotFoundError, match="toy_meta.json"):
        main(["toy-data", str(tmp_path), "--check-ranking", str(ranking)])


def test_console_script_reports_bad_input_in_one_message(monkeypatch, capsys, tmp_path):
    from intrada_pl.cli import run

    monkeypatch.delenv("INTRADA_TRACEBACK", raising=False)
    monkeypatch.setattr("sys.argv", ["intrada", "inspect", "gta5", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"intrada: error: GTA5: dataset root {tmp_path / 'missing'} does not exist")
    assert "Expected layout" in err and "labels/00001.png" in err and "Traceback" not in err
    monkeypatch.setenv("INTRADA_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        run()


def test_null_for_a_nested_component_argument_is_none(capsys):
    """``--model.init_args.segmenter.init_args.pretrained null`` (README's random init) is None, not
    the string 'None' that jsonargparse makes of a null for a class nested in a config class."""
    config = REPO / "configs" / "inter_gta5.yaml"
    for spelling in (["--model.init_args.segmenter.init_args.pretrained", "null"], ["--model.init_args.segmenter.init_args.pretrained=null"],
                     ["--model.segmenter.init_args.pretrained", "null"], ["--model.segmenter.pretrained=null"]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(config), *spelling, "--model.init_args.segmenter.init_args.depth", "18", "--print_config"])
        segmenter = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["segmenter"]["init_args"]
        assert segmenter["pretrained"] is None and segmenter["depth"] == 18
