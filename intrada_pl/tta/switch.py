"""The BN calibration methods (manual, BN-adapt, InstCal; plain ``none``) on one shared converted
model: each switches the layers' mode before its forward, a fill of ~100 small buffers, so a grid
of strengths or layer selections costs no extra memory."""

from __future__ import annotations

from torch import Tensor, nn

from intrada_pl.models.bn_calibration import set_calibration_mode
from intrada_pl.models.channel_calibration import METHOD_MODES, calibration_sites, set_site_mode


class CalibrationSwitch(nn.Module):
    """A non-TENT method on a shared converted model: set the mode (on ``layers`` only, the rest
    uncalibrated; None: all), then run it. Channel methods (``chancal_*``, ``test_stats``) switch
    the channel calibration sites (BatchNorms included); BN methods switch the BatchNorms, with any
    channel site off."""

    def __init__(self, model: nn.Module, calibration: str, strength: float | None, layers: frozenset[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.calibration = calibration
        self.strength = strength
        self.layers = layers
        self.has_sites = any(name.endswith(("chancal_in", "chancal_out")) for name in calibration_sites(model))

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
        if self.calibration in METHOD_MODES:
            set_site_mode(self.model, METHOD_MODES[self.calibration], self.strength, self.layers)  # type: ignore[arg-type]
        else:
            if self.has_sites:
                set_site_mode(self.model, "none")
            set_calibration_mode(self.model, self.calibration, self.strength, self.layers)  # type: ignore[arg-type]
        return self.model(images)

    def reset(self) -> None:
        """Stateless between images: nothing to reset."""
