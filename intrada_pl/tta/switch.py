"""The BN calibration methods (manual, BN-adapt, InstCal; plain ``none``) on one shared converted
model: each switches the layers' mode before its forward, a fill of ~100 small buffers, so a grid
of strengths or layer selections costs no extra memory."""

from __future__ import annotations

from torch import Tensor, nn

from intrada_pl.models.bn_calibration import set_calibration_mode


class CalibrationSwitch(nn.Module):
    """A non-TENT method on a shared converted model: set the mode (on ``layers`` only, the rest
    plain BN; None: all), then run it."""

    def __init__(self, model: nn.Module, calibration: str, strength: float | None, layers: frozenset[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.calibration = calibration
        self.strength = strength
        self.layers = layers

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        set_calibration_mode(self.model, self.calibration, self.strength, self.layers)  # type: ignore[arg-type]
        return self.model(images)

    def reset(self) -> None:
        """Stateless between images: nothing to reset."""
