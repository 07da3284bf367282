"""Seconds per ADVENT training step: through Lightning vs a bare PyTorch loop, side by side.

Both paths run the same InterDomainModule computation (same weights, sizes, batch, optimisers:
SGD for the generator, Adam for D_aux and D_main, poly schedules, the finiteness check) on the
same in-memory batches; rounds of each are alternated in one process so machine noise hits both.
The Lightning time per step is the interval between consecutive ``on_train_batch_start`` calls,
so it includes the loop, hooks, logging and data fetching but not Trainer start-up.

    python bench/train_step.py                       # CPU default: ResNet-50, 128x256
    python bench/train_step.py --depth 101 --height 512 --width 1024 --precision bf16-mixed   # GPU
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from intrada_pl.stages.inter import InterDomainModule  # noqa: E402


class FixedBatches(Dataset):
    """``n`` random source/target items held in memory (no I/O in either path)."""

    def __init__(self, n: int, height: int, width: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, height, width), generator=gen, dtype=torch.uint8)
        self.labels = torch.randint(0, 19, (n, height, width), generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": str(i)}


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.on_train_batch_start(trainer, pl_module, None, -1)


def lightning_round(module: InterDomainModule, data: FixedBatches, steps: int, args) -> list[float]:
    clock = StepClock()
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_steps=3 * steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock],
    )
    loaders = {"source": DataLoader(data, batch_size=args.batch), "target": DataLoader(data, batch_size=args.batch)}
    trainer.fit(module, train_dataloaders=loaders)
    return [b - a for a, b in zip(clock.starts[1:], clock.starts[2:])]  # drop the first (warm-up) step


def bare_round(module: InterDomainModule, optimizers, schedulers, data: FixedBatches, steps: int, args) -> list[float]:
    """The same step in plain PyTorch: G update through frozen Ds, then D updates, then schedules."""
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    opt_g, opt_ds = optimizers[0], optimizers[1:]
    d_params = [p for name, p in module.named_parameters() if name.startswith("d_")]
    loader = DataLoader(data, batch_size=args.batch)
    times, start = [], None
    for i, item in zip(range(steps + 1), loader):
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if start is not None and i > 1:
            times.append(now - start)
        start = now
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in item.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for p in d_params:
                p.requires_grad_(False)
            opt_g.zero_grad()
            terms, source_logits, target_logits = module.generator_losses(batch, batch)
            assert torch.stack([t.detach().float() for t in terms.values()]).isfinite().all()
            module.generator_objective(terms).backward()
            opt_g.step()
            for p in d_params:
                p.requires_grad_(True)
            for opt in opt_ds:
                opt.zero_grad()
            d_terms = module.discriminator_losses(source_logits, target_logits)
            assert torch.stack([t.detach().float() for k, t in d_terms.items() if "loss" in k]).isfinite().all()
            sum(d_terms[f"train/loss_d_{level}"] for level in module.levels).backward()
            for opt in opt_ds:
                opt.step()
            for scheduler in schedulers:
                scheduler.step()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=50, choices=(18, 50, 101))
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per round (plus one warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--accelerator", default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 1 avoids OpenMP spin collapse on a shared 2-core box")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(args.threads)

    template = InterDomainModule(depth=args.depth)
    data = FixedBatches((args.steps + 2) * args.batch, args.height, args.width)
    lightning_times, bare_times = [], []
    for _ in range(args.rounds):
        lightning_times += lightning_round(copy.deepcopy(template), data, args.steps + 1, args)
        torch.set_num_threads(args.threads)
        module = copy.deepcopy(template).to("cuda" if args.accelerator == "gpu" else "cpu").train()
        config = module.configure_optimizers()
        optimizers, schedulers = config[0], [s["scheduler"] for s in config[1]]
        bare_times += bare_round(module, optimizers, schedulers, data, args.steps + 1, args)

    lightning_s, bare_s = statistics.median(lightning_times), statistics.median(bare_times)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; DeepLabV2-ResNet-{args.depth}, {args.height}x{args.width}, batch {args.batch}, {args.precision}")
    print(f"lightning: {lightning_s:.4f} s/step (median of {len(lightning_times)})")
    print(f"bare loop: {bare_s:.4f} s/step (median of {len(bare_times)})")
    print(f"ratio lightning/bare: {lightning_s / bare_s:.3f}")


if __name__ == "__main__":
    main()
