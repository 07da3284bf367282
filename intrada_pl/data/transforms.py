"""Geometric pre-processing: the reference's resize, then optional albumentations random ops.

Pixels leave the pipeline as raw uint8 RGB: the intensity normalisation (``caffe_bgr`` or
``imagenet``) belongs to the model (``intrada_pl.models.preprocessing``), so a checkpoint knows
the pre-processing it was trained with, batches cross to the GPU 4x smaller, and the photometric
augmentations of the calibration stage see real pixel values.

The resize reproduces the reference's pixels by default (``resize="pil"``): PIL bicubic for the
image (antialiased when it downscales), PIL nearest for the label, each straight from its own
size to the target size. ``resize="opencv"`` resizes the image with OpenCV's bicubic instead:
about 10x faster, but not antialiased, so a 2048x1024 -> 1024x512 image is a few grey levels
off (``bench/resize.py``). Labels take the PIL path in both modes.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image

from intrada_pl.data.datasets import resize_nearest
from intrada_pl.data.labels import IGNORE_INDEX

Size = tuple[int, int]  # (width, height), the reference's convention
Resampling = Literal["pil", "opencv"]


def resize_image(image: np.ndarray, size: Size, resize: Resampling = "pil") -> np.ndarray:
    """HxWx3 uint8 RGB resized bicubically to ``size`` (W, H) by PIL (the reference) or OpenCV."""
    if resize == "pil":
        return np.array(Image.fromarray(image).resize(size, Image.BICUBIC))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


class SegmentationTransform:
    """Resize (bicubic image, nearest label) and optional random scale / crop / flip.

    ``resize_label=False`` resizes the image only and keeps the label at its full resolution,
    which is how the reference evaluates: logits are upsampled to the label, never the reverse.
    When this transform resizes labels (:attr:`resizes_label`), the label may come at its own
    on-disk size: it is resized once, straight to ``size``, as the reference does.
    """

    def __init__(
        self,
        size: Size | None = None,
        resize_label: bool = True,
        scale_range: tuple[float, float] | None = None,
        crop_size: Size | None = None,
        hflip: bool = False,
        resize: Resampling = "pil",
    ) -> None:
        if resize not in get_args(Resampling):
            raise ValueError(f"resize must be one of {get_args(Resampling)}, got {resize!r}")
        random_ops: list[A.BasicTransform] = []
        if scale_range is not None:
            low, high = scale_range
            if not 0 < low <= high:
                raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
            random_ops.append(
                A.RandomScale(
                    scale_limit=(low - 1.0, high - 1.0),
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    p=1.0,
                )
            )
        if crop_size is not None:
            width, height = crop_size
            random_ops.append(A.RandomCrop(height, width, pad_if_needed=True, fill=0, fill_mask=IGNORE_INDEX))
        if hflip:
            random_ops.append(A.HorizontalFlip(p=0.5))
        if random_ops and not resize_label:
            raise ValueError("random scale/crop/flip need resize_label=True: they must move the label too")
        self.size, self.resize_label, self.resize = size, resize_label, resize
        self.random_ops = A.Compose(random_ops, strict=True) if random_ops else None
        self._seeded_pid: int | None = None

    @property
    def resizes_label(self) -> bool:
        """Whether labels may be passed at their own size (datasets then skip aligning them)."""
        return self.size is not None and self.resize_label

    def _seed_once_per_process(self) -> None:
        """Seed albumentations from torch's per-worker seed so runs are reproducible under
        ``seed_everything`` (albumentations otherwise draws its seed from OS entropy)."""
        pid = os.getpid()
        if self._seeded_pid != pid:
            self.random_ops.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_pid = pid

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        if self.size is not None:
            image = resize_image(image, self.size, self.resize)
            if self.resize_label:
                mask = resize_nearest(mask, self.size[::-1])
        if self.random_ops is not None:
            self._seed_once_per_process()
            out = self.random_ops(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
        }
