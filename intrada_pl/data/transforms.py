"""Geometric pre-processing with albumentations.

Pixels leave the pipeline as raw uint8 RGB: the intensity normalisation (``caffe_bgr`` or
``imagenet``) belongs to the model (``intrada_pl.models.preprocessing``), so a checkpoint knows
the pre-processing it was trained with, batches cross to the GPU 4x smaller, and the photometric
augmentations of the calibration stage see real pixel values.
"""

from __future__ import annotations

import os

import albumentations as A
import cv2
import numpy as np
import torch

from intrada_pl.data.labels import IGNORE_INDEX

Size = tuple[int, int]  # (width, height), the reference's convention


class SegmentationTransform:
    """Resize (bicubic image, nearest label) and optional random scale / crop / flip.

    ``resize_label=False`` resizes the image only and keeps the label at its full resolution,
    which is how the reference evaluates: logits are upsampled to the label, never the reverse.
    """

    def __init__(
        self,
        size: Size | None = None,
        resize_label: bool = True,
        scale_range: tuple[float, float] | None = None,
        crop_size: Size | None = None,
        hflip: bool = False,
    ) -> None:
        ops: list[A.BasicTransform] = []
        if size is not None:
            width, height = size
            ops.append(A.Resize(height, width, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST))
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
        self.resize_label = resize_label
        self.pipeline = A.Compose(ops + random_ops, strict=True)
        self._seeded_pid: int | None = None

    def _seed_once_per_process(self) -> None:
        """Seed albumentations from torch's per-worker seed so runs are reproducible under
        ``seed_everything`` (albumentations otherwise draws its seed from OS entropy)."""
        pid = os.getpid()
        if self._seeded_pid != pid:
            self.pipeline.set_random_seed(torch.initial_seed() % 2**32)
            self._seeded_pid = pid

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        self._seed_once_per_process()
        if self.resize_label:
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        else:
            image = self.pipeline(image=image)["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous(),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
        }
