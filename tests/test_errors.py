"""Bad input through the console script: one ``intrada: error:`` line naming the file or option
and what was expected, exit status 2, no traceback (issue 10 item 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import eval_config, fit_config, stage_args, write_yaml
from intrada_pl.cli import run
from intrada_pl.data import layouts
from intrada_pl.data.datasets import Cityscapes, ImageFileError
from intrada_pl.errors import BadInputError
from intrada_pl.io import write_png, write_text

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = "--model.init_args.segmenter.init_args.pretrained"


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def first(root: Path, pattern: str) -> Path:
    return min(root.glob(pattern))


class Case:
    """One bad input: builds its files under ``tmp`` and returns the command line and the
    fragments its error line must hold."""

    def __init__(self, tmp: Path, toy: Path, weights: Path) -> None:
        self.tmp, self.toy, self.weights = tmp, toy, weights

    def cityscapes(self) -> Path:
        """A writable copy of the toy Cityscapes (the shared one is read-only)."""
        return Path(shutil.copytree(self.toy / "Cityscapes", self.tmp / "Cityscapes"))

    def test(self, *extra: str, data_root: Path | None = None, **data: object) -> list[str]:
        config = eval_config(data_root or self.toy)
        config["data"].update(data)
        return ["test", "--config", write_yaml(self.tmp / "test.yaml", config), "--ckpt", str(self.weights), *extra]

    def fit(self, *extra: str, command: str = "fit") -> list[str]:
        config = fit_config(self.toy, self.tmp / "run")
        config["trainer"]["num_sanity_val_steps"] = 0
        return [command, "--config", write_yaml(self.tmp / "fit.yaml", config), *extra]

    def rank(self, *extra: str) -> list[str]:
        return [
            "predict", "--config", str(REPO / "configs" / "rank_gta5.yaml"), "--trainer.accelerator", "cpu",
            "--trainer.default_root_dir", str(self.tmp), "--trainer.callbacks.init_args.output_dir", str(self.tmp),
            "--model.init_args.segmenter.init_args.depth", "18", "--data.init_args.root", str(self.toy / "Cityscapes"),
            "--data.init_args.num_workers", "0", *extra,
        ]

    def file(self, name: str, content: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        return str(path)


def truncated_label(c: Case):
    label = truncated(first(c.cityscapes(), "gtFine/val/*/*_labelIds.png"))
    return c.test(data_root=c.tmp), [f"label file {label} is truncated"]


def truncated_image(c: Case):
    image = truncated(first(c.cityscapes(), "leftImg8bit/val/*/*.png"))
    return c.test(data_root=c.tmp), [f"image file {image} is truncated", "PNG"]


def truncated_jpeg(c: Case):
    rng = np.random.default_rng(0)
    image, _ = layouts.write_bdd100k(c.tmp / "BDD", "val", "a1", rng.integers(0, 255, (32, 64, 3), np.uint8), np.zeros((32, 64), np.uint8))
    truncated(image)
    return c.test(dataset="bdd100k", root=str(c.tmp / "BDD")), [f"image file {image} is truncated", "JPEG"]


def zero_byte_image(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/val/*/*.png")
    image.write_bytes(b"")
    return c.test(data_root=c.tmp), [f"image file {image} is empty (0 bytes)"]


def non_utf8_image_name(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/val/*/*.png")
    label = first(c.tmp / "Cityscapes", "gtFine/val/*/*_labelIds.png")
    bad = image.parent / os.fsdecode(b"\xff\xfe_leftImg8bit.png")     # Latin-1 bytes: Python sees surrogates
    shutil.copy(image, bad)
    shutil.copy(label, label.parent / os.fsdecode(b"\xff\xfe_gtFine_labelIds.png"))
    return c.test(data_root=c.tmp), ["Cityscapes: 1 of 5 images under", repr(os.fsencode(bad)), "is not valid UTF-8"]


def non_utf8_image_name_to_rank(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/train/*/*.png")
    bad = image.parent / os.fsdecode(b"caf\xe9_leftImg8bit.png")
    shutil.copy(image, bad)
    return c.rank("--data.init_args.root", str(c.tmp / "Cityscapes")), ["Cityscapes: 1 of 7 images under", repr(os.fsencode(bad)), "is not valid UTF-8"]


def image_is_a_directory(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/val/*/*.png").with_name("frankfurt_000099_000019_leftImg8bit.png")
    image.mkdir()
    return c.test(data_root=c.tmp), ["Cityscapes: 1 of 5 images under", f"{image} is a directory, not an image file"]


def image_is_a_dangling_symlink(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/val/*/*.png").with_name("frankfurt_000099_000019_leftImg8bit.png")
    image.symlink_to(c.tmp / "gone.png")
    return c.test(data_root=c.tmp), [f"{image} is a symbolic link to '{c.tmp / 'gone.png'}', which does not exist"]


def image_is_a_symlink_loop(c: Case):
    image = first(c.cityscapes(), "leftImg8bit/val/*/*.png").with_name("frankfurt_000099_000019_leftImg8bit.png")
    image.symlink_to(image.name)
    return c.test(data_root=c.tmp), [f"{image} is a symbolic link loop"]


def label_not_an_image(c: Case):
    label = first(c.cityscapes(), "gtFine/val/*/*_labelIds.png")
    label.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer instead of the file
    return c.test(data_root=c.tmp), [f"label file {label} cannot be decoded", "expected a PNG"]


def label_of_another_size(c: Case):
    label = first(c.cityscapes(), "gtFine/val/*/*_labelIds.png")
    cv2.imwrite(str(label), np.full((32, 64), 7, np.uint8))  # the image is 128x64
    return c.test(data_root=c.tmp), [f"label {label} is 64x32 but its image", "is 128x64", "Cityscapes labels have the size of their image"]


def truncated_pseudo_label(c: Case):
    train = Cityscapes(c.toy / "Cityscapes", split="train")
    ranking = c.tmp / "ranking"
    write_text(ranking / "easy.txt", "".join(f"{n}\n" for n in train.names[:3]))
    write_text(ranking / "hard.txt", "".join(f"{n}\n" for n in train.names[3:]))
    for i, name in enumerate(train.names[:3]):
        truncated(write_png(ranking / "pseudo_labels" / name, train.read_label(i)))
    config = fit_config(c.toy, c.tmp / "run", stage="intrada_pl.stages.intra.IntraDomainModule", schedule_steps=10)
    config["trainer"]["num_sanity_val_steps"] = 0
    config["data"] = {"class_path": "intrada_pl.data.datamodules.SplitDataModule", "init_args": {
        "ranking_dir": str(ranking), "root": str(c.toy / "Cityscapes"), "size": [64, 32], "val_size": [64, 32],
        "batch_size": 1, "num_workers": 0}}
    return ["fit", "--config", write_yaml(c.tmp / "intra.yaml", config)], [f"label file {ranking / 'pseudo_labels'}", "is truncated"]


def text_as_ckpt(c: Case):
    path = c.file("notes.pth", "model_120000.pth\n")
    return ["test", "--config", write_yaml(c.tmp / "t.yaml", eval_config(c.toy)), "--ckpt", path], [path, "not a readable PyTorch checkpoint", "expected a Lightning checkpoint"]


def png_as_ckpt_path(c: Case):
    path = str(c.tmp / "image.png")
    cv2.imwrite(path, np.zeros((8, 8, 3), np.uint8))
    return c.fit("--ckpt_path", path, command="validate"), [path, "not a readable PyTorch checkpoint"]


def random_bytes_as_pretrained(c: Case):
    path = c.file("random.pth", np.random.default_rng(0).bytes(4096))
    return c.fit(PRETRAINED, path), [path, "not a readable PyTorch checkpoint"]


def missing_pretrained(c: Case):
    path = str(c.tmp / "pretrained" / "DeepLab_resnet_pretrained_imagenet.pth")
    return c.fit(PRETRAINED, path), [f"pretrained weights not found: {path}", "ImageNet init ADVENT and IntraDA use", "github.com/valeoai/ADVENT/releases"]


def lambda_out_of_range(c: Case):
    return c.rank("--trainer.callbacks.init_args.lambda_", "1.5"), ["RankingCallback lambda_", "(0, 1]", "got 1.5"]


def confidence_threshold_out_of_range(c: Case):
    return c.rank("--trainer.callbacks.init_args.confidence_threshold", "2"), ["RankingCallback confidence_threshold", "[0, 1]", "got 2"]


def unknown_calibration(c: Case):
    return c.test("--method", "bn_adpt"), ["unknown test-time method 'bn_adpt' (--method)", "choose from none, manual, bn_adapt"]


def manual_strength_out_of_range(c: Case):
    return c.test("--method", "manual@1.7"), ["manual strength M must lie in [0, 1]", "--method manual@1.7"]


def manual_strength_not_a_number(c: Case):
    return c.test("--calibration", "manual@high"), ["manual@M takes a number M in [0, 1], got 'manual@high' (--method)"]  # the older name


def learned_calibration_on_an_uncalibrated_checkpoint(c: Case):
    return c.test("--method", "instcal_u"), ["instcal_u needs a checkpoint calibrated with instcal_u", str(c.weights), "intrada fit --config configs/calib_gta5.yaml"]


def no_ckpt_to_test(c: Case):
    return ["test", "--config", write_yaml(c.tmp / "t.yaml", eval_config(c.toy))], ["no checkpoint to evaluate: pass --ckpt PATH"]


def toy_data_negative_count(c: Case):
    return ["toy-data", str(c.tmp / "toy"), "--source-images", "-1"], ["--source-images must be at least 1", "got -1"]


def toy_data_zero_count(c: Case):
    return ["toy-data", str(c.tmp / "toy"), "--target-val", "0"], ["--target-val must be at least 1", "got 0"]


def toy_data_negative_seed(c: Case):
    return ["toy-data", str(c.tmp / "toy"), "--seed", "-1"], ["seed must be an integer >= 0", "got -1"]


def missing_config(c: Case):
    return ["fit", "--config", str(c.tmp / "inter_gta.yaml")], ["--config", f"{c.tmp / 'inter_gta.yaml'}", "does not exist"]


def yaml_syntax_error(c: Case):
    path = c.file("broken.yaml", "trainer:\n  max_steps: 4\n  devices: [1\nmodel: {}\n")
    return ["fit", "--config", path], [f"--config {path} is not valid YAML", "line 4"]


def pipeline_yaml_syntax_error(c: Case):
    path = c.file("pipeline.yaml", "run_dir: runs\nstages:\n  - name: a\n   command: fit\n")
    return ["pipeline", "--config", path], [f"--config {path} is not valid YAML", "line 4"]


def unknown_resize(c: Case):
    return c.fit("--data.init_args.resize", "bicubic"), ["--data.resize: Expected one of 'pil', 'opencv'", "bicubic"]


def learning_rate_not_a_number(c: Case):
    return c.fit("--model.init_args.optimizer.init_args.lr", "fast"), ["--model.optimizer.lr: Expected a float", "fast"]


def misspelt_option(c: Case):
    return c.fit("--trainer.max_iters", "4"), ["unrecognized arguments: --trainer.max_iters 4"]


def dataset_root_is_a_file(c: Case):
    root = c.file("Cityscapes.zip", b"PK\x03\x04")
    return c.test(root=root), [f"Cityscapes: dataset root {root} does not exist or is not a directory"]


def empty_list_file(c: Case):
    path = c.file("val.txt", "\n")
    return c.test(list_file=path), [f"Cityscapes: list file {path} is empty"]


def accelerator_not_available(c: Case):
    return c.test("--trainer.accelerator", "mps"), ["`MPSAccelerator` can not run on your system", "--trainer"]


def nothing_to_resume(c: Case):
    return c.fit("--ckpt_path", "last"), ["--ckpt_path last: no last.ckpt to resume in", str(c.tmp / "run" / "checkpoints")]


def negative_learning_rate(c: Case):
    return c.fit("--model.init_args.optimizer.init_args.lr", "-0.1"), ["optimizer: lr and weight_decay must be >= 0", "lr=-0.1"]


def zero_schedule_steps(c: Case):
    return c.fit("--model.init_args.lr_scheduler.init_args.total_steps", "0"), ["lr_scheduler: total_steps must be positive, got 0"]


def directory_as_ckpt_path(c: Case):
    return c.fit("--ckpt_path", str(c.tmp)), [f"--ckpt_path {c.tmp} is a directory", "last.ckpt"]


def nan_weights(c: Case) -> str:
    state = torch.load(c.weights, weights_only=True)
    state["layer6.conv2d_list.0.weight"][0, 0, 0, 0] = float("nan")
    path = c.tmp / "diverged.pth"
    torch.save(state, path)
    return str(path)


def non_finite_checkpoint_to_test(c: Case):
    path = nan_weights(c)
    return ["test", "--config", write_yaml(c.tmp / "t.yaml", eval_config(c.toy)), "--ckpt", path], [path, "non-finite weights (layer6.conv2d_list.0.weight)"]


def non_finite_checkpoint_to_rank(c: Case):
    path = nan_weights(c)
    return c.rank("--ckpt_path", path), [path, "non-finite weights (layer6.conv2d_list.0.weight)"]


def calibration_checkpoint_as_init_ckpt(c: Case):
    from intrada_pl.stages.calibration import CalibrationModule

    module = CalibrationModule(str(c.weights))
    path = c.tmp / "calibrated.ckpt"
    torch.save({"pytorch-lightning_version": "2.6", "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    config = fit_config(c.toy, c.tmp / "calib", stage="intrada_pl.stages.calibration.CalibrationModule")
    config["model"]["init_args"] = stage_args(init_ckpt=str(path))
    return ["fit", "--config", write_yaml(c.tmp / "calib.yaml", config)], [f"init_ckpt {path} is already calibrated (instcal_u)"]


def zero_batch_size(c: Case):
    return c.fit("--data.init_args.batch_size", "0"), ["batch_size must be at least 1, got 0"]


def negative_num_workers(c: Case):
    return c.fit("--data.init_args.num_workers", "-1"), ["num_workers must be 0 (load in the main process) or more, got -1"]


def zero_image_size(c: Case):
    return c.fit("--data.init_args.source_size", "[0, 36]"), ["source_size", "positive [width, height]", "[0, 36]"]


def zero_val_check_interval(c: Case):
    return c.fit("--trainer.val_check_interval", "0"), ["val_check_interval"]


CASES = [
    truncated_label, truncated_image, truncated_jpeg, zero_byte_image, non_utf8_image_name, non_utf8_image_name_to_rank,
    image_is_a_directory, image_is_a_dangling_symlink, image_is_a_symlink_loop, label_not_an_image, label_of_another_size, truncated_pseudo_label,
    text_as_ckpt, png_as_ckpt_path, random_bytes_as_pretrained, missing_pretrained,
    lambda_out_of_range, confidence_threshold_out_of_range,
    unknown_calibration, manual_strength_out_of_range, manual_strength_not_a_number, learned_calibration_on_an_uncalibrated_checkpoint,
    no_ckpt_to_test,
    toy_data_negative_count, toy_data_zero_count, toy_data_negative_seed,
    missing_config, yaml_syntax_error, pipeline_yaml_syntax_error, unknown_resize, learning_rate_not_a_number, misspelt_option,
    dataset_root_is_a_file, empty_list_file, accelerator_not_available, nothing_to_resume,
    negative_learning_rate, zero_schedule_steps, directory_as_ckpt_path, non_finite_checkpoint_to_test, non_finite_checkpoint_to_rank,
    calibration_checkpoint_as_init_ckpt, zero_batch_size, negative_num_workers, zero_image_size, zero_val_check_interval,
]


def console(monkeypatch, capsys, args: list[str]) -> tuple[int, str]:
    """``intrada ARGS`` through the console script, in this process: (exit status, stderr)."""
    monkeypatch.delenv("INTRADA_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "argv", ["intrada", *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    return exit_info.value.code, capsys.readouterr().err


def error_line(code: int, err: str) -> str:
    """The one ``intrada: error:`` line, after checking the exit status and that nothing but the
    layout a dataset expects follows it, and no traceback."""
    assert code == 2 and "Traceback" not in err, err
    message = err[err.index("intrada: error: "):]
    line, _, rest = message.partition("\n")
    assert not rest.strip() or rest.startswith("Expected layout:"), message
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_error_line_and_exit_status_2(case, toy_root, deeplab_pth, tmp_path, monkeypatch, capsys):
    args, fragments = case(Case(tmp_path, toy_root, deeplab_pth))
    line = error_line(*console(monkeypatch, capsys, args))
    for fragment in fragments:
        assert fragment in line


def test_traceback_on_request(toy_root, deeplab_pth, tmp_path, monkeypatch):
    args, _ = truncated_image(Case(tmp_path, toy_root, deeplab_pth))
    monkeypatch.setenv("INTRADA_TRACEBACK", "1")
    monkeypatch.setattr(sys, "argv", ["intrada", *args])
    with pytest.raises(ImageFileError, match="is truncated") as error:
        run()
    assert isinstance(error.value, BadInputError) and isinstance(error.value, OSError)  # old except clauses still catch it


@pytest.mark.system
@pytest.mark.parametrize("case", [truncated_image, zero_byte_image], ids=lambda c: c.__name__)
def test_console_script_reports_a_worker_error_as_its_original_message(case, toy_root, deeplab_pth, tmp_path):
    """The real console script, with the bad file read in a DataLoader worker process: PyTorch
    raises the error again in the main process with the worker's traceback as its message."""
    args, fragments = case(Case(tmp_path, toy_root, deeplab_pth))
    env = {k: v for k, v in os.environ.items() if k != "INTRADA_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args, "--data.num_workers", "1"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    line = error_line(done.returncode, done.stderr)
    assert fragments[0] in line and "DataLoader worker" not in done.stderr


def test_wandb_online_without_a_login_is_one_line(toy_root, tmp_path, monkeypatch, capsys):
    """WANDB_MODE=online with no API key and no ~/.netrc: one line saying how to log in, before any run starts."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    config = fit_config(toy_root, tmp_path / "run")
    del config["trainer"]["logger"], config["trainer"]["callbacks"]  # the run's default loggers, W&B among them
    line = error_line(*console(monkeypatch, capsys, ["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)]))
    assert "WANDB_MODE=online but no W&B login was found" in line and "wandb login" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
