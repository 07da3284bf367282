"""What the training benchmarks share: in-memory batches and a per-iteration clock."""

from __future__ import annotations

import time

import lightning as L
import torch
from torch.utils.data import Dataset


class FixedBatches(Dataset):
    """``n`` random items of one size held in memory (no I/O in either path)."""

    def __init__(self, n: int, height: int, width: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, height, width), generator=gen, dtype=torch.uint8)
        self.labels = torch.randint(0, 19, (n, height, width), generator=gen)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "name": str(i)}


class IterationClock(L.Callback):
    """The time between consecutive iterations' starts (loop, hooks, logging and data fetching included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.on_train_batch_start(trainer, pl_module, None, -1)

    def intervals(self) -> list[float]:
        """Seconds per iteration, the first (warm-up) iteration dropped."""
        return [b - a for a, b in zip(self.starts[1:], self.starts[2:])]
