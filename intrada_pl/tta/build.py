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
from intrada_pl.models.factory import SegmenterInfo
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.tta.adabn import AdaBN
from intrada_pl.tta.layers import restore_batchnorm, select_layers
from intrada_pl.tta.spec import MethodSpec
from intrada_pl.tta.switch import CalibrationSwitch
from intrada_pl.tta.tent import Tent


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
        if method.calibration in LEARNED_MODES and method.calibration != learned:
            have = f"calibrated with {learned}" if learned else "not calibrated"
            raise ConfigValueError(
                f"{method.name} needs a checkpoint calibrated with {method.calibration}, but {info.path} is {have}; "
                f"train one with: intrada fit --config configs/calib_gta5{'_c' if method.calibration == 'instcal_c' else ''}.yaml "
                f"--model.init_ckpt {info.path}"
            )
    if learned is None:
        convert_batchnorm(model, "none")
    built: list[nn.Module] = []
    for method in methods:
        layers = select_layers(model, method.layers) if method.layers else None
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
        built.append(Tent(own, lr=tent_lr, steps=tent_steps, episodic=tent_episodic))
    return built
