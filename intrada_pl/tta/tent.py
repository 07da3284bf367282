"""TENT (Wang et al. 2021): entropy minimisation on the BatchNorm affine parameters, image after image."""

from __future__ import annotations

from collections.abc import Callable

import copy

import torch
from torch import Tensor, nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.losses import entropy_loss
from intrada_pl.models.bn_calibration import CalibratedBatchNorm


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

    def __init__(self, model: nn.Module, lr: float = 1e-3, steps: int = 1, episodic: bool = False,
                 configure: Callable[[nn.Module], list[nn.Parameter]] = configure_tent) -> None:
        super().__init__()
        if steps < 1:
            raise ConfigValueError(f"TENT needs at least one step, got {steps}")
        self.model = model
        self.steps = steps
        self.episodic = episodic
        self.params = configure(model)  # the normalisation parameters TENT adapts (BN's; LayerNorm's: tent_ln)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
        self._initial_optimizer = copy.deepcopy(self.optimizer.state_dict())
        self._initial_params: list[Tensor] | None = None  # taken at the first call, on the run's device

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:
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
