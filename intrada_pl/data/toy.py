"""Generated two-domain street scenes, written in the REAL GTA5 and Cityscapes layouts.

The demo and the tests train and evaluate on these through the same loaders as real data.
Both domains share the scene grammar (sky, buildings, road, sidewalk, vegetation, poles, signs,
cars, people); they differ in appearance: the source is saturated, flat and sharp (a game
engine), the target has another palette, texture, blur, haze and sensor noise, and a "hard"
fraction of the target is rainy or at night, so the entropy ranking has something to find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from intrada_pl.data.layouts import write_cityscapes, write_gta5
from intrada_pl.data.ranking_manifest import list_text
from intrada_pl.errors import ConfigValueError
from intrada_pl.io import write_json, write_text

# Cityscapes label ids used by the scene grammar.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 7, 8, 11, 12, 13, 17, 19, 20
VEGETATION, TERRAIN, SKY, PERSON, CAR, TRUCK, BUS, BICYCLE = 21, 22, 23, 24, 26, 27, 28, 33

SOURCE_COLORS = {
    ROAD: (110, 80, 120), SIDEWALK: (230, 60, 220), BUILDING: (80, 80, 90), WALL: (120, 120, 170),
    FENCE: (200, 160, 150), POLE: (170, 170, 170), LIGHT: (255, 180, 20), SIGN: (240, 240, 0),
    VEGETATION: (60, 170, 40), TERRAIN: (160, 240, 140), SKY: (60, 140, 230), PERSON: (230, 20, 60),
    CAR: (10, 10, 170), TRUCK: (10, 30, 90), BUS: (0, 80, 120), BICYCLE: (130, 10, 40),
}


def camera_palette(colors: dict[int, tuple[int, int, int]]) -> dict[int, tuple[int, int, int]]:
    """The target's look of each class: the game colours desaturated, darkened and warmed, as
    through a real camera; different enough to hurt a source model, close enough to adapt."""
    out = {}
    for label_id, color in colors.items():
        rgb = np.array(color, np.float32)
        rgb = 0.55 * rgb + 0.45 * rgb.mean()
        out[label_id] = tuple(int(v) for v in np.clip(0.85 * rgb * (1.08, 1.0, 0.88) + 10, 0, 255))
    return out


TARGET_COLORS = camera_palette(SOURCE_COLORS)


@dataclass(frozen=True)
class ToySpec:
    """How much toy data to write and at which on-disk sizes (W, H)."""

    source_images: int = 160
    target_train: int = 96
    target_val: int = 32
    hard_fraction: float = 0.3
    source_size: tuple[int, int] = (256, 144)
    target_size: tuple[int, int] = (320, 160)
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse what :func:`generate` cannot write (a count of 0 leaves that part out)."""
        for name in ("source_images", "target_train", "target_val", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigValueError(f"toy data: {name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("source_size", "target_size"):
            if len(getattr(self, name)) != 2 or min(getattr(self, name)) < 16:
                raise ConfigValueError(f"toy data: {name} must be (W, H), each at least 16 pixels, got {getattr(self, name)!r}")
        if not 0.0 <= self.hard_fraction <= 1.0:
            raise ConfigValueError(f"toy data: hard_fraction must lie in [0, 1], got {self.hard_fraction!r}")


def draw_scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A street scene as an HxW map of Cityscapes label ids (255-free: every pixel is labelled)."""
    ids = np.full((height, width), SKY, np.uint8)
    horizon = int(height * rng.uniform(0.38, 0.5))
    ys, xs = np.mgrid[0:height, 0:width]
    # buildings and walls along the horizon
    x = 0
    while x < width:
        w = int(width * rng.uniform(0.08, 0.22))
        top = int(height * rng.uniform(0.05, 0.3))
        ids[top : horizon + 2, x : x + w] = BUILDING if rng.random() < 0.85 else WALL
        x += w + int(rng.integers(0, max(2, width // 40)))
    # trees in front of buildings
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, width), rng.uniform(horizon * 0.4, horizon)
        rx, ry = width * rng.uniform(0.04, 0.09), height * rng.uniform(0.08, 0.18)
        ids[((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 < 1] = VEGETATION
    # ground: terrain and sidewalk flank the road, which widens towards the camera
    below = ys >= horizon
    centre = width * rng.uniform(0.4, 0.6)
    depth = (ys - horizon) / max(1, height - horizon)
    half_road = width * (0.04 + 0.5 * depth)
    half_walk = half_road + width * (0.02 + 0.25 * depth)
    ids[below] = TERRAIN
    ids[below & (np.abs(xs - centre) < half_walk)] = SIDEWALK
    ids[below & (np.abs(xs - centre) < half_road)] = ROAD
    if rng.random() < 0.5:
        fence_y = horizon + int((height - horizon) * 0.1)
        side = xs < centre - half_walk if rng.random() < 0.5 else xs > centre + half_walk
        ids[(ys >= fence_y - height // 12) & (ys < fence_y) & side] = FENCE
    # poles with signs or lights on the sidewalk
    for _ in range(int(rng.integers(1, 4))):
        y0 = int(horizon + (height - horizon) * rng.uniform(0.1, 0.6))
        d = (y0 - horizon) / max(1, height - horizon)
        px = int(centre + rng.choice([-1, 1]) * width * (0.04 + 0.5 * d + 0.12 * d + 0.01))
        pw, ph = max(1, int(width * 0.004 * (1 + 3 * d))), int(height * (0.15 + 0.35 * d))
        top = max(0, y0 - ph)
        ids[top:y0, max(0, px - pw) : px + pw] = POLE
        bw = 3 * pw + 1
        ids[top : top + 2 * bw, max(0, px - bw) : px + bw] = SIGN if rng.random() < 0.6 else LIGHT
    # vehicles on the road, people and bicycles on the sidewalk, far ones drawn first
    for _ in range(int(rng.integers(1, 4))):
        d = rng.uniform(0.15, 0.9)
        y1 = int(horizon + (height - horizon) * d)
        cls = rng.choice([CAR, CAR, CAR, TRUCK, BUS])
        w = int(width * (0.06 + 0.22 * d) * (1.5 if cls != CAR else 1.0))
        h = int(w * (0.55 if cls == CAR else 0.9))
        cx = int(centre + rng.uniform(-0.5, 0.5) * width * (0.04 + 0.5 * d))
        ids[max(0, y1 - h) : y1, max(0, cx - w // 2) : cx + w // 2] = cls
    for _ in range(int(rng.integers(0, 3))):
        d = rng.uniform(0.2, 0.9)
        y1 = int(horizon + (height - horizon) * d)
        side = rng.choice([-1, 1])
        cx = int(centre + side * width * (0.04 + 0.5 * d + 0.1 * d))
        h, w = int(height * (0.1 + 0.3 * d)), max(2, int(width * (0.01 + 0.03 * d)))
        ids[max(0, y1 - h) : y1, max(0, cx - w) : cx + w] = PERSON if rng.random() < 0.8 else BICYCLE
    return ids


def render(rng: np.random.Generator, ids: np.ndarray, domain: str, hard: str | None = None) -> np.ndarray:
    """Paint a label map in the look of a domain; ``hard`` in {None, "rain", "night"}.

    The hard conditions are chosen so that a source-trained model is *uncertain* on them (its
    mean entropy rises above that of every clean target image in our checks), which is what the
    entropy ranking looks for; dense fog or a dark night make such a model confidently wrong
    instead, which no entropy ranking can find."""
    colors = SOURCE_COLORS if domain == "source" else TARGET_COLORS
    lut = np.zeros((256, 3), np.float32)
    for label_id, color in colors.items():
        lut[label_id] = color
    image = lut[ids]
    height, width = ids.shape
    # vertical shading everywhere and window texture on buildings give shape cues beyond colour
    image *= (0.85 + 0.3 * np.linspace(0, 1, height, dtype=np.float32))[:, None, None]
    windows = ((np.arange(height)[:, None] // 6) % 3 == 0) & ((np.arange(width)[None, :] // 5) % 3 == 0)
    image[(ids == BUILDING) & windows] *= 0.6 if domain == "source" else 0.75
    if domain == "source":
        image += rng.normal(0, 4, image.shape).astype(np.float32)
    else:
        image *= rng.uniform(0.85, 1.15, (1, 1, 3)).astype(np.float32)
        low = cv2.resize(rng.normal(0, 18, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32), (width, height))
        image += low + rng.normal(0, 10, image.shape).astype(np.float32)
        image = cv2.GaussianBlur(image, (0, 0), 1.2)
        haze = np.linspace(0.25, 0.0, height, dtype=np.float32)[:, None, None]
        image = image * (1 - haze) + 190 * haze
    if hard == "rain":  # patchy wet-street lighting, droplets blur, sensor noise
        blotches = cv2.resize(rng.normal(0, 60, (height // 12 + 1, width // 12 + 1, 3)).astype(np.float32), (width, height))
        image = cv2.GaussianBlur(image + blotches, (0, 0), 1.0) + rng.normal(0, 40, image.shape).astype(np.float32)
    elif hard == "night":  # high-ISO night shot: darker, bluish, very noisy
        image = image * 0.75 + np.array([0, 5, 20], np.float32) + rng.normal(0, 75, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def generate(out: str | Path, spec: ToySpec = ToySpec()) -> dict:
    """Write ``out/GTA5`` and ``out/Cityscapes`` and return (and save) a summary with the hard
    images, which also go to ``out/hard_list.txt`` (the ranking's ``hard_list`` format)."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    sw, sh = spec.source_size
    for i in range(spec.source_images):
        ids = draw_scene(rng, sw, sh)
        write_gta5(out / "GTA5", f"{i + 1:05d}.png", render(rng, ids, "source"), ids)
    tw, th = spec.target_size
    hard_names = []
    splits = {"train": (spec.target_train, ("aachen", "bochum", "bremen")), "val": (spec.target_val, ("frankfurt", "lindau"))}
    for split, (count, cities) in splits.items():
        num_hard = round(count * spec.hard_fraction)
        for i in range(count):
            city = cities[i % len(cities)]
            hard = ("rain", "night")[i % 2] if i < num_hard else None
            ids = draw_scene(rng, tw, th)
            write_cityscapes(out / "Cityscapes", split, city, i, 19, render(rng, ids, "target", hard), ids)
            if hard and split == "train":
                hard_names.append(f"{city}/{city}_{i:06d}_000019_leftImg8bit.png")
    summary = {
        "source_root": str(out / "GTA5"),
        "target_root": str(out / "Cityscapes"),
        "source_images": spec.source_images,
        "target_train": spec.target_train,
        "target_val": spec.target_val,
        "hard_train_images": sorted(hard_names),
        "spec": spec.__dict__,
    }
    write_text(out / "hard_list.txt", list_text(summary["hard_train_images"]))
    write_json(out / "toy_meta.json", summary)
    return summary



def generated_hard_images(root: str | Path) -> list[str]:
    """The rainy/night train images that :func:`generate` wrote under ``root`` (from its ``toy_meta.json``)."""
    meta_path = Path(root) / "toy_meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {root} is not toy data written by 'intrada toy-data'")
    return json.loads(meta_path.read_text())["hard_train_images"]
