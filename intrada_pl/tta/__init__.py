"""Test-time methods for ``intrada test --method``: their names (:mod:`~intrada_pl.tta.spec`), the
BatchNorm layers they act on (:mod:`~intrada_pl.tta.layers`), BN calibration on a shared model
(none / manual / BN-adapt / InstCal, :mod:`~intrada_pl.tta.switch`), TENT (:mod:`~intrada_pl.tta.tent`),
AdaBN (:mod:`~intrada_pl.tta.adabn`) and its statistics and cache (:mod:`~intrada_pl.tta.statistics`),
and one module per method for a loaded segmenter (:mod:`~intrada_pl.tta.build`)."""

from intrada_pl.tta.adabn import AdaBN
from intrada_pl.tta.build import build_test_methods
from intrada_pl.tta.layers import batchnorm_names, groups_with_batchnorm, restore_batchnorm, select_layers
from intrada_pl.tta.spec import TEST_METHODS, MethodSpec
from intrada_pl.tta.statistics import DEFAULT_CACHE, Statistics, estimate_statistics, target_statistics
from intrada_pl.tta.switch import CalibrationSwitch
from intrada_pl.tta.tent import Tent, configure_tent

__all__ = [
    "DEFAULT_CACHE",
    "TEST_METHODS",
    "AdaBN",
    "CalibrationSwitch",
    "MethodSpec",
    "Statistics",
    "Tent",
    "batchnorm_names",
    "build_test_methods",
    "configure_tent",
    "estimate_statistics",
    "groups_with_batchnorm",
    "restore_batchnorm",
    "select_layers",
    "target_statistics",
]
