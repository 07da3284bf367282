"""Entropy-ranking throughput: our RankingCallback path vs a loop shaped like the reference script.

Both rank the same generated Cityscapes-layout images with the same DeepLabv2 weights and also
produce every image's pseudo-label (PNG bytes), since both need them before the split is known.

* reference: ``entropy_rank/entropy.py``'s shape: batch 1, fp32, ``no_grad``, softmax moved to
  the host, entropy and argmax in numpy, one image at a time;
* ours: ``Trainer.predict`` with :class:`RankingCallback` (batched, ``inference_mode``, score and
  argmax on the device, manifests written at the end), in fp32 and in bf16 + channels_last
  (``--no-bf16`` skips it).

Also prints the largest score difference between ours (fp32) and the reference loop.

Each variant runs ``--repeats`` times, interleaved (the machine may be shared), after one warm-up
image; the best time counts. Prints images/s per variant and the ratios to the reference.
Weights are random: throughput does not depend on them.

    python bench/rank.py [--depth 50] [--size 512 256] [--images 12] [--batch-size 4] [--repeats 1] [--no-bf16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from intrada_pl.data.datamodules import TargetDataModule  # noqa: E402
from intrada_pl.data.ranking_manifest import encode_png, read_ranking  # noqa: E402
from intrada_pl.data.toy import ToySpec, generate  # noqa: E402
from intrada_pl.losses import upsample  # noqa: E402
from intrada_pl.models import DeepLabV2  # noqa: E402
from intrada_pl.ranking import RankingCallback  # noqa: E402
from intrada_pl.stages.segmentation import SegmentationModule  # noqa: E402


def reference_loop(module: SegmentationModule, loader: DataLoader) -> dict[str, tuple[float, bytes]]:
    """One image at a time, fp32, entropy and argmax in numpy (the reference's ranking loop)."""
    results = {}
    module.eval()
    with torch.no_grad():
        for batch in loader:
            images = batch["image"]
            logits = upsample(module.segment(images), tuple(images.shape[-2:]))
            prob = torch.softmax(logits, dim=1).cpu().numpy()[0]
            num_classes = prob.shape[0]
            score = float(np.mean(-prob * np.log2(prob + 1e-30)) / math.log2(num_classes))
            label = np.argmax(prob.transpose(1, 2, 0), axis=2).astype(np.uint8)
            results[batch["name"][0]] = (score, encode_png(label))
    return results


def ours(module: SegmentationModule, datamodule: TargetDataModule, precision: str, out: Path) -> dict[str, float]:
    """Rank through Trainer.predict + RankingCallback and return the scores it wrote."""
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[RankingCallback(output_dir=str(out))],
    )
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    return read_ranking(out / "ranking").scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50, choices=(18, 50, 101))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 256), metavar=("W", "H"), help="ranking resolution")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="also time ours with bf16-mixed + channels_last")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", ToySpec(source_images=0, target_train=args.images, target_val=0, target_size=tuple(args.size)))
        root = str(tmp / "data" / "Cityscapes")
        size = tuple(args.size)
        reference_data = TargetDataModule(root=root, split="train", size=size, with_labels=False, batch_size=1, num_workers=0)
        reference_data.setup("predict")
        reference_loader = reference_data.predict_dataloader()
        datamodule = TargetDataModule(root=root, split="train", size=size, with_labels=False, batch_size=args.batch_size, num_workers=0)

        fp32 = SegmentationModule(DeepLabV2(depth=args.depth))
        variants: dict[str, Callable[[], dict]] = {
            "reference (batch 1, fp32, numpy)": lambda: reference_loop(fp32, reference_loader),
            f"ours (batch {args.batch_size}, fp32)": lambda: ours(fp32, datamodule, "32-true", tmp / "fp32"),
        }
        if args.bf16:
            fast = SegmentationModule(DeepLabV2(depth=args.depth), channels_last=True)
            fast.load_state_dict(fp32.state_dict())
            variants[f"ours (batch {args.batch_size}, bf16 + channels_last)"] = lambda: ours(fast, datamodule, "bf16-mixed", tmp / "bf16")

        with torch.no_grad():  # warm-up on one image: allocator, oneDNN primitive caches
            fp32.eval().segment(next(iter(reference_loader))["image"])
        times = {name: math.inf for name in variants}
        results = {}
        for _ in range(args.repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                results[name] = run()
                times[name] = min(times[name], time.perf_counter() - start)

    reference_name, fp32_name = list(variants)[:2]
    reference_scores = {name: score for name, (score, _) in results[reference_name].items()}
    max_diff = max(abs(score - results[fp32_name][name]) for name, score in reference_scores.items())
    print(f"DeepLabv2-ResNet-{args.depth}, {args.images} images at {size[0]}x{size[1]}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")
    reference_rate = args.images / times[reference_name]
    for name, seconds in times.items():
        rate = args.images / seconds
        print(f"  {name:<45} {seconds:7.2f} s  {rate:6.2f} images/s  x{rate / reference_rate:.2f}")
    print(f"  max |score ours fp32 - reference| = {max_diff:.2e}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"depth": args.depth, "size": list(size), "images": args.images, "batch_size": args.batch_size,
                       "images_per_second": {name: args.images / seconds for name, seconds in times.items()},
                       "max_score_difference": max_diff}, file, indent=2)


if __name__ == "__main__":
    main()
