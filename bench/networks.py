"""One ADVENT iteration (generator + discriminator step through Lightning) on MiT-B5 with the DAFormer
head beside DeepLabv2-ResNet-101, side by side in one run: seconds per iteration and peak memory,
and their ratios.

Each network runs in a fresh process (peak memory is a per-process high-water mark: on a GPU
``torch.cuda.max_memory_allocated``, on a CPU peak RSS), processes alternate round by round so
machine noise hits both. Source and target batches are random, held in memory (no I/O); weights
are random (speed does not depend on them). DeepLabV2 steps with the reference's SGD replay,
SegFormer with AdamW, as their configs do; the discriminators with 0.4.1's Adam.

    python bench/networks.py                                          # CPU default: small sizes
    python bench/networks.py --size 512 512 --batch-size 2 --precision bf16-mixed   # the MiT recipe, GPU
    python bench/networks.py ... --json out.json                     # also write the numbers
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench_data import FixedBatches, IterationClock  # noqa: E402
from intrada_pl.models import DeepLabV2, SegFormer  # noqa: E402
from intrada_pl.optim import AdamW, ReferenceSGD  # noqa: E402
from intrada_pl.stages.inter import InterDomainModule  # noqa: E402

NETWORKS = ("deeplabv2_r101", "mit_b5")


def build(network: str, small: bool, checkpointing: bool) -> InterDomainModule:
    """The ADVENT stage on ``network`` (``small``: ResNet-18 / MiT-B0, for a CPU smoke run)."""
    if network == "deeplabv2_r101":
        return InterDomainModule(DeepLabV2(depth=18 if small else 101), optimizer=ReferenceSGD())
    segmenter = SegFormer(encoder="mit_b0" if small else "mit_b5", head="daformer", activation_checkpointing=checkpointing)
    return InterDomainModule(segmenter, optimizer=AdamW(), bn="trainable")


def worker(args: argparse.Namespace) -> None:
    """One network in this process: print its iteration times and peak memory as JSON."""
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(args.threads)
    module = build(args.worker, args.small, args.activation_checkpointing)
    n = (args.iterations + 2) * args.batch_size
    loaders = {
        "source": DataLoader(FixedBatches(n, *args.size, seed=0), batch_size=args.batch_size),
        "target": DataLoader(FixedBatches(n, *args.size, seed=1), batch_size=args.batch_size),
    }
    clock = IterationClock()
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.iterations + 1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[clock])
    if args.accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, train_dataloaders=loaders)
    peak = torch.cuda.max_memory_allocated() if args.accelerator == "gpu" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": clock.intervals(), "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="source and target crops")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per round (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="ResNet-18 and MiT-B0 instead of ResNet-101 and MiT-B5")
    parser.add_argument("--activation-checkpointing", action="store_true", help="MiT: recompute encoder activations")
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--worker", choices=NETWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results = {network: {"times": [], "peaks": []} for network in NETWORKS}
    for _ in range(args.rounds):
        for network in NETWORKS:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", network], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{network} failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[network]["times"] += result["times"]
            results[network]["peaks"].append(result["peak_bytes"])
    summary = {
        network: {"seconds_per_iteration": statistics.median(r["times"]), "peak_gib": max(r["peaks"]) / 2**30, "iterations": len(r["times"])}
        for network, r in results.items()
    }
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"CPU ({args.threads} threads)"
    memory = "max_memory_allocated" if args.accelerator == "gpu" else "peak RSS"
    names = {"deeplabv2_r101": "DeepLabV2-ResNet-18" if args.small else "DeepLabV2-ResNet-101",
             "mit_b5": "MiT-B0 + DAFormer head" if args.small else "MiT-B5 + DAFormer head"}
    print(f"device: {device}; ADVENT iteration, source + target {args.size[0]}x{args.size[1]}, batch {args.batch_size}, {args.precision}")
    for network, row in summary.items():
        print(f"{names[network]:<24}: {row['seconds_per_iteration']:.3f} s/iteration (median of {row['iterations']}), {memory} {row['peak_gib']:.2f} GiB")
    a, b = summary["mit_b5"], summary["deeplabv2_r101"]
    print(f"ratio MiT/DeepLabV2: time {a['seconds_per_iteration'] / b['seconds_per_iteration']:.2f}, memory {a['peak_gib'] / b['peak_gib']:.2f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"device": device, "precision": args.precision, "size": list(args.size), "batch_size": args.batch_size,
                       "networks": {names[n]: row for n, row in summary.items()}}, file, indent=2)


if __name__ == "__main__":
    main()
