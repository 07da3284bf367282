"""Test-time methods for ``intrada test``: BN calibration (none / manual / BN-adapt / InstCal) and TENT.

A method is named by a string (REFERENCE B3, B5.1):

- ``none``: plain eval-mode BN (source statistics);
- ``manual`` / ``manual@M``: a fixed mix ``m`` of source and per-image statistics (``M`` in the name,
  else the evaluator's ``strength``);
- ``bn_adapt``: per-image statistics (``m = 1``);
- ``adabn``: AdaBN (Li et al. 2016): plain eval-mode BN with every layer's statistics re-estimated
  on the target's training images (:mod:`intrada_pl.stages.adabn`);
- ``instcal_u`` / ``instcal_c``: the strengths learned by :class:`~intrada_pl.stages.calibration.CalibrationModule`
  (needs its checkpoint);
- ``tent``: TENT (Wang et al. 2021) on the plain model: BN in batch-statistics mode, entropy
  minimisation on the BN affine parameters only;
- ``instcal_u+tent`` / ``instcal_c+tent``: InstCal normalisation, then TENT steps on gamma/beta.

Any method but ``none`` and ``tent`` can be restricted to some BatchNorm layers with a suffix
``METHOD[TERM,...]``: a term is a layer group (:data:`LAYER_GROUPS`) or a shell-style pattern on the
layer's qualified name (``layer4.*.bn2``, ``*.downsample.*``); ``-TERM`` leaves those layers out
(alone: all layers but those). Layers outside the selection are plain eval-mode BN (``m = 0``).

Every non-TENT method of one checkpoint shares one converted model and switches its mode before
each forward (a fill of ~100 small buffers), so a grid of strengths costs no extra memory; a
TENT method owns a copy, because it changes its weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn
from torch.func import functional_call

from intrada_pl.errors import ConfigValueError
from intrada_pl.losses import entropy_loss
from intrada_pl.models.bn_calibration import (
    LEARNED_MODES,
    CalibratedBatchNorm,
    convert_batchnorm,
    set_calibration_mode,
)

TEST_METHODS: tuple[str, ...] = (
    "none",
    "manual",
    "bn_adapt",
    "adabn",
    "instcal_u",
    "instcal_c",
    "tent",
    "instcal_u+tent",
    "instcal_c+tent",
)
Outputs = tuple[Tensor | None, Tensor]  # DeepLabV2's (aux, main) logits
Statistics = Mapping[str, Mapping[str, Tensor]]  # BN layer name -> {"mean", "var"}

# DeepLabV2's module names (intrada_pl.models.deeplabv2). Its ASPP heads are convolutions
# only: "heads" holds no BatchNorm, so selecting it is refused.
LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "stem": ("bn1",),
    "layer1": ("layer1.*",),
    "layer2": ("layer2.*",),
    "layer3": ("layer3.*",),
    "layer4": ("layer4.*",),
    "heads": ("layer5.*", "layer6.*"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: the BN calibration mode, its manual strength, whether TENT follows,
    and the layer selection terms it is restricted to (empty: every layer)."""

    name: str
    calibration: str
    strength: float | None = None
    tent: bool = False
    layers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, default_strength: float = 0.1) -> MethodSpec:
        """``manual@0.3`` -> manual with m = 0.3; ``manual`` takes ``default_strength``;
        ``bn_adapt[layer1,-layer1.0.*]`` -> BN-adapt on those layers only."""
        head, bracket, selection = spec.partition("[")
        layers = tuple(term.strip() for term in selection.removesuffix("]").split(",")) if bracket else ()
        if bracket and (not selection.endswith("]") or not all(t.removeprefix("-") for t in layers)):
            raise ConfigValueError(f"bad layer selection in {spec!r}: expected METHOD[TERM,...] with non-empty terms")
        base, _, value = head.partition("@")
        if base not in TEST_METHODS:
            raise ConfigValueError(f"unknown test-time method {spec!r} (--calibration); choose from {', '.join(TEST_METHODS)} (manual@M for a strength, METHOD[GROUP,...] for some layers)")
        if value and base != "manual":
            raise ConfigValueError(f"only manual takes a strength ('manual@0.3'), got {spec!r} (--calibration)")
        calibration, _, tent = base.partition("+")
        if base == "tent":
            calibration, tent = "none", "tent"
        strength = None
        if calibration == "manual":
            where = f"--calibration {spec}" if value else f"--strength {default_strength}"
            try:
                strength = float(value or default_strength)
            except ValueError:
                raise ConfigValueError(f"manual@M takes a number M in [0, 1], got {spec!r} (--calibration)") from None
            if not 0.0 <= strength <= 1.0:
                raise ConfigValueError(f"manual strength M must lie in [0, 1] (0: source statistics, 1: the image's), got {where}")
        if layers and calibration == "none":
            raise ConfigValueError(f"{base} has no BatchNorm calibration to restrict to layers ({spec!r}, --calibration)")
        name = f"manual@{strength:g}" if strength is not None else base
        if layers:
            name += f"[{','.join(layers)}]"
        return cls(name=name, calibration=calibration, strength=strength, tent=bool(tent), layers=layers)


