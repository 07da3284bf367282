"""One ADVENT iteration through Lightning vs a bare PyTorch loop in the official order: seconds
per iteration and peak memory, side by side.

The bare loop is the official ``train_advent`` body (REFERENCE A3) on our modules: source forward,
its loss backward (the source graph is freed), target forward, adversarial loss backward through
frozen discriminators, discriminator losses backward, then the optimisers and the poly schedule
step. Both paths use the same weights, sizes, in-memory batches, optimisers and finiteness checks.
Each side runs in a fresh process (peak RSS is a per-process high-water mark; on a GPU,
``max_memory_allocated``), and processes alternate round by round so machine noise hits both.
The Lightning time per iteration is the interval between consecutive ``on_train_batch_start``
calls: loop, hooks, logging and data fetching included, Trainer start-up excluded.

    python bench/train_step.py                                                  # CPU default: ResNet-50, small
    python bench/train_step.py --depth 101 --source 720 1280 --target 512 1024  # the real sizes
    python bench/train_step.py --depth 101 --source 720 1280 --target 512 1024 --precision bf16-mixed   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench_data import FixedBatches, IterationClock  # noqa: E402
from intrada_pl.losses import adversarial_loss, segmentation_loss, self_information  # noqa: E402
from intrada_pl.models import DeepLabV2  # noqa: E402
from intrada_pl.stages.inter import SOURCE, TARGET, InterDomainModule  # noqa: E402


def lightning_iterations(module: InterDomainModule, loaders: dict, args) -> list[float]:
    clock = IterationClock()
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=args.iterations + 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loaders)
    return clock.intervals()


def finite(terms: list[torch.Tensor]) -> None:
    assert torch.stack([t.detach().float() for t in terms]).isfinite().all()


def bare_iterations(module: InterDomainModule, loaders: dict, args) -> list[float]:
    """The official loop's body, in its order."""
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    module = module.to(device).train()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    d_params = [p for d in module.discriminators() for p in d.parameters()]
    times, start = [], None
    for i, (source, target) in enumerate(zip(loaders["source"], loaders["target"])):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if i > 1:
            times.append(now - start)
        start = now
        if i == args.iterations + 1:
            break
        source = {k: v.to(device) for k, v in source.items() if torch.is_tensor(v)}
        target = {k: v.to(device) for k, v in target.items() if torch.is_tensor(v)}
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for p in d_params:
                p.requires_grad_(False)
            source_logits = module.upsampled_levels(*module.model(source["image"]), source["image"])
            seg = [segmentation_loss(source_logits[level], source["label"]) for level in ("main", "aux")]
            finite(seg)
            (seg[0] + 0.1 * seg[1]).backward()
            target_logits = module.upsampled_levels(*module.model(target["image"]), target["image"])
            adv = [adversarial_loss(module.discriminator(level)(self_information(target_logits[level])), SOURCE) for level in ("main", "aux")]
            finite(adv)
            (0.001 * adv[0] + 0.0002 * adv[1]).backward()
            for p in d_params:
                p.requires_grad_(True)
            for logits, domain in ((source_logits, SOURCE), (target_logits, TARGET)):
                for level in ("aux", "main"):
                    loss = adversarial_loss(module.discriminator(level)(self_information(logits[level].detach())), domain) / 2
                    finite([loss])
                    loss.backward()
        optimizer.step()
        scheduler.step()
    return times


def worker(args) -> None:
    """One side in this process: print its iteration times and peak memory as JSON."""
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(args.threads)
    module = InterDomainModule(DeepLabV2(depth=args.depth))
    n = args.iterations + 2
    loaders = {
        "source": DataLoader(FixedBatches(n, *args.source, seed=0), batch_size=1),
        "target": DataLoader(FixedBatches(n, *args.target, seed=1), batch_size=1),
    }
    times = (lightning_iterations if args.worker == "lightning" else bare_iterations)(module, loaders, args)
    peak = torch.cuda.max_memory_allocated() if args.accelerator == "gpu" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"times": times, "peak_bytes": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=50, choices=(18, 50, 101))
    parser.add_argument("--source", type=int, nargs=2, default=(144, 256), metavar=("H", "W"), help="source input size")
    parser.add_argument("--target", type=int, nargs=2, default=(128, 256), metavar=("H", "W"), help="target input size")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations per round (plus one warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--worker", choices=("lightning", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    results: dict[str, dict] = {"lightning": {"times": [], "peaks": []}, "bare": {"times": [], "peaks": []}}
    for _ in range(args.rounds):
        for side in results:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", side], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            results[side]["times"] += result["times"]
            results[side]["peaks"].append(result["peak_bytes"])
    seconds = {side: statistics.median(r["times"]) for side, r in results.items()}
    peak = {side: max(r["peaks"]) for side, r in results.items()}
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"CPU ({args.threads} threads)"
    memory = "max_memory_allocated" if args.accelerator == "gpu" else "peak RSS"
    print(f"device: {device}; DeepLabV2-ResNet-{args.depth}, source {args.source[0]}x{args.source[1]} + target "
          f"{args.target[0]}x{args.target[1]}, batch 1, {args.precision}")
    for side in results:
        print(f"{side:9s}: {seconds[side]:.3f} s/iteration (median of {len(results[side]['times'])}), {memory} {peak[side] / 2**30:.2f} GiB")
    print(f"ratio lightning/bare: time {seconds['lightning'] / seconds['bare']:.3f}, memory {peak['lightning'] / peak['bare']:.3f}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"device": device, "depth": args.depth, "precision": args.precision, "source": list(args.source),
                       "target": list(args.target), "seconds_per_iteration": seconds, "peak_gib": {s: v / 2**30 for s, v in peak.items()}},
                      file, indent=2)


if __name__ == "__main__":
    main()
