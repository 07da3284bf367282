"""Seconds per image of every test-time method against plain inference: same model, same images,
methods alternated within each round (order rotated every round) so drift and contention hit
all of them alike. Printed per method: median and minimum seconds per image over the rounds, and
"x plain", the median over rounds of (this method / plain in the same round), which cancels load
that changes between rounds better than a ratio of medians.

Each method runs exactly as ``intrada test`` runs it (:func:`intrada_pl.tta.build_test_methods`)
under ``torch.inference_mode``; ``plain`` is the unconverted model with ``nn.BatchNorm2d`` in eval
mode. Weights are random (nothing is downloaded): latency does not depend on their values.

    python bench/tta_latency.py                                # DeepLabV2-ResNet-101, 256x512, batch 1
    python bench/tta_latency.py --depth 18 --size 128x256 --rounds 3 --channels-last --threads 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from intrada_pl.io import write_json
from intrada_pl.models.bn_calibration import LEARNED_MODES, convert_batchnorm
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.factory import SegmenterInfo
from intrada_pl.tta import MethodSpec, build_test_methods

METHODS = ("none", "manual", "bn_adapt", "instcal_u", "instcal_c", "tent")
TARGETS = {"instcal_u": 1.10, "instcal_c": 1.25}  # issue 5: at most this many times plain inference


def build(model: DeepLabV2, method: str) -> nn.Module:
    """``method`` on a copy of ``model``, built the way ``intrada test`` builds it."""
    own = copy.deepcopy(model)
    spec = MethodSpec.parse(method)
    learned = spec.calibration if spec.calibration in LEARNED_MODES else None
    if learned:  # a calibration checkpoint would hold these layers (strengths at their init values here)
        convert_batchnorm(own, learned)
    info = SegmenterInfo("benchmark", "release", model.spec(), None, ("19",), learned)
    return build_test_methods(own, info, [spec])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=101, choices=(18, 50, 101))
    parser.add_argument("--size", default="256x512", help="input HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--images", type=int, default=2, help="distinct images, cycled")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help=f"from {', '.join(METHODS)}, manual@M, X+tent")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.lower().split("x"))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model = DeepLabV2(19, args.depth).eval()
    runners: dict[str, nn.Module] = {"plain": model, **{m: build(model, m) for m in args.methods}}
    for runner in runners.values():
        runner.to(memory_format=memory_format)
    images = [
        torch.randint(0, 256, (args.batch, 3, height, width), dtype=torch.uint8).float().contiguous(memory_format=memory_format)
        for _ in range(args.images)
    ]

    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                x = images[r % len(images)]
                start = time.perf_counter()
                runners[name](x)
                if r:  # round 0 warms every method up
                    times[name].append((time.perf_counter() - start) / args.batch)

    print(
        f"DeepLabV2-ResNet-{args.depth}, {height}x{width}, batch {args.batch}, {torch.get_num_threads()} thread(s), "
        f"{'channels_last' if args.channels_last else 'NCHW'}, median of {args.rounds} rounds"
    )
    print(f"{'method':<16}{'s/image':>10}{'min':>10}{'x plain':>10}  target")
    results = {}
    for name in names:
        median = statistics.median(times[name])
        ratio = statistics.median(t / p for t, p in zip(times[name], times["plain"]))
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target:.2f}x {'met' if ratio <= target else 'MISSED'}"
        print(f"{name:<16}{median:>10.4f}{min(times[name]):>10.4f}{ratio:>10.3f}  {verdict}")
        results[name] = {"seconds_per_image": median, "min": min(times[name]), "ratio": ratio, "samples": times[name]}
    if args.json:
        write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})


if __name__ == "__main__":
    main()
