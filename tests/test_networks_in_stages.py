"""Every stage on the field's networks: one tiny run of each stage (source-only, ADVENT, MinEnt, the
ranking, IntraDA, InstCal calibration, test) on MiT-B0 (SegFormer head) and on one other timm
backbone (ConvNeXt, DAFormer head), through the real CLI, with random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import eval_config, fit_config, stage_args, write_yaml
from intrada_pl.cli import main
from intrada_pl.models import SegFormer, load_segmenter

NETWORKS = {
    "mit_b0": {"class_path": "intrada_pl.models.SegFormer", "init_args": {"encoder": "mit_b0", "head": "segformer"}},
    "convnext_atto": {"class_path": "intrada_pl.models.SegFormer", "init_args": {"encoder": "convnext_atto", "head": "daformer", "head_channels": 32}},
}
INTER = "intrada_pl.stages.inter.InterDomainModule"
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:no pretrained weights given")


def fit(toy_root, run_dir, network: str, stage: str = "intrada_pl.stages.segmentation.SegmentationModule", **model_args):
    config = fit_config(toy_root, run_dir, stage=stage)
    config["model"]["init_args"] = stage_args(network=NETWORKS[network], optimizer="AdamW", lr=6e-5, schedule_steps=4, **model_args)
    config["trainer"].update(max_steps=2, val_check_interval=2)
    main(["fit", "--config", write_yaml(run_dir / "fit.yaml", config)])
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module", params=list(NETWORKS))
def source_only(request, toy_root, tmp_path_factory):
    """Source-only training: the checkpoint every later stage starts from."""
    run_dir = tmp_path_factory.mktemp(f"source_{request.param}")
    return request.param, fit(toy_root, run_dir, request.param)


def test_source_only_trains_and_the_checkpoint_rebuilds_the_network(source_only):
    network, ckpt = source_only
    blob = torch.load(ckpt, weights_only=True)
    assert blob["global_step"] == 2 and blob["hyper_parameters"]["optimizer"]["class_path"].endswith("AdamW")
    model, info = load_segmenter(ckpt)
    assert isinstance(model, SegFormer) and model.encoder_name == network and info.preprocessing == "imagenet"
    logits = model.eval()(torch.zeros(1, 3, 32, 64))[1]
    assert logits.shape == (1, 19, 8, 16)  # stride 4


@pytest.mark.parametrize("method", ["advent", "minent"])
def test_inter_domain_adaptation_steps_generator_and_discriminator(source_only, toy_root, tmp_path, method):
    network, ckpt = source_only
    last = fit(toy_root, tmp_path, network, stage=INTER, method=method)
    state = torch.load(last, weights_only=True)["state_dict"]
    assert ("d_main.0.weight" in state) == (method == "advent") and not any(k.startswith("d_aux.") for k in state)


def test_rank_then_intra_then_calibrate_then_test(source_only, toy_root, tmp_path):
    network, ckpt = source_only
    rank_dir = tmp_path / "rank"
    rank = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "default_root_dir": str(rank_dir),
                    "callbacks": [{"class_path": "intrada_pl.stages.ranking.RankingCallback", "init_args": {"lambda_": 0.5, "output_dir": str(rank_dir)}}]},
        "model": {"class_path": INTER, "init_args": {"segmenter": NETWORKS[network]}},
        "data": {"class_path": "intrada_pl.data.datamodules.TargetDataModule",
                 "init_args": {"root": str(toy_root / "Cityscapes"), "split": "train", "size": [64, 32], "num_workers": 0}},
    }
    main(["predict", "--config", write_yaml(tmp_path / "rank.yaml", rank), "--ckpt_path", str(ckpt)])
    easy = (rank_dir / "ranking" / "easy.txt").read_text().split()
    assert easy and len(list((rank_dir / "ranking" / "pseudo_labels").rglob("*.png"))) == len(easy)

    intra = fit_config(toy_root, tmp_path / "intra", stage="intrada_pl.stages.intra.IntraDomainModule")
    intra["model"]["init_args"] = stage_args(network={**NETWORKS[network], "init_args": {**NETWORKS[network]["init_args"], "pretrained": str(ckpt)}},
                                             optimizer="AdamW", lr=6e-5)
    intra["trainer"].update(max_steps=2, val_check_interval=2)
    intra["data"] = {"class_path": "intrada_pl.data.datamodules.SplitDataModule",
                     "init_args": {"ranking_dir": str(rank_dir / "ranking"), "root": str(toy_root / "Cityscapes"), "size": [64, 32],
                                   "val_size": [64, 32], "batch_size": 2, "num_workers": 0}}
    main(["fit", "--config", write_yaml(tmp_path / "intra.yaml", intra)])
    assert torch.load(tmp_path / "intra" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2

    calib = fit_config(toy_root, tmp_path / "calib", stage="intrada_pl.stages.calibration.CalibrationModule")
    calib["model"]["init_args"] = stage_args(init_ckpt=str(ckpt), augmentations=["randaugment"], hidden_dim=16)
    calib["trainer"].update(max_steps=2, val_check_interval=2)
    main(["fit", "--config", write_yaml(tmp_path / "calib.yaml", calib)])
    calibrated = tmp_path / "calib" / "checkpoints" / "last.ckpt"

    out = tmp_path / "test"
    test_yaml = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    main(["test", "--config", test_yaml, "--ckpt", str(calibrated), "--calibration", "none", "--calibration", "instcal_u",
          "--calibration", "bn_adapt", "--output", str(out)])
    results = json.loads((out / "metrics.json").read_text())["results"]["cityscapes"]
    assert set(results) == {"none", "instcal_u", "bn_adapt"} and all(0 <= r["mIoU"] <= 100 for r in results.values())


MIT_CONFIGS = {"source_only_gta5": "fit", "inter_gta5": "fit", "minent_gta5": "fit", "inter_synthia": "fit",
               "intra_gta5": "fit", "calib_gta5": "fit", "rank_gta5": "predict"}


@pytest.mark.parametrize("name", list(MIT_CONFIGS))
def test_shipped_mit_b5_configs_follow_the_mit_recipe(name, capsys, monkeypatch):
    """The MiT recipe (AdamW 6e-5, weight decay 0.01, 1500 warm-up iterations from 1e-6 then poly 1.0,
    512x512 crops, batch 2, 40k iterations) on MiT-B5 with the DAFormer head, as --print_config shows."""
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit):
        main([MIT_CONFIGS[name], "--config", f"configs/mit_b5/{name}.yaml", "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    if name == "calib_gta5":
        assert model["init_ckpt"].startswith("runs/mit_b5/") and data["crop_size"] == [512, 512]
        return
    assert model["segmenter"]["class_path"].endswith("SegFormer")
    assert {k: model["segmenter"]["init_args"][k] for k in ("encoder", "head")} == {"encoder": "mit_b5", "head": "daformer"}
    if name == "rank_gta5":
        return
    assert model["optimizer"]["class_path"].endswith("AdamW")
    assert model["optimizer"]["init_args"] == {"lr": 6e-5, "betas": [0.9, 0.999], "weight_decay": 0.01, "eps": 1e-8}
    assert model["lr_scheduler"]["init_args"] == {"total_steps": 40000, "power": 1.0, "warmup_steps": 1500, "warmup_factor": 1e-6}
    assert config["trainer"]["max_steps"] == 40000 and data["crop_size"] == [512, 512] and data["batch_size"] == 2


def test_shipped_mit_b5_pipeline_plans(monkeypatch):
    from intrada_pl.pipeline import Pipeline

    monkeypatch.chdir(REPO)
    steps = Pipeline.from_yaml("configs/mit_b5/pipeline_gta5.yaml").plan()
    assert [s.stage.name for s in steps] == ["inter", "rank", "intra"]
    assert all("mit_b5" in s.stage.config for s in steps)


def test_adversarial_stage_on_mit_in_bf16_with_activation_checkpointing(toy_root, tmp_path):
    """bf16-mixed and activation checkpointing on MiT as on DeepLabV2: finite losses, the run completes."""
    network = {"class_path": "intrada_pl.models.SegFormer",
               "init_args": {"encoder": "mit_b0", "head": "segformer", "activation_checkpointing": True}}
    config = fit_config(toy_root, tmp_path, stage=INTER)
    config["model"]["init_args"] = stage_args(network=network, optimizer="AdamW", lr=6e-5)
    config["trainer"].update(max_steps=2, val_check_interval=2, precision="bf16-mixed")
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.system
def test_adversarial_stage_on_mit_under_ddp_keeps_ranks_identical(toy_root, tmp_path):
    verdict_path = tmp_path / "verdict.json"
    config = fit_config(toy_root, tmp_path, stage=INTER)
    config["model"]["init_args"] = stage_args(network=NETWORKS["mit_b0"], optimizer="AdamW", lr=6e-5)
    config["trainer"].update(devices=2, strategy="ddp", max_steps=2, val_check_interval=2, num_sanity_val_steps=0)
    config["trainer"]["callbacks"].append({"class_path": "probes.DDPProbe", "init_args": {"out": str(verdict_path)}})
    config["data"]["init_args"]["batch_size"] = 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    result = subprocess.run([sys.executable, "-m", "intrada_pl.cli", "fit", "--config", write_yaml(tmp_path / "fit.yaml", config)],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = json.loads(verdict_path.read_text())
    assert verdict["world_size"] == 2 and verdict["generator"] and verdict["discriminators"]


def test_channel_calibration_learns_strengths_on_mit_and_the_checkpoint_rebuilds_it(source_only, toy_root, tmp_path):
    """chancal_u on a SegFormer: source moments collected before the first step, strengths trained,
    the checkpoint rebuilt by the factory with its sites, moments and strengths."""
    from intrada_pl.models.channel_calibration import calibration_sites, sites_without_source

    network, ckpt = source_only
    calib = fit_config(toy_root, tmp_path, stage="intrada_pl.stages.calibration.CalibrationModule")
    calib["model"]["init_args"] = stage_args(init_ckpt=str(ckpt), calibration="chancal_u", augmentations=["randaugment"], source_images=4)
    calib["trainer"].update(max_steps=2, val_check_interval=2)
    main(["fit", "--config", write_yaml(tmp_path / "calib.yaml", calib)])
    model, info = load_segmenter(tmp_path / "checkpoints" / "last.ckpt")
    sites = calibration_sites(model)
    assert info.calibration == "chancal_u" and not sites_without_source(model)
    assert any(name.endswith("chancal_out") for name in sites)  # after the encoder's LayerNorms
    strengths = [p for name, p in model.named_parameters() if "chancal" in name]
    assert strengths and any(not torch.allclose(p, torch.full_like(p, 0.1)) for p in strengths)  # trained away from the init


def test_channel_calibration_methods_at_test_time(source_only, toy_root, tmp_path):
    """intrada test --method chancal_u / chancal_manual@M / test_stats / tent_ln on a chancal_u
    checkpoint, beside none and bn_adapt; chancal_manual@0 is exactly none."""
    network, ckpt = source_only
    calib = fit_config(toy_root, tmp_path / "calib", stage="intrada_pl.stages.calibration.CalibrationModule")
    calib["model"]["init_args"] = stage_args(init_ckpt=str(ckpt), calibration="chancal_u", augmentations=["randaugment"], source_images=4)
    calib["trainer"].update(max_steps=2, val_check_interval=2)
    main(["fit", "--config", write_yaml(tmp_path / "calib.yaml", calib)])
    methods = ["none", "chancal_u", "chancal_manual@0", "chancal_manual@0.5", "test_stats", "tent_ln", "bn_adapt"]
    out = tmp_path / "test"
    main(["test", "--config", write_yaml(tmp_path / "test.yaml", eval_config(toy_root)), "--ckpt", str(tmp_path / "calib" / "checkpoints" / "last.ckpt"),
          *(arg for m in methods for arg in ("--method", m)), "--output", str(out)])
    results = json.loads((out / "metrics.json").read_text())["results"]["cityscapes"]
    assert list(results) == methods and all(0 <= r["mIoU"] <= 100 for r in results.values())
    assert results["chancal_manual@0"]["IoU"] == results["none"]["IoU"] and results["chancal_manual@0"]["ECE"] == results["none"]["ECE"]

    # calibrate-layers on the network's own groups (a channel method: every group, not only those with BatchNorm)
    layers = tmp_path / "layers"
    main(["calibrate-layers", "--config", write_yaml(tmp_path / "test.yaml", eval_config(toy_root)),
          "--ckpt", str(tmp_path / "calib" / "checkpoints" / "last.ckpt"), "--method", "chancal_manual@0.5", "--output", str(layers)])
    study = json.loads((layers / "layers.json").read_text())["cityscapes"]
    assert list(study["alone"]) == list(load_segmenter(ckpt)[0].layer_groups())


def test_channel_methods_need_a_channel_calibration_checkpoint(source_only, toy_root, tmp_path):
    network, ckpt = source_only
    with pytest.raises(ValueError, match="test_stats needs a checkpoint calibrated with chancal_u"):
        main(["test", "--config", write_yaml(tmp_path / "test.yaml", eval_config(toy_root)), "--ckpt", str(ckpt), "--method", "test_stats"])
