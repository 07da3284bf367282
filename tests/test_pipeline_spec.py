"""A pipeline YAML is checked when the pipeline is planned, before any stage runs: one line naming
what is wrong. Dataset roots are named once (``roots:``) and set on the command line (``--root``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from helpers import write_yaml
from intrada_pl.pipeline import Pipeline, PipelineError, parse_roots

REPO = Path(__file__).resolve().parents[1]


def spec(tmp_path: Path, *stages: dict, test_stages=("a",), **extra) -> dict:
    config = write_yaml(tmp_path / "stage.yaml", {"trainer": {"max_steps": 4}})
    defaults = {"command": "fit", "config": config}
    return {
        "run_dir": str(tmp_path / "runs"),
        **extra,
        "stages": [{**defaults, **stage} for stage in stages] or [{**defaults, "name": "a"}],
        "test": {"config": write_yaml(tmp_path / "test.yaml", {"data": {"root": "x"}}), "stages": list(test_stages)},
    }


def refused(tmp_path: Path, content, roots=None) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    with pytest.raises(PipelineError) as error:
        Pipeline.from_yaml(path, roots=roots)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path))
    return message[len(str(path)):]


@pytest.mark.parametrize("stages,expected", [
    ([{"name": "a"}, {"name": "a"}], r": stage 'a' is named twice: stage names are folder names, one per stage"),
    ([{"name": "../../x"}], r": stage '../../x': a stage name is a folder name in run_dir: letters, digits, _ and -, not 'roots'"),
    ([{"name": "roots"}], r": stage 'roots': a stage name is a folder name .*"),
    ([{"name": "a", "command": "train"}], r": stage 'a': command must be fit or predict, got 'train'"),
    ([{"name": "a", "links": {"x.y": "a.checkpoint"}}], r": stage 'a': a does not name an earlier stage"),
    ([{"name": "a"}, {"name": "b", "links": {"x.y": "a.weights"}}], r": stage 'b': unknown output 'weights' in link 'a.weights'; known: checkpoint, ranking"),
    ([{"name": "a"}, {"name": "b", "links": {"x.y": "a.ranking"}}], r": stage 'b': link 'a.ranking': only a predict stage writes a ranking, a is a fit stage"),
    ([{"name": "a", "command": "predict"}, {"name": "b", "checkpoint_from": "a"}], r": stage 'b': checkpoint_from: only a fit stage writes a checkpoint, a is a predict stage"),
    ([{"name": "a", "links": {"x.y": "roots.gta5"}}], r": stage 'a': link 'roots.gta5': no such root; roots: \(none\)"),
    ([{"name": "a", "typo": 1}], r": stage 'a': unknown key typo; a stage has name, command, config, links, overrides, checkpoint_from"),
    ([{"command": "fit"}], r": stages\[0\] needs a name"),
])
def test_a_bad_stage_is_refused_in_one_line_before_anything_runs(tmp_path, stages, expected):
    """Before: duplicate names shared a folder, ../../x wrote outside run_dir, an unknown command
    failed only when its turn came (after earlier stages trained), others were tracebacks."""
    import re

    assert re.fullmatch(expected, refused(tmp_path, spec(tmp_path, *stages)))


@pytest.mark.parametrize("test_stages,expected", [
    (["b"], r": test: stage 'b' is no stage of this pipeline"),
    (["p"], r": test: stage 'p' is a predict stage: only fit stages have a checkpoint to test"),
    ([{"stage": "a", "method": "x"}], r": test: \{'method': 'x', 'stage': 'a'\}: an evaluation is a stage, or stage: and calibration:"),
])
def test_an_unknown_test_stage_is_refused_before_anything_runs(tmp_path, test_stages, expected):
    import re

    content = spec(tmp_path, {"name": "a"}, {"name": "p", "command": "predict", "checkpoint_from": "a"}, test_stages=test_stages)
    assert re.fullmatch(expected, refused(tmp_path, content))


@pytest.mark.parametrize("content,expected", [
    ("", " is empty: a pipeline needs run_dir, stages and test"),
    ("- a\n", " must be a mapping with run_dir, stages and test, got a list"),
    ("run_dir: x\n", ": run_dir, stages and test are needed, stages, test missing"),
    ("run_dir: x\nstages: [{name: a, command: fit, config: a.yaml}]\ntest: a\n",
     ": test must be a mapping with config (an intrada test config) and stages (a list), got 'a'"),
])
def test_a_pipeline_yaml_of_the_wrong_shape_is_one_error(tmp_path, content, expected):
    assert refused(tmp_path, content) == expected


def test_a_missing_stage_config_is_refused_when_planned(tmp_path):
    content = spec(tmp_path, {"name": "a"}, {"name": "b", "config": str(tmp_path / "nowhere.yaml")})
    p = Pipeline.from_yaml(write_yaml(tmp_path / "pipeline.yaml", content))
    with pytest.raises(PipelineError, match=rf"^stage 'b': its config {tmp_path / 'nowhere.yaml'} does not exist$"):
        p.plan()


# --- dataset roots ------------------------------------------------------------------------------


def test_roots_fill_the_links_of_stages_and_test_and_the_command_line_wins(tmp_path):
    content = spec(tmp_path, {"name": "a", "links": {"data.init_args.source_root": "roots.gta5"}},
                   roots={"gta5": "data/GTA5", "cityscapes": "data/Cityscapes"})
    content["test"]["links"] = {"data.root": "roots.cityscapes"}
    path = write_yaml(tmp_path / "pipeline.yaml", content)

    p = Pipeline.from_yaml(path)
    assert p.resolve(p.stages[0])["data"]["init_args"]["source_root"] == "data/GTA5"
    assert p.stages[0].inputs == set()  # a root is no stage
    p = Pipeline.from_yaml(path, roots=parse_roots(["gta5=/big/GTA5", "cityscapes=/big/CS=1"]))
    assert p.resolve(p.stages[0])["data"]["init_args"]["source_root"] == "/big/GTA5"
    assert p.resolved_test_config()["data"]["root"] == "/big/CS=1"

    assert refused(tmp_path, content, roots={"gta": "/x"}) == ": --root gta: no such root; roots: cityscapes, gta5"
    for bad in ("gta5", "=/x", "gta5="):
        with pytest.raises(PipelineError, match=rf"^--root takes NAME=DIR, such as gta5=/data/GTA5, got '{bad}'$"):
            parse_roots([bad])


def test_the_shipped_pipeline_refuses_missing_dataset_folders_before_anything_runs(tmp_path, monkeypatch):
    """Before: ``make pipeline`` as shipped started the first stage, which failed on its data
    (after opening a W&B run), and the pipeline's error followed it."""
    monkeypatch.chdir(REPO)  # the shipped YAML names its stage configs from the repository root
    gta5, cityscapes = tmp_path / "GTA5", tmp_path / "Cityscapes"
    for roots, expected in [
        ({"gta5": str(gta5), "cityscapes": str(cityscapes)},
         f"gta5: {gta5} (read by inter); cityscapes: {cityscapes} (read by inter, rank, intra, test); set them under roots: "
         "in the pipeline YAML or with --root gta5=DIR --root cityscapes=DIR"),
        ({"gta5": str(gta5), "cityscapes": str(tmp_path)},
         f"gta5: {gta5} (read by inter); set them under roots: in the pipeline YAML or with --root gta5=DIR"),
    ]:
        p = Pipeline.from_yaml("configs/pipeline_gta5.yaml", roots=roots)
        p.run_dir = tmp_path / "runs"
        p.intrada = [sys.executable, "-c", "raise SystemExit('a stage ran')"]
        with pytest.raises(PipelineError) as error:
            p.run()
        assert str(error.value) == "dataset roots that are no folders: " + expected
        assert sorted(path.name for path in p.run_dir.iterdir()) == ["pipeline.lock"]


def test_shipped_pipelines_name_their_dataset_roots_once(monkeypatch):
    monkeypatch.chdir(REPO)
    p = Pipeline.from_yaml("configs/pipeline_gta5.yaml")
    assert p.roots == {"gta5": "data/GTA5", "cityscapes": "data/Cityscapes"}
    links = {key: link for stage in p.stages for key, link in stage.links.items() if link.startswith("roots.")}
    assert set(links.values()) == {"roots.gta5", "roots.cityscapes"}
    assert p.resolved_test_config()["data"]["root"] == "data/Cityscapes"


def test_pipeline_refuses_links_to_later_stages(tmp_path):
    spec = {
        "run_dir": str(tmp_path),
        "stages": [{"name": "a", "command": "fit", "config": "x.yaml", "links": {"model.init_args.segmenter.init_args.pretrained": "b.checkpoint"}}],
        "test": {"config": str(REPO / "configs" / "test_cityscapes.yaml"), "stages": ["a"]},
    }
    with pytest.raises(ValueError, match="earlier stage"):
        Pipeline.from_yaml(write_yaml(tmp_path / "p.yaml", spec))
