"""The commands that need no Lightning: ``toy-data``, ``inspect`` and ``pipeline`` (the pipeline runs
each stage in a child ``intrada`` process)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from intrada_pl.data.inspect import main as inspect
from intrada_pl.data.toy import ToySpec, generate
from intrada_pl.errors import ConfigValueError
from intrada_pl.pipeline import Pipeline, parse_roots, parse_seeds
from intrada_pl.ranking.toy_check import ranking_recall


def toy_data_main(args: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="intrada toy-data", description="Write the generated two-domain demo data.")
    parser.add_argument("out", help="output folder (gets GTA5/, Cityscapes/ and toy_meta.json)")
    defaults = ToySpec()
    parser.add_argument("--source-images", type=int, default=defaults.source_images)
    parser.add_argument("--target-train", type=int, default=defaults.target_train)
    parser.add_argument("--target-val", type=int, default=defaults.target_val)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--check-ranking", metavar="RANKING_DIR", default=None,
        help="write nothing; report how many of OUT's generated hard images this entropy ranking put in its hard split, and its AUROC",
    )
    ns = parser.parse_args(args)
    if ns.check_ranking:
        r = ranking_recall(ns.out, ns.check_ranking)
        auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
        print(
            f"entropy ranking vs the toy data's ground truth: {r['found']} of the {r['generated_hard']} rainy/night "
            f"train images are among the {r['ranked_hard']} ranked hard (a random split would find {r['chance']:.1f}); "
            f"AUROC of the score {auroc} (random 0.5)"
        )
        return
    for flag in ("source_images", "target_train", "target_val"):
        if getattr(ns, flag) < 1:
            raise ConfigValueError(f"--{flag.replace('_', '-')} must be at least 1 (the demo trains on both domains and "
                                   f"validates on the target), got {getattr(ns, flag)}")
    spec = ToySpec(source_images=ns.source_images, target_train=ns.target_train, target_val=ns.target_val, seed=ns.seed)
    summary = generate(ns.out, spec)
    print(f"source (GTA5 layout):       {summary['source_root']} ({spec.source_images} images)")
    print(f"target (Cityscapes layout): {summary['target_root']} ({spec.target_train} train, {spec.target_val} val)")
    print(f"summary: {os.path.join(ns.out, 'toy_meta.json')}")


def inspect_main(args: Sequence[str]) -> None:
    """``intrada inspect``: exit status 1 when the report lists problems (scripts gate on it)."""
    if inspect(args, prog="intrada inspect"):
        raise SystemExit(1)


def pipeline_main(args: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="intrada pipeline", description="Run a whole method, stage by stage (resumable).")
    parser.add_argument("--config", required=True, help="a pipeline YAML, e.g. configs/pipeline_gta5.yaml")
    parser.add_argument(
        "--seeds", default=None,
        help="comma-separated seeds, e.g. 0,1,2 (overrides the YAML's seeds): every stage once per seed in "
             "RUN_DIR/seed_S/, summary mean +- std over seeds",
    )
    parser.add_argument("--root", action="append", default=[], metavar="NAME=DIR",
                        help="set a dataset folder that the pipeline YAML names under roots:, e.g. gta5=/data/GTA5 (repeatable)")
    ns = parser.parse_args(args)
    pipeline = Pipeline.from_yaml(ns.config, roots=parse_roots(ns.root))
    if ns.seeds is not None:
        pipeline.seeds = parse_seeds(ns.seeds)
    pipeline.run()
