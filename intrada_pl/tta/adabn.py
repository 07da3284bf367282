"""AdaBN (Li et al. 2016) at test time: plain eval-mode BN normalising with the target's
statistics (estimated and cached by :mod:`intrada_pl.tta.statistics`)."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call

from intrada_pl.models.bn_calibration import set_calibration_mode
from intrada_pl.tta.layers import batchnorm_names
from intrada_pl.tta.statistics import Statistics


class AdaBN(nn.Module):
    """AdaBN on a shared converted model: plain eval-mode BN whose running statistics are, on
    ``layers`` (None: all), the target's (:meth:`use_statistics`, once per target).

    The statistics are passed to the forward with ``functional_call``, so the shared model and
    the other methods on it never see them.
    """

    def __init__(self, model: nn.Module, layers: frozenset[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.layers = layers
        self.overrides: dict[str, Tensor] = {}

    def use_statistics(self, statistics: Statistics) -> None:
        """Normalise the selected layers with ``statistics`` from now on (model's device and dtype)."""
        names = self.layers or batchnorm_names(self.model)
        if missing := set(names) - set(statistics):
            raise ValueError(f"AdaBN statistics lack the BatchNorm layer(s) {', '.join(sorted(missing))}")
        self.overrides = {}
        for name in names:
            for key, value in statistics[name].items():
                buffer = self.model.get_buffer(f"{name}.running_{key}")
                self.overrides[f"{name}.running_{key}"] = value.to(buffer.device, buffer.dtype)

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        if not self.overrides:
            raise RuntimeError("AdaBN has no target statistics: call use_statistics() (intrada test does, per target)")
        set_calibration_mode(self.model, "none")
        return functional_call(self.model, self.overrides, (images,))

    def reset(self) -> None:
        """Stateless between images (the statistics change per target, by use_statistics())."""
