"""The two image resizes of ``SegmentationTransform``, side by side at the real sizes.

* ``pil`` (default): PIL bicubic, the reference's resize (antialiased when it downscales);
* ``opencv``: cv2 ``INTER_CUBIC``, not antialiased.

For each case the same decoded image goes through :func:`intrada_pl.data.transforms.resize_image`
both ways, alternated within every round; printed: the median milliseconds per image of each, the
ratio pil / opencv, the PNG decode time of that image for scale (a loader worker pays decode +
resize), and how far OpenCV's pixels are from PIL's. Labels take PIL NEAREST in both modes; the
line ``labels`` says how many label pixels cv2 ``INTER_NEAREST`` (our former label resize) moves.

The default images are generated street scenes (:mod:`intrada_pl.data.toy`) at the datasets' real
sizes; ``--image FILE --size W H`` measures a real file instead (timing does not depend on the
content; the pixel difference does: photos have more fine detail than the generated scenes).
OpenCV runs on ``--threads`` threads (1, as in a DataLoader worker, by default).

    python bench/resize.py [--rounds 20] [--threads 1] [--image FILE --size W H]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from intrada_pl.data.datasets import read_rgb, resize_nearest  # noqa: E402
from intrada_pl.data.toy import draw_scene, render  # noqa: E402
from intrada_pl.data.transforms import resize_image  # noqa: E402

# name, on-disk (W, H), training size (W, H), toy domain
CASES = (
    ("Cityscapes", (2048, 1024), (1024, 512), "target"),
    ("GTA5", (1914, 1052), (1280, 720), "source"),
)


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def compare(name: str, image: np.ndarray, ids: np.ndarray | None, size: tuple[int, int], rounds: int) -> None:
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1]
    decode = median_ms(lambda: cv2.imdecode(png, cv2.IMREAD_COLOR), max(3, rounds // 4))
    timings: dict[str, list[float]] = {"pil": [], "opencv": []}
    for _ in range(rounds):
        for mode in timings:
            timings[mode].append(median_ms(lambda: resize_image(image, size, mode), 1))
    pil, opencv = (statistics.median(timings[m]) for m in ("pil", "opencv"))
    diff = np.abs(resize_image(image, size, "pil").astype(np.int16) - resize_image(image, size, "opencv"))
    h, w = image.shape[:2]
    print(f"{name}: {w}x{h} -> {size[0]}x{size[1]}")
    print(f"  pil {pil:6.1f} ms   opencv {opencv:6.1f} ms   pil/opencv x{pil / opencv:.1f}   (PNG decode {decode:.1f} ms)")
    print(f"  opencv vs pil pixels: mean |diff| {diff.mean():.2f}, max {diff.max()}, "
          f"{100 * (diff > 8).mean():.2f} % of values > 8 levels, {100 * (diff > 0).mean():.1f} % differ")
    if ids is not None:
        former = cv2.resize(ids, size, interpolation=cv2.INTER_NEAREST)
        moved = (former != resize_nearest(ids, size[::-1])).mean()
        print(f"  labels: cv2 INTER_NEAREST moves {100 * moved:.2f} % of pixels vs PIL NEAREST (both modes now use PIL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="timed resizes per mode (alternated)")
    parser.add_argument("--threads", type=int, default=1, help="cv2.setNumThreads")
    parser.add_argument("--image", help="a real image file to measure instead of the generated scenes")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), help="target size for --image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if bool(args.image) != bool(args.size):
        parser.error("--image and --size go together")
    cv2.setNumThreads(args.threads)
    print(f"cv2 {cv2.__version__} on {args.threads} thread(s); PIL {__import__('PIL').__version__}")
    if args.image:
        compare(args.image, read_rgb(args.image), None, tuple(args.size), args.rounds)
        return
    rng = np.random.default_rng(args.seed)
    for name, (w, h), size, domain in CASES:
        ids = draw_scene(rng, w, h)
        compare(f"{name} (generated)", render(rng, ids, domain), ids, size, args.rounds)


if __name__ == "__main__":
    main()