def batchnorm_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's BatchNorm layers (calibrated or plain), in model order."""
    kinds = (CalibratedBatchNorm, nn.modules.batchnorm._BatchNorm)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def select_layers(model: nn.Module, terms: Sequence[str]) -> frozenset[str]:
    """The BatchNorm layers of ``model`` that ``terms`` pick (see the module docstring).

    A term that matches no BatchNorm layer is refused, so a typo or a group without BN
    (DeepLabV2's ``heads``) is an error rather than a silently uncalibrated model.
    """
    names = batchnorm_names(model)
    picked: list[set[str]] = []
    dropped: list[set[str]] = []
    for term in terms:
        key = term.removeprefix("-")
        patterns = LAYER_GROUPS.get(key, (key,))
        matched = {n for n in names if any(fnmatchcase(n, p) for p in patterns)}
        if not matched:
            what = f"layer group {key!r} ({', '.join(patterns)})" if key in LAYER_GROUPS else f"pattern {key!r}"
            groups = [g for g, ps in LAYER_GROUPS.items() if any(fnmatchcase(n, p) for n in names for p in ps)]
            raise ConfigValueError(
                f"{what} matches no BatchNorm layer of this model{' (DeepLabV2 heads are convolutions only)' if key == 'heads' else ''}; groups with "
                f"BatchNorms: {', '.join(groups)}; patterns match qualified names such as {', '.join(names[:3])}"
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
    through them, unlike the calibrated layers' stop-gradient statistics). Returns the count."""
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


def _trainable_affine(layer: CalibratedBatchNorm) -> list[nn.Parameter]:
    """Turn a calibrated layer's frozen gamma/beta buffers into Parameters (InstCal + TENT)."""
    params = []
    for key in ("weight", "bias"):
        value = getattr(layer, key)
        if value is None:
            continue
        delattr(layer, key)  # drops the buffer; the Parameter takes its name and state-dict key
        layer.register_parameter(key, nn.Parameter(value.detach().clone()))
        params.append(getattr(layer, key))
    return params


def configure_tent(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the BN affine parameters and return them (TENT's ``configure_model``).

    Plain BatchNorm2d / SyncBatchNorm switch to batch statistics for good (running statistics
    dropped, as in the official code, so train/eval mode no longer matters); calibrated layers
    keep their calibrated statistics and get trainable gamma/beta.
    """
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, CalibratedBatchNorm):
            params += _trainable_affine(module)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.BatchNorm1d, nn.BatchNorm3d)):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            for p in (module.weight, module.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
    if not params:
        raise ValueError("TENT found no BatchNorm affine parameters to adapt")
    return params


class Tent(nn.Module):
    """TENT around a segmenter: per forward, ``steps`` Adam steps on the mean pixel entropy of the
    main head (averaged over pixels and batch), updating BN affine parameters only.

    As in the official ``forward_and_adapt``, the prediction returned is the one the last step's
    loss was computed on, so ``episodic`` with one step predicts like BN in batch-statistics
    mode; ``episodic`` restores weights and optimizer after every call, otherwise adaptation
    carries on from image to image (``reset()`` starts a new stream). The entropy is normalised
    by log(C), a constant factor that Adam's update is invariant to.

    Gradients are needed inside Lightning's test loop, which runs under ``inference_mode``: the
    step leaves it and clones the input, so it works under ``inference_mode``, ``no_grad`` or neither.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, steps: int = 1, episodic: bool = False) -> None:
        super().__init__()
        if steps < 1:
            raise ConfigValueError(f"TENT needs at least one step, got {steps}")
        self.model = model
        self.steps = steps
        self.episodic = episodic
        self.params = configure_tent(model)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        self._initial_optimizer = copy.deepcopy(self.optimizer.state_dict())
        self._initial_params: list[Tensor] | None = None  # taken at the first call, on the run's device

    def forward(self, images: Tensor) -> Outputs:
        with torch.inference_mode(False), torch.enable_grad():
            if self._initial_params is None:
                self._initial_params = [p.detach().clone() for p in self.params]
            x = images.clone()  # an inference-mode input cannot enter an autograd graph
            for _ in range(self.steps):
                outputs = self.model(x)
                entropy_loss(outputs[1]).backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if self.episodic:
                self.reset()
        aux, main = outputs
        return (None if aux is None else aux.detach()), main.detach()

    def reset(self) -> None:
        """Back to the source weights and a fresh optimizer (a new episode or stream)."""
        with torch.inference_mode(False), torch.no_grad():
            if self._initial_params is not None:
                for p, initial in zip(self.params, self._initial_params):
                    p.copy_(initial)
            self.optimizer.load_state_dict(copy.deepcopy(self._initial_optimizer))


class CalibrationSwitch(nn.Module):
    """A non-TENT method on a shared converted model: set the mode (on ``layers`` only, the rest
    plain BN; None: all), then run it."""

    def __init__(self, model: nn.Module, calibration: str, strength: float | None, layers: frozenset[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.calibration = calibration
        self.strength = strength
        self.layers = layers

    def forward(self, images: Tensor) -> Outputs:
        set_calibration_mode(self.model, self.calibration, self.strength, self.layers)  # type: ignore[arg-type]
        return self.model(images)

    def reset(self) -> None:
        """Stateless between images: nothing to reset."""


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

    def forward(self, images: Tensor) -> Outputs:
        if not self.overrides:
            raise RuntimeError("AdaBN has no target statistics: call use_statistics() (intrada test does, per target)")
        set_calibration_mode(self.model, "none")
        return functional_call(self.model, self.overrides, (images,))

    def reset(self) -> None:
        """Stateless between images (the statistics change per target, by use_statistics())."""


def build_test_methods(
    model: nn.Module,
    info: SegmenterInfo,
    methods: list[MethodSpec],
    tent_lr: float = 1e-3,
    tent_steps: int = 1,
    tent_episodic: bool = False,
) -> list[nn.Module]:
    """One module per method for the segmenter ``model`` loaded from ``info.path``; each maps
    images to ``(aux, main)`` logits and has ``reset()``. Converts ``model`` in place (mode
    ``none`` is exactly eval-mode BN); learned modes need a checkpoint calibrated in that mode;
    ``adabn`` methods (:class:`AdaBN`) need their target statistics before the first image."""
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
