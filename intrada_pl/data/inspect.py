"""Check a dataset on disk before training: sizes, class statistics and file problems.

``inspect_dataset`` walks every sample through the same dataset class training uses, but reads
labels *raw* (``read_raw_label``) so it can report what a loader would silently fix or hide:
unreadable or empty files, entries named like images that are no files (directories, dangling
links, link loops) or whose names are not UTF-8, image/label size mismatches, values outside the
dataset's label encoding, 8-bit SYNTHIA labels, and any warning the loader gives (e.g. WildDash2
categories the label policy does not know). It never stops at a bad file; everything is vectorised
(one bincount per label). ``intrada inspect`` (or ``python -m intrada_pl.data.inspect gta5
/data/gta5``) exits with status 1 when it lists problems, so scripts can gate on it.

What training handles as the reference does is a *note*, not a problem: labels whose size differs
from their image in a dataset where that is known (GTA5's 20801-20860, Synscapes at 2k), which
training resizes from their own size.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .datasets import DATASETS, LabelFormatError, SegmentationDataset, display_path, get_dataset_class, image_size
from .labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES

__all__ = ["inspect_dataset", "format_report", "dataset_options", "main"]


def _value_counts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = raw.ravel()
    if flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(flat, return_counts=True)


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def dataset_options(cls: type[SegmentationDataset]) -> set[str]:
    """The keyword options a dataset class takes (``root`` aside): its own and its bases'."""
    keyword = (pyinspect.Parameter.POSITIONAL_OR_KEYWORD, pyinspect.Parameter.KEYWORD_ONLY)
    return {p.name for c in cls.__mro__ if "__init__" in vars(c)
            for p in pyinspect.signature(vars(c)["__init__"]).parameters.values()
            if p.kind in keyword} - {"self", "root"}


