"""A stage checkpoint's hyper-parameters in today's layout, and how they differ from a config.

Checkpoints written before the segmenter, the optimiser and the schedule were components hold
flat keys (``depth``, ``lr``, ``sgd_mode``, ``schedule_steps``, ...); :func:`upgrade_hparams`
turns them into the ``segmenter:`` / ``optimizer:`` / ``lr_scheduler:`` blocks they stand for, so an
old run still resumes and evaluates. :func:`differences` is what a resume compares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from intrada_pl.models.factory import LEGACY_DEEPLAB_KEYS

_LEGACY_OPTIMIZER = ("lr", "momentum", "weight_decay", "sgd_mode")
_LEGACY_SCHEDULE = {"schedule_steps": "total_steps", "poly_power": "power", "warmup_steps": "warmup_steps", "warmup_factor": "warmup_factor"}
# Only initialise weights that a resumed checkpoint replaces: free to differ (a moved file).
INITIAL_WEIGHTS = ("pretrained", "init_ckpt")


def _block(class_path: str, init_args: Mapping[str, Any]) -> dict[str, Any]:
    return {"class_path": class_path, "init_args": dict(init_args)}


def upgrade_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` with the flat keys of an earlier version turned into component blocks."""
    hp = dict(hparams)
    if "optimizer" in hp or "lr" not in hp:
        return hp
    calibration = "init_ckpt" in hp
    segmenter = {k: hp.pop(k) for k in LEGACY_DEEPLAB_KEYS if k in hp}
    optimizer = {k: hp.pop(k) for k in _LEGACY_OPTIMIZER if k in hp}
    schedule = {new: hp.pop(old) for old, new in _LEGACY_SCHEDULE.items() if old in hp}
    if calibration:  # InstCal: Adam over the strengths; the network came from init_ckpt (the back-filled keys go)
        hp.update(optimizer=_block("intrada_pl.optim.Adam", {"lr": optimizer["lr"], "weight_decay": 0.0}),
                  lr_scheduler=_block("intrada_pl.optim.Poly", schedule))
        for key in ("bn", "sync_bn_stats", "check_finite"):
            hp.pop(key, None)
        return hp
    mode = optimizer.pop("sgd_mode", "reference")
    if "lr_d" in hp:  # an adversarial stage: its discriminators stepped with today's Adam then
        hp.setdefault("adam_d", "torch")
    hp.update(
        segmenter=_block("intrada_pl.models.DeepLabV2", segmenter),
        optimizer=_block("intrada_pl.optim.ReferenceSGD" if mode == "reference" else "intrada_pl.optim.SGD", optimizer),
        lr_scheduler=_block("intrada_pl.optim.Poly", schedule),
    )
    return hp


def _canonical(value: Any) -> Any:
    """Config values compared by meaning: classes by name (a package path and its module path agree), tuples as lists."""
    if isinstance(value, Mapping):
        out = {k: _canonical(v) for k, v in value.items() if not str(k).startswith("_")}
        if isinstance(out.get("class_path"), str):  # intrada_pl.models.DeepLabV2 = intrada_pl.models.deeplabv2.DeepLabV2
            out["class_path"] = out["class_path"].rsplit(".", 1)[-1]
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def differences(saved: Mapping[str, Any], configured: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: saved -> configured`` for every setting the two disagree on (keys of ``configured``;
    an unset block on one side compares equal to its defaults on the other only if both spell it)."""
    saved, configured = _canonical(saved), _canonical(configured)
    out = []
    for key, value in configured.items():
        if key in INITIAL_WEIGHTS or key not in saved:
            continue
        old = saved[key]
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if value.get("class_path") != old.get("class_path"):
                out.append(f"{prefix}{key}: {old.get('class_path')} -> {value.get('class_path')}")
            else:
                out += differences(old.get("init_args", old), value.get("init_args", value), f"{prefix}{key}.")
        elif old != value:
            out.append(f"{prefix}{key}: {old!r} -> {value!r}")
    return out
