"""Data: label tables (``labels``), datasets per on-disk layout (``datasets``), layout writers
(``layouts``) and a dataset checker (``inspect``).

Only the numpy label constants are imported eagerly; dataset symbols (which need torch/cv2)
are resolved lazily on first access.
"""

from .labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE

_LAZY = ("DATASETS", "SegmentationDataset", "DatasetLayoutError", "build_dataset", "get_dataset_class")

__all__ = ["CLASS_NAMES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from . import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
