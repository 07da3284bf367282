"""Callbacks that record what happens inside a fit, for assertions (also used by DDP subprocesses),
and one that signals its own process at a given batch."""

from __future__ import annotations

import json
import os
import signal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten().cpu() for t in tensors])


class StepRecorder(Callback):
    """Snapshots generator and discriminator weights before every optimiser step, the logged
    metrics after every batch, and the learning rate of every named parameter group at the end."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.metrics: list[dict[str, float]] = []
        self.lrs: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        index = [o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers].index(
            getattr(optimizer, "optimizer", optimizer)
        )
        d_params = [p for name, p in pl_module.named_parameters() if name.startswith("d_")]
        self.snapshots.append((index, flat(pl_module.model.parameters()), flat(d_params)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    def on_train_end(self, trainer, pl_module) -> None:
        self.lrs = {group["name"]: group["lr"] for opt in trainer.optimizers for group in opt.param_groups}


class DDPProbe(Callback):
    """Gathers every rank's weights, BN buffers and seen sample names; rank 0 writes a JSON verdict."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.names: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.names += list(batch["source"]["name"]) + list(batch["target"]["name"])

    def on_train_end(self, trainer, pl_module) -> None:
        generator = flat(pl_module.model.parameters())
        discriminators = flat(p for n, p in pl_module.named_parameters() if n.startswith("d_"))
        bn = flat(b for n, b in pl_module.model.named_buffers() if "running" in n)
        local = {"generator": generator, "discriminators": discriminators, "bn": bn}
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {"tensors": local, "names": self.names, "rank": trainer.global_rank})
        if trainer.is_global_zero:
            first, second = gathered
            verdict = {
                key: bool(torch.equal(first["tensors"][key], second["tensors"][key])) for key in local
            }
            verdict["bn_changed"] = bool(first["tensors"]["bn"].abs().sum() > 0)
            verdict["names"] = [first["names"], second["names"]]
            verdict["world_size"] = trainer.world_size
            with open(self.out, "w") as f:
                json.dump(verdict, f)


class SignalAt(Callback):
    """Sends signals to its own process (``group``: to its whole process group, data loader workers
    included, as a terminal's Ctrl+C or a scheduler does) at the end of given batches: ``signals``
    maps a fit's iteration reached (``global_step``), or the number of test batches done, to a
    signal name. A signal lands at a known point, without sleeps."""

    def __init__(self, signals: dict[int, str], group: bool = False) -> None:
        self.signals = signals
        self.group = group

    def _send(self, count: int) -> None:
        name = self.signals.get(count)
        if name is not None:
            signum = getattr(signal, name)
            if self.group:
                os.killpg(os.getpgrp(), signum)
            else:
                os.kill(os.getpid(), signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._send(trainer.global_step)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._send(batch_idx + 1)