def inspect_dataset(name: str, root: str | Path, split: str | None = None, *, decode_images: bool = True,
                    limit: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Statistics and problems of dataset ``name`` (registry key or dotted class path) at ``root``.

    ``kwargs`` go to the dataset class (e.g. ``condition="fog"`` for ACDC); one it does not take
    is a ``ValueError`` naming the ones it does. Images without a label file, and the warnings the
    dataset gives while loading (``UserWarning``), are reported instead of raising.
    ``decode_images=False`` reads only image headers (much faster, but cannot detect corrupt image
    data). ``limit`` checks only the first N samples.

    Returns a dict with ``dataset, class, root, split, num_images, num_checked, image_sizes``
    ({"WxH": count}), ``label_sizes``, ``class_pixels`` (19 train-ID pixel counts at on-disk label
    size), ``ignored_pixels``, ``problems`` (list of "<file>: <what>") and ``notes`` (what the
    loader handles as the reference does, e.g. GTA5's labels of another size than their image).
    """
    if split is not None:
        kwargs["split"] = split
    kwargs.setdefault("missing_labels", "keep")
    kwargs.setdefault("unusable_images", "keep")
    cls = get_dataset_class(name)
    unknown = sorted(set(kwargs) - dataset_options(cls))
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(sorted(dataset_options(cls)))}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        ds = cls(root, **kwargs)
    for w in caught:   # other warnings (deprecations, ...) are not the data's problems: show them
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n = len(ds) if limit is None else min(int(limit), len(ds))

    image_sizes: Counter[str] = Counter()
    label_sizes: Counter[str] = Counter()
    class_pixels = np.zeros(NUM_CLASSES, np.int64)
    ignored = 0
    problems: list[str] = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    resized: list[str] = []   # labels of another size than their image, where the dataset allows it
    for i in range(n):
        ipath = ds.image_path(i)
        why = ds.image_problem(i)
        if why:
            problems.append(f"{display_path(ipath)}: {why}")
            continue
        hw = None
        try:
            hw = ds.read_image(i).shape[:2] if decode_images else image_size(ipath)
            image_sizes[f"{hw[1]}x{hw[0]}"] += 1
        except Exception as e:  # noqa: BLE001 - report and continue
            problems.append(f"{ipath}: unreadable image file ({_err(e)})")
        if not ds.with_labels:
            continue

        lpath = ds.label_path(i)
        try:
            raw = ds.read_raw_label(i)
        except FileNotFoundError:
            problems.append(f"{lpath}: missing label file for image {ipath}")
            continue
        except LabelFormatError as e:
            problems.append(f"{lpath}: wrong label encoding ({e})")
            continue
        except Exception as e:  # noqa: BLE001
            problems.append(f"{lpath}: unreadable label file ({_err(e)})")
            continue
        lh, lw = raw.shape[:2]
        label_sizes[f"{lw}x{lh}"] += 1
        if hw is not None and (lh, lw) != tuple(hw):
            if ds.label_size_may_differ:
                resized.append(ds.names[i])
            else:
                problems.append(f"{lpath}: label size {lw}x{lh} differs from image size {hw[1]}x{hw[0]} ({ipath})")

        values, counts = _value_counts(raw)
        bad = ~ds.valid_raw_values(values)
        if bad.any():
            shown = values[bad][:10].tolist()
            problems.append(
                f"{lpath}: label values outside the encoding ({ds.raw_label_encoding}): "
                f"{shown}{' ...' if bad.sum() > 10 else ''} in {int(counts[bad].sum())} pixels")
        train = ds.raw_to_train_id(values).astype(np.int64)
        per_id = np.bincount(train, weights=counts, minlength=IGNORE_INDEX + 1).astype(np.int64)
        class_pixels += per_id[:NUM_CLASSES]
        ignored += int(counts.sum()) - int(per_id[:NUM_CLASSES].sum())

    def by_count(c: Counter[str]) -> dict[str, int]:
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    return {
        "dataset": name,
        "class": type(ds).__name__,
        "root": str(ds.root),
        "split": ds.split,
        "num_images": len(ds),
        "num_checked": n,
        "image_sizes": by_count(image_sizes),
        "label_sizes": by_count(label_sizes),
        "class_pixels": class_pixels.tolist(),
        "ignored_pixels": ignored,
        "problems": problems,
        "notes": [_resized_note(ds, resized, sum(label_sizes.values()))] if resized else [],
    }


def _resized_note(ds: SegmentationDataset, names: list[str], num_labels: int, shown: int = 5) -> str:
    """The note for labels whose size differs from their image in a dataset where that is known."""
    first = ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")
    return (f"{len(names)} of {num_labels} labels differ in size from their image, as {type(ds).__name__} labels may; "
            f"training resizes each from its own size (NEAREST), as the reference does: {first}")


def format_report(report: dict[str, Any], max_problems: int = 50) -> str:
    """Human-readable summary: header, sizes, a per-class pixel table, then problems and notes."""
    r = report
    checked = f" ({r['num_checked']} checked)" if r.get("num_checked", r["num_images"]) != r["num_images"] else ""
    lines = [f"{r.get('class', r['dataset'])} [{r['dataset']}] at {r['root']}, split {r['split']!r}: "
             f"{r['num_images']} images{checked}"]
    for key in ("image_sizes", "label_sizes"):
        sizes = ", ".join(f"{s} x{c}" for s, c in r[key].items()) or "-"
        lines.append(f"{key.replace('_', ' ')}: {sizes}")
    total = sum(r["class_pixels"]) + r["ignored_pixels"]
    lines.append(f"{'id':>3}  {'class':<14}{'pixels':>14}{'%':>8}")
    for t, (cname, px) in enumerate(zip(CLASS_NAMES, r["class_pixels"])):
        lines.append(f"{t:>3}  {cname:<14}{px:>14,}{100 * px / max(total, 1):>7.2f}%")
    lines.append(f"{IGNORE_INDEX:>3}  {'(ignored)':<14}{r['ignored_pixels']:>14,}"
                 f"{100 * r['ignored_pixels'] / max(total, 1):>7.2f}%")
    probs = r["problems"]
    lines.append(f"problems: {len(probs)}" if probs else "problems: none")
    lines += [f"  - {p}" for p in probs[:max_problems]]
    if len(probs) > max_problems:
        lines.append(f"  ... and {len(probs) - max_problems} more")
    if r["notes"]:
        lines.append(f"notes: {len(r['notes'])}")
        lines += [f"  - {note}" for note in r["notes"]]
    return "\n".join(lines)


def _options(parser: argparse.ArgumentParser, pairs: Sequence[str], mapping: str | None) -> dict[str, Any]:
    """``--options YAML`` then each ``--option KEY=VALUE`` (VALUE read as YAML: 0.02 is a number)."""
    try:
        options = yaml.safe_load(mapping) if mapping else {}
        if not isinstance(options, dict):
            parser.error(f"--options must be a mapping such as '{{beta: 0.02}}', got {mapping!r}")
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                parser.error(f"--option takes KEY=VALUE, got {pair!r}")
            options[key.strip()] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        parser.error(f"cannot read dataset options: {e}")
    return options


def main(argv: Sequence[str] | None = None, prog: str = "python -m intrada_pl.data.inspect") -> int:
    """The ``intrada inspect`` command; returns 1 when the report lists problems, else 0 (notes alone: 0)."""
    p = argparse.ArgumentParser(prog=prog, description="Report a dataset's images, sizes, class pixels and problems.")
    p.add_argument("dataset", help=f"one of {', '.join(DATASETS)} or a dotted class path")
    p.add_argument("root")
    p.add_argument("--split")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, as under 'options:' in the configs (e.g. condition=night, "
                        "beta=0.02); VALUE is read as YAML; repeatable")
    p.add_argument("--options", metavar="YAML", help="dataset options as one mapping, e.g. '{beta: 0.02}'")
    p.add_argument("--limit", type=int, help="check only the first N samples")
    p.add_argument("--headers-only", action="store_true", help="do not decode images (faster)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    options = _options(p, a.option, a.options)
    try:
        rep = inspect_dataset(a.dataset, a.root, a.split, decode_images=not a.headers_only, limit=a.limit, **options)
    except ValueError as e:   # an unknown dataset or option, or a value the dataset refuses
        p.error(str(e))
    print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 1 if rep["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
