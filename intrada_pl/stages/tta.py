"""Test-time methods for ``intrada test``: BN calibration (none / manual / BN-adapt / InstCal) and TENT.

A method is named by a string (REFERENCE B3, B5.1):

- ``none``: plain eval-mode BN (source statistics);
- ``manual`` / ``manual@M``: a fixed mix ``m`` of source and per-image statistics (``M`` in the name,
  else the evaluator's ``strength``);
- ``bn_adapt``: per-image statistics (``m = 1``);
- ``instcal_u`` / ``instcal_c``: the strengths learned by :class:`~intrada_pl.stages.calibration.CalibrationModule`
  (needs its checkpoint);
- ``tent``: TENT (Wang et al. 2021) on the plain model: BN in batch-statistics mode, entropy
  minimisation on the BN affine parameters only;
- ``instcal_u+tent`` / ``instcal_c+tent``: InstCal normalisation, then TENT steps on gamma/beta.

Every non-TENT method of one checkpoint shares one converted model and switches its mode before
each forward (a fill of ~100 small buffers), so a grid of strengths costs no extra memory; a
TENT method owns a copy, because it changes its weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
    "instcal_u",
    "instcal_c",
    "tent",
    "instcal_u+tent",
    "instcal_c+tent",
)
Outputs = tuple[Tensor | None, Tensor]  # DeepLabV2's (aux, main) logits


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: the BN calibration mode, its manual strength, and whether TENT follows."""

    name: str
    calibration: str
    strength: float | None = None
    tent: bool = False

    @classmethod
    def parse(cls, spec: str, default_strength: float = 0.1) -> MethodSpec:
        """``manual@0.3`` -> manual with m = 0.3; ``manual`` takes ``default_strength``."""
        base, _, value = spec.partition("@")
        if base not in TEST_METHODS:
            raise ValueError(f"unknown test-time method {spec!r}; choose from {', '.join(TEST_METHODS)} (manual@M for a strength)")
        if value and base != "manual":
            raise ValueError(f"only manual takes a strength ('manual@0.3'), got {spec!r}")
        calibration, _, tent = base.partition("+")
        if base == "tent":
            calibration, tent = "none", "tent"
        strength = None
        if calibration == "manual":
            strength = float(value) if value else float(default_strength)
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"manual strength must lie in [0, 1], got {spec!r}")
        name = f"manual@{strength:g}" if strength is not None else base
        return cls(name=name, calibration=calibration, strength=strength, tent=bool(tent))


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
            raise ValueError(f"TENT needs at least one step, got {steps}")
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
    """A non-TENT method on a shared converted model: set the mode, then run it."""

    def __init__(self, model: nn.Module, calibration: str, strength: float | None) -> None:
        super().__init__()
        self.model = model
        self.calibration = calibration
        self.strength = strength

    def forward(self, images: Tensor) -> Outputs:
        set_calibration_mode(self.model, self.calibration, self.strength)  # type: ignore[arg-type]
        return self.model(images)

    def reset(self) -> None:
        """Stateless between images: nothing to reset."""


def build_test_methods(
    model: nn.Module,
    info: dict,
    methods: list[MethodSpec],
    tent_lr: float = 1e-3,
    tent_steps: int = 1,
    tent_episodic: bool = False,
) -> list[nn.Module]:
    """One module per method for the segmenter ``model`` loaded from ``info["path"]``; each maps
    images to ``(aux, main)`` logits and has ``reset()``. Converts ``model`` in place (mode
    ``none`` is exactly eval-mode BN); learned modes need a checkpoint calibrated in that mode."""
    learned = info.get("calibration")
    for method in methods:
        if method.calibration in LEARNED_MODES and method.calibration != learned:
            have = f"calibrated with {learned}" if learned else "not calibrated"
            raise ValueError(
                f"{method.name} needs a checkpoint calibrated with {method.calibration}, but {info['path']} is {have}; "
                f"train one with: intrada fit --config configs/calib_gta5{'_c' if method.calibration == 'instcal_c' else ''}.yaml "
                f"--model.init_ckpt {info['path']}"
            )
    if learned is None:
        convert_batchnorm(model, "none")
    built: list[nn.Module] = []
    for method in methods:
        if not method.tent:
            built.append(CalibrationSwitch(model, method.calibration, method.strength))
            continue
        own = copy.deepcopy(model)
        if method.calibration == "none":
            restore_batchnorm(own)
        else:
            set_calibration_mode(own, method.calibration)  # type: ignore[arg-type]
        built.append(Tent(own, lr=tent_lr, steps=tent_steps, episodic=tent_episodic))
    return built
