"""One way for stages and callbacks to show pictures, tables and figures, whichever dashboards the
run has: W&B (masks with class names, sortable tables), TensorBoard (images, markdown tables), or
none (every call is a no-op). No other module checks logger types or imports wandb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from intrada_pl.data.datasets import read_rgb
from intrada_pl.visuals import CLASS_LABELS, mask_panel

Picture = np.ndarray | str | Path  # an HxWx3 uint8 RGB array, or a PNG file


class Dashboards:
    """The pictorial side of a run's loggers.

    ``images(key, pictures, step, captions, masks)``: ``masks`` gives per picture a mapping such as
    ``{"ground_truth": train_ids, "predictions": train_ids}`` (HxW uint8), shown as toggleable
    overlays with class names in W&B; TensorBoard gets each picture beside its masks in colour,
    titled, with a class legend (:func:`~intrada_pl.visuals.mask_panel`). ``table(key, columns,
    rows, step)``: cells may be numbers, strings or pictures (arrays, or ``Path`` objects of PNG
    files); TensorBoard gets a markdown table and the pictures as images ``key/<row>_<column>``.
    ``figure(key, path, step)``: a saved figure (PNG). ``scalars(values, step)``: numbers, for
    what is not logged through ``self.log``.
    """

    def __init__(self, loggers: Sequence[Logger]) -> None:
        self.wandb = [logger for logger in loggers if isinstance(logger, WandbLogger)]
        self.tensorboard = [logger for logger in loggers if isinstance(logger, TensorBoardLogger)]

    @classmethod
    def of(cls, trainer: Any) -> Dashboards:
        """The dashboards of ``trainer`` on the process that logs (rank 0); none elsewhere."""
        return cls(trainer.loggers if trainer.is_global_zero else [])

    @property
    def shows_pictures(self) -> bool:
        """Whether any dashboard takes pictures (callers skip building them otherwise)."""
        return bool(self.wandb or self.tensorboard)

    @property
    def shows_tables(self) -> bool:
        return bool(self.wandb or self.tensorboard)

    def images(self, key: str, pictures: Sequence[Picture], step: int, captions: Sequence[str] | None = None,
               masks: Sequence[Mapping[str, np.ndarray]] | None = None) -> None:
        if not pictures:
            return
        for logger in self.wandb:
            kwargs: dict[str, Any] = {"caption": list(captions)} if captions else {}
            if masks is not None:
                kwargs["masks"] = [{name: {"mask_data": mask, "class_labels": CLASS_LABELS} for name, mask in m.items()} for m in masks]
            logger.log_image(key, images=[_wandb_source(p) for p in pictures], step=step, **kwargs)
        for logger in self.tensorboard:
            for i, picture in enumerate(pictures):
                array = _array(picture) if masks is None else mask_panel(_array(picture), masks[i])
                logger.experiment.add_image(f"{key}/{i}", array, step, dataformats="HWC")

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
        for logger in self.wandb:
            import wandb  # a dependency, but 0.5 s to import: only when a W&B logger is there

            cells = [[wandb.Image(_wandb_source(c)) if _is_picture(c) else c for c in row] for row in rows]
            logger.log_table(key, columns=list(columns), data=cells, step=step)
        for logger in self.tensorboard:
            lines = ["| " + " | ".join(map(_markdown, columns)) + " |", "|" + "---|" * len(columns)]
            for r, row in enumerate(rows):
                cells = []
                for c, cell in enumerate(row):
                    if _is_picture(cell):
                        logger.experiment.add_image(f"{key}/{r}_{c}", _array(cell), step or 0, dataformats="HWC")
                        cell = f"(image {key}/{r}_{c})"
                    cells.append(_markdown(cell))
                lines.append("| " + " | ".join(cells) + " |")
            logger.experiment.add_text(key, "\n".join(lines), step or 0)

    def figure(self, key: str, path: str | Path, step: int | None = None) -> None:
        """A figure already saved as PNG (:func:`intrada_pl.visuals.write_figure`)."""
        self.images(key, [path], step if step is not None else 0)

    def scalars(self, values: Mapping[str, float], step: int | None = None) -> None:
        for logger in [*self.wandb, *self.tensorboard]:
            logger.log_metrics(dict(values), step=step)


def _is_picture(cell: Any) -> bool:
    """A table cell to show as a picture: an HxWx3 array or a ``Path`` (a ``str`` stays text: image names)."""
    return isinstance(cell, Path) or isinstance(cell, np.ndarray) and cell.ndim == 3


def _markdown(cell: Any) -> str:
    """A markdown table cell: its text with ``|`` escaped (a column name may hold one)."""
    return str(cell).replace("|", "\\|")


def _wandb_source(picture: Picture) -> np.ndarray | str:
    return str(picture) if isinstance(picture, (str, Path)) else picture


def _array(picture: Picture) -> np.ndarray:
    return picture if isinstance(picture, np.ndarray) else read_rgb(picture)
