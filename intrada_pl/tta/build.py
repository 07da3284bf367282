"""One module per test-time method for a loaded segmenter, each mapping images to ``(aux, main)``
logits and having ``reset()`` (a new target is a new stream).

Every non-TENT method of one checkpoint shares one converted model and switches its mode before
each forward (:class:`~intrada_pl.tta.switch.CalibrationSwitch`, :class:`~intrada_pl.tta.adabn.AdaBN`),
so a grid of strengths costs no extra memory; a TENT method owns a copy, because it changes its weights.
"""

from __future__ import annotations

import copy

from torch import nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.models.bn_calibration import LEARNED_MODES, convert_batchnorm, set_calibration_mode
from intrada_pl.models.channel_calibration import configure_tent_ln, select_sites
from intrada_pl.models.factory import SegmenterInfo
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.tta.adabn import AdaBN
from intrada_pl.tta.layers import restore_batchnorm, select_layers
from intrada_pl.tta.spec import CHANNEL_METHODS, MethodSpec
from intrada_pl.tta.switch import CalibrationSwitch
from intrada_pl.tta.tent import Tent, configure_tent


def build_test_methods(
    model: Segmenter,
    info: SegmenterInfo,
    methods: list[MethodSpec],
    tent_lr: float = 1e-3,
    tent_steps: int = 1,
    tent_episodic: bool = False,
) -> list[nn.Module]:
    """One module per method for the segmenter ``model`` loaded from ``info.path``. Converts
    ``model`` in place (mode ``none`` is exactly eval-mode BN); learned modes need a checkpoint
    calibrated in that mode; ``adabn`` methods (:class:`AdaBN`) need their target statistics
    before the first image."""
    learned = info.calibration
    for method in methods:
        needed = _needed_calibration(method.calibration, learned)
        if needed is not None:
            have = f"calibrated with {learned}" if learned else "not calibrated"
            raise ConfigValueError(
                f"{method.name} needs a checkpoint calibrated with {needed}, but {info.path} is {have}; "
                f"train one with: intrada fit --config configs/calib_gta5{'_c' if needed.endswith('_c') else ''}.yaml "
                f"--model.init_ckpt {info.path}" + (" --model.calibration " + needed if needed.startswith("chancal") else "")
            )
    if learned is None:
        convert_batchnorm(model, "none")
    built: list[nn.Module] = []
    for method in methods:
        select = select_sites if method.calibration in CHANNEL_METHODS else select_layers
        layers = select(model, method.layers) if method.layers else None
        if method.calibration == "adabn":
            built.append(AdaBN(model, layers))
            continue
        if not method.tent:
            built.append(CalibrationSwitch(model, method.calibration, method.strength, layers))
            continue
        own = copy.deepcopy(model)
        if method.calibration == "none":
            restore_batchnorm(own)
        else:
            set_calibration_mode(own, method.calibration, layers=layers)  # type: ignore[arg-type]
        configure = configure_tent_ln if method.tent == "tent_ln" else configure_tent
        built.append(Tent(own, lr=tent_lr, steps=tent_steps, episodic=tent_episodic, configure=configure))
    return built


def _needed_calibration(method: str, learned: str | None) -> str | None:
    """The calibration checkpoint a method needs that ``learned`` is not, or None: InstCal's
    learned strengths, channel calibration's learned strengths, or (manual and image-statistics
    channel methods) any channel calibration checkpoint, which holds the source moments."""
    if method in LEARNED_MODES or method in ("chancal_u", "chancal_c"):
        return None if method == learned else method
    if method in CHANNEL_METHODS:
        return None if learned in ("chancal_u", "chancal_c") else "chancal_u"
    return None
