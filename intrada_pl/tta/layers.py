"""The BatchNorm layers test-time methods act on: their names, the ones a ``METHOD[TERM,...]``
selection picks (groups come from the segmenter, so the syntax works on any network), and the
plain BatchNorm a converted model goes back to for TENT and AdaBN's estimation pass."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.models.bn_calibration import CalibratedBatchNorm
from intrada_pl.models.segmenter import Segmenter


def batchnorm_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's BatchNorm layers (calibrated or plain), in model order."""
    kinds = (CalibratedBatchNorm, nn.modules.batchnorm._BatchNorm)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def _matching(names: Sequence[str], patterns: Sequence[str]) -> set[str]:
    return {n for n in names if any(fnmatchcase(n, p) for p in patterns)}


def groups_with_batchnorm(model: Segmenter) -> list[str]:
    """The segmenter's layer groups that hold BatchNorm layers, in network order (what
    ``intrada calibrate-layers`` studies by default; DeepLabV2's convolution-only heads are not)."""
    names = batchnorm_names(model)
    return [group for group, patterns in model.layer_groups().items() if _matching(names, patterns)]


def select_layers(model: Segmenter, terms: Sequence[str]) -> frozenset[str]:
    """The BatchNorm layers of ``model`` that ``terms`` pick: a term is one of the segmenter's
    :meth:`~intrada_pl.models.segmenter.Segmenter.layer_groups` or a shell-style pattern on
    qualified names, ``-TERM`` leaves its layers out (alone: all layers but those).

    Matched against the BatchNorm layers, calibrated ones included (which ``Segmenter.layers_in_group``,
    over the plain normalisation types, would miss). A term that matches no BatchNorm layer is
    refused, so a typo or a group without BN (DeepLabV2's ``heads``) is an error rather than a
    silently uncalibrated model.
    """
    names = batchnorm_names(model)
    groups = model.layer_groups()
    picked: list[set[str]] = []
    dropped: list[set[str]] = []
    for term in terms:
        key = term.removeprefix("-")
        patterns = groups.get(key, (key,))
        matched = _matching(names, patterns)
        if not matched:
            what = f"layer group {key!r} ({', '.join(patterns)})" if key in groups else f"pattern {key!r}"
            raise ConfigValueError(
                f"{what} matches no BatchNorm layer of this {type(model).__name__}; groups with BatchNorms: "
                f"{', '.join(groups_with_batchnorm(model)) or 'none'}; patterns match qualified names such as {', '.join(names[:3])}"
            )
        (dropped if term.startswith("-") else picked).append(matched)
    selected = set().union(*picked) if picked else set(names)
    selected -= set().union(*dropped)
    if not selected:
        raise ConfigValueError(f"the layer selection [{','.join(terms)}] leaves no BatchNorm layer")
    return frozenset(selected)


def restore_batchnorm(model: nn.Module) -> int:
    """Inverse of ``convert_batchnorm``: plain BatchNorm2d layers holding the frozen source
    gamma/beta/statistics, for TENT (which normalises with batch statistics and back-propagates
    through them, unlike the calibrated layers' stop-gradient statistics) and AdaBN's estimation
    pass. Returns the count."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, CalibratedBatchNorm)]
    for name, layer in layers:
        factory = {"device": layer.running_mean.device, "dtype": layer.running_mean.dtype}
        bn = nn.BatchNorm2d(layer.num_features, eps=layer.eps, affine=layer.affine, **factory).eval()
        with torch.no_grad():
            bn.running_mean.copy_(layer.running_mean)
            bn.running_var.copy_(layer.running_var)
            if layer.affine:
                bn.weight.copy_(layer.weight)
                bn.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, bn)
    return len(layers)
