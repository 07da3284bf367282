"""AdaBN (Li et al. 2016): BatchNorm statistics re-estimated on the target domain's training images.

The standard baseline beside per-image BN-adapt: one pass over the target's (unlabelled) training
split with every BN in train mode and ``momentum=None``, so that PyTorch keeps the cumulative
average of the per-batch means and unbiased variances, no gradient, at the test resolution. The
images come from the data module (:meth:`~intrada_pl.data.datamodules.EvaluationDataModule.adabn_images`).
The result depends only on the checkpoint and the images, and a pass over Cityscapes train (2975
images) costs minutes, so it is cached in ``cache_dir`` (``adabn_<hash>.pt``), keyed by the
checkpoint's content hash, the target data settings, the image list and the batch size.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from intrada_pl.data.datamodules import TargetImages
from intrada_pl.io import atomic_path
from intrada_pl.tta.layers import restore_batchnorm

CACHE_VERSION = 1  # bump when the estimation changes, so old cache files are not reused
DEFAULT_CACHE = "runs/cache/adabn"
Statistics = Mapping[str, Mapping[str, Tensor]]  # BN layer name -> {"mean", "var"}


def estimate_statistics(model: nn.Module, images: Iterable[Tensor], device: torch.device | str = "cpu") -> dict[str, dict[str, Tensor]]:
    """Per BatchNorm layer name: the ``{"mean", "var"}`` (CPU) that a train-mode pass with
    ``momentum=None`` over ``images`` (batches) leaves, on a plain-BN copy of ``model``
    (calibrated layers restored), so ``model`` itself is untouched."""
    with torch.inference_mode(False), torch.no_grad():
        plain = copy.deepcopy(model)
        restore_batchnorm(plain)
        layers = {name: m for name, m in plain.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        if not layers:
            raise ValueError("AdaBN found no BatchNorm layer to re-estimate")
        for layer in layers.values():
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over batches
        plain.train()
        batches = 0
        for batch in images:
            plain(batch.to(device))
            batches += 1
        if not batches:
            raise ValueError("AdaBN got no target image to estimate statistics on")
        return {name: {"mean": m.running_mean.cpu().clone(), "var": m.running_var.cpu().clone()} for name, m in layers.items()}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (a checkpoint's identity: a rewrite changes it, a copy keeps it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def target_statistics(
    model: nn.Module,
    checkpoint: str | Path,
    images: TargetImages,
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE,
    recompute: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, Tensor]]:
    """AdaBN statistics of ``model`` (loaded from ``checkpoint``) on the target ``images``. Read
    from ``cache_dir`` when computed before (None: no cache); ``recompute`` computes them anyway
    and refreshes the cache."""
    key = _cache_key(checkpoint, images)
    path = Path(cache_dir) / f"adabn_{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]}.pt" if cache_dir else None
    where = f"{images.settings['dataset']} {images.settings['split']} ({len(images.names)} images)"
    if path is not None and path.is_file() and not recompute:
        cached = _read_cache(path)
        if cached is not None and cached.get("key") == key:
            rank_zero_info(f"AdaBN statistics of {checkpoint} on {where} read from {path}")
            return cached["statistics"]
    start = time.perf_counter()
    statistics = estimate_statistics(model, (batch["image"] for batch in images.loader), device)
    note = f"AdaBN statistics of {checkpoint} on {where} estimated in {time.perf_counter() - start:.1f} s"
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({"key": key, "statistics": statistics}, tmp)
        note += f", cached in {path}"
    rank_zero_info(note)
    return statistics


def _read_cache(path: Path) -> dict | None:
    """A cache file's content, or None (with a warning naming it) when it cannot be read: a cache
    is only a copy, so a truncated or corrupt one is recomputed and overwritten, not fatal."""
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the unpickler trips over, the copy is unusable
        rank_zero_warn(f"AdaBN cache {path} is unreadable ({type(error).__name__}); recomputing it")
        return None
    if not isinstance(cached, dict) or "statistics" not in cached:
        rank_zero_warn(f"AdaBN cache {path} holds no statistics; recomputing it")
        return None
    return cached


def _cache_key(checkpoint: str | Path, images: TargetImages) -> dict[str, Any]:
    """Everything the statistics depend on, as JSON-normal data (what the cache file must match)."""
    hp = images.settings
    key = {
        "version": CACHE_VERSION,
        "checkpoint_sha256": file_digest(checkpoint),
        "dataset": hp["dataset"],
        "root": str(Path(hp["root"]).resolve()),
        "split": hp["split"],
        "list_file": str(Path(hp["list_file"]).resolve()) if hp.get("list_file") else None,
        "options": hp.get("options") or {},
        "size": hp.get("size"),
        "resize": hp.get("resize"),
        "images": len(images.names),
        "names_sha256": hashlib.sha256("\n".join(images.names).encode()).hexdigest(),
        "batch_size": images.loader.batch_size,
    }
    return json.loads(json.dumps(key, sort_keys=True, default=str))
