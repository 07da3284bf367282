"""Photometric strong augmentation for learning the BN calibration (REFERENCE.md B2, B7.2).

InstCal learns its calibration strengths from the ordinary supervised loss on strongly
augmented *source* images, so every op here is photometric: pixels change, geometry does not,
and the labels stay valid without being touched. torchvision's RandAugment / AugMix cannot be
used as they are (they include shear / translate / rotate and refuse masks, STACK.md §7), so
this module re-builds them from the photometric ops only.

All augmenters take a batch ``B x 3 x H x W`` of RGB pixels, ``uint8`` or float in 0..255, on
any device, draw one random choice per *sample*, and return the same shape, dtype and range
(clamped to [0, 255]; uint8 is rounded). Randomness comes from ``torch``'s global RNG (so
``torch.manual_seed`` makes a call reproducible) or from a ``torch.Generator`` passed to the
constructor or the call.

- :class:`PhotometricRandAugment`: RandAugment (N ops at magnitude M of ``num_bins``) over
  Identity, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize.
- :class:`PhotometricAugMix`: AugMix (``width`` chains of depth 1-3, Dirichlet chain weights,
  Beta blend with the original) over the same photometric ops minus Identity.
- :class:`DeepAugment`: an image-to-image network with randomly distorted weights. Without a
  weight file: Noise2Net (random Res2Net-style network, one per image, new every call). With the
  hendrycks/imagenet-r CAE weight file: the compressive autoencoder with random weight and latent
  distortions. Outputs are clamped to the valid range (the InstCal reference does not clamp).
- :class:`StrongAugment`: picks one of the configured augmenters per sample (or keeps it clean)
  and records the choice in ``last_choices`` for logging.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

__all__ = [
    "AUGMIX_OPS",
    "RANDAUGMENT_OPS",
    "STRONG_AUGMENT_OPS",
    "CAEDistortion",
    "DeepAugment",
    "Noise2Net",
    "PhotometricAugMix",
    "PhotometricRandAugment",
    "StrongAugment",
]

RANDAUGMENT_OPS: tuple[str, ...] = (
    "identity",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
# AugMix: no identity; the first four are the original AugMix photometric set, the last four are
# its `all_ops` additions (which overlap with ImageNet-C corruptions, irrelevant here).
AUGMIX_OPS: tuple[str, ...] = (
    "autocontrast",
    "equalize",
    "posterize",
    "solarize",
    "brightness",
    "color",
    "contrast",
    "sharpness",
)
# Names StrongAugment accepts; "deepaugment" means CAE when a weight file is given, else Noise2Net.
STRONG_AUGMENT_OPS: tuple[str, ...] = ("randaugment", "augmix", "deepaugment", "noise2net", "cae")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------- helpers
def _to_unit(x: Tensor) -> Tensor:
    """uint8 / float 0..255 -> float32 0..1 (a new tensor)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W RGB batch, got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise TypeError(f"expected uint8 or float pixels in 0..255, got {x.dtype}")
    return x.float().div(255.0)


def _from_unit(x01: Tensor, like: Tensor) -> Tensor:
    """float 0..1 -> the dtype of ``like`` in 0..255, clamped (uint8 is rounded)."""
    out = x01.mul(255.0).clamp_(0.0, 255.0)
    if like.dtype == torch.uint8:
        return out.round_().to(torch.uint8)
    return out.to(like.dtype)


def _randint(high: int, size: Sequence[int], gen: torch.Generator | None, low: int = 0) -> Tensor:
    """Integer draws on the CPU (they steer Python control flow)."""
    device = gen.device if gen is not None else "cpu"
    return torch.randint(low, high, tuple(size), generator=gen, device=device).cpu()


def _rand(size: Sequence[int], gen: torch.Generator | None, device: torch.device | str = "cpu") -> Tensor:
    """U[0, 1) draws: on ``device`` from the global RNG, or from ``gen`` on its own device."""
    if gen is None:
        return torch.rand(tuple(size), device=device)
    return torch.rand(tuple(size), generator=gen, device=gen.device).to(device)


def _numpy_rng(gen: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from the torch RNG (Dirichlet / Beta draws with a seed)."""
    return np.random.default_rng(int(_randint(2**62, (1,), gen)))


def _apply_op(x01: Tensor, op: str, level: float, negative: bool, posterize_base: int) -> Tensor:
    """One photometric op on a float 0..1 batch; ``level`` in [0, 1] is the magnitude bin
    divided by the last bin (torchvision's magnitude tables)."""
    if op == "identity":
        return x01
    if op in ("brightness", "color", "contrast", "sharpness"):
        factor = 1.0 + (-0.9 if negative else 0.9) * level
        fn = {
            "brightness": TF.adjust_brightness,
            "color": TF.adjust_saturation,
            "contrast": TF.adjust_contrast,
            "sharpness": TF.adjust_sharpness,
        }[op]
        return fn(x01, factor)
    if op == "posterize":
        bits = int(min(8, max(0, posterize_base - round(4 * level))))
        return TF.posterize(x01, bits)
    if op == "solarize":
        return TF.solarize(x01, 1.0 - level)
    if op == "autocontrast":
        return TF.autocontrast(x01)
    if op == "equalize":
        return TF.equalize(x01)
    raise ValueError(f"unknown photometric op {op!r}")


def _apply_per_sample(
    x01: Tensor,
    ops: Sequence[str],
    levels: Sequence[float],
    negatives: Sequence[bool],
    active: Sequence[bool],
    posterize_base: int,
) -> Tensor:
    """Apply op ``ops[i]`` to sample i, batched over the samples that share (op, level, sign)."""
    groups: dict[tuple[str, float, bool], list[int]] = {}
    for i, (op, level, neg, on) in enumerate(zip(ops, levels, negatives, active)):
        if on and op != "identity":
            groups.setdefault((op, float(level), bool(neg)), []).append(i)
    if not groups:
        return x01
    out = x01.clone()
    for (op, level, neg), idx in groups.items():
        if len(idx) == x01.shape[0]:
            out = _apply_op(out, op, level, neg, posterize_base)
        else:
            index = torch.tensor(idx, device=x01.device)
            out.index_copy_(0, index, _apply_op(out.index_select(0, index), op, level, neg, posterize_base))
    return out


class _Augmenter(nn.Module, ABC):
    """Common call convention: pixels 0..255 in, same dtype out; no autograd."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = generator

    @abstractmethod
    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a float 0..1 batch (no dtype round trip; StrongAugment uses this)."""

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if x.shape[0] == 0:
            return x.clone()
        out = self.augment_unit(_to_unit(x), generator if generator is not None else self.generator)
        return _from_unit(out, x)


# ------------------------------------------------------------------------- RandAugment / AugMix
class PhotometricRandAugment(_Augmenter):
    """RandAugment restricted to photometric ops: ``num_ops`` ops per sample, each drawn
    uniformly from :data:`RANDAUGMENT_OPS`, at the fixed ``magnitude`` bin of ``num_bins``
    (torchvision defaults 2 / 9 / 31); signed ops get a random sign per sample."""

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_bins: int = 31,
        ops: Sequence[str] = RANDAUGMENT_OPS,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if num_ops < 0 or num_bins < 2 or not 0 <= magnitude < num_bins:
            raise ValueError("need num_ops >= 0, num_bins >= 2 and 0 <= magnitude < num_bins")
        unknown = set(ops) - set(RANDAUGMENT_OPS)
        if unknown or not ops:
            raise ValueError(f"unsupported ops {sorted(unknown)}; photometric ops are {RANDAUGMENT_OPS}")
        self.num_ops, self.magnitude, self.num_bins = int(num_ops), int(magnitude), int(num_bins)
        self.ops = tuple(ops)

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = x01.shape[0]
        level = self.magnitude / (self.num_bins - 1)
        for _ in range(self.num_ops):
            op_ids = _randint(len(self.ops), (b,), generator).tolist()
            negatives = (_rand((b,), generator) < 0.5).tolist()
            ops = [self.ops[i] for i in op_ids]
            x01 = _apply_per_sample(x01, ops, [level] * b, negatives, [True] * b, posterize_base=8)
        return x01

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_bins={self.num_bins}, ops={self.ops}"


class PhotometricAugMix(_Augmenter):
    """AugMix with photometric ops: per sample, ``width`` chains of ``depth`` ops (random 1-3
    per chain and sample when ``depth <= 0``) at a random bin below ``severity`` of 10 bins,
    mixed with Dirichlet(alpha) weights and blended with the original by m ~ Beta(alpha, alpha):
    ``out = (1 - m) x + m sum_i w_i chain_i(x)``. ``all_ops=False`` keeps only the original
    AugMix photometric set (autocontrast, equalize, posterize, solarize)."""

    _NUM_BINS = 10

    def __init__(
        self,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if not 1 <= severity <= self._NUM_BINS:
            raise ValueError(f"severity must be in 1..{self._NUM_BINS}, got {severity}")
        if width < 1 or alpha <= 0:
            raise ValueError("need width >= 1 and alpha > 0")
        self.severity, self.width, self.depth, self.alpha = int(severity), int(width), int(depth), float(alpha)
        self.ops = AUGMIX_OPS if all_ops else AUGMIX_OPS[:4]

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = x01.shape[0]
        rng = _numpy_rng(generator)
        chain_w = torch.from_numpy(rng.dirichlet([self.alpha] * self.width, size=b)).float().to(x01.device)
        blend = torch.from_numpy(rng.beta(self.alpha, self.alpha, size=b)).float().to(x01.device)
        mix = torch.zeros_like(x01)
        for i in range(self.width):
            if self.depth > 0:
                depths = [self.depth] * b
            else:
                depths = _randint(4, (b,), generator, low=1).tolist()
            chain = x01
            for step in range(max(depths)):
                op_ids = _randint(len(self.ops), (b,), generator).tolist()
                bins = _randint(self.severity, (b,), generator).tolist()
                negatives = (_rand((b,), generator) < 0.5).tolist()
                chain = _apply_per_sample(
                    chain,
                    [self.ops[k] for k in op_ids],
                    [k / (self._NUM_BINS - 1) for k in bins],
                    negatives,
                    [d > step for d in depths],
                    posterize_base=4,
                )
            mix.add_(chain * chain_w[:, i].view(b, 1, 1, 1))
        m = blend.view(b, 1, 1, 1)
        return torch.lerp(x01, mix, m).clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"severity={self.severity}, width={self.width}, depth={self.depth}, alpha={self.alpha}, ops={self.ops}"


# ---------------------------------------------------------------------------------- Noise2Net
def _grouped_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int = 1, padding: int = 0, pad_mode: str = "replicate"
) -> Tensor:
    """Per-sample convolution: sample i uses weight[i] (B x Cout x Cin x k x k), one grouped conv."""
    b, c_in = x.shape[:2]
    c_out, k = weight.shape[1], weight.shape[-1]
    if padding:
        x = F.pad(x, (padding,) * 4, mode=pad_mode) if pad_mode != "zeros" else F.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    y = F.conv2d(
        x.reshape(1, b * c_in, h, w),
        weight.reshape(b * c_out, c_in, k, k),
        None if bias is None else bias.reshape(-1),
        dilation=dilation,
        groups=b,
    )
    return y.reshape(b, c_out, *y.shape[-2:])


class Noise2Net(_Augmenter):
    """Weight-free DeepAugment (hendrycks/imagenet-r ``train_noise2net.py``, REFERENCE B2.2).

    ``num_blocks`` Res2Net bottlenecks (1x1 conv to ``scale * hidden_planes``, ``scale - 1``
    hierarchical KxK convs with K in {1, 3} and dilation in {1, 2, 3}, 1x1 conv back to RGB; each
    conv followed by per-image BN in batch-stat mode, i.e. instance norm, and ReLU inside), applied
    as ``x <- x + eps * block(x)`` in ImageNet-normalised space. Each image gets its own random
    network (one grouped conv over the batch), re-drawn at every call with PyTorch's default
    conv init; eps ~ U(max_eps / 2, max_eps) per image.

    Deviations, all deliberate: eps and K/dilation are drawn per call (per image for eps)
    instead of once per batch / run, padding is ``replicate`` (the original zero-pads, which
    darkens crop borders; a flat image stays flat here), and the output is clamped.
    """

    def __init__(
        self,
        max_eps: float = 0.75,
        hidden_planes: int = 16,
        scale: int = 4,
        num_blocks: int = 4,
        pad_mode: str = "replicate",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        if max_eps <= 0 or hidden_planes < 1 or scale < 2 or num_blocks < 1:
            raise ValueError("need max_eps > 0, hidden_planes >= 1, scale >= 2, num_blocks >= 1")
        if pad_mode not in ("replicate", "reflect", "zeros"):
            raise ValueError(f"pad_mode must be replicate, reflect or zeros, got {pad_mode!r}")
        self.max_eps, self.hidden_planes, self.scale, self.num_blocks = float(max_eps), hidden_planes, scale, num_blocks
        self.pad_mode = pad_mode
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _init_uniform(shape: Sequence[int], fan_in: int, gen: torch.Generator | None, device: torch.device) -> Tensor:
        """PyTorch's default conv init (kaiming_uniform a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        bound = 1.0 / math.sqrt(fan_in)
        return _rand(shape, gen, device).mul_(2 * bound).sub_(bound)

    def _block(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        b, c = x.shape[:2]
        hid, width, dev = self.hidden_planes, self.hidden_planes * self.scale, x.device
        y = _grouped_conv(x, self._init_uniform((b, width, c, 1, 1), c, gen, dev), None)
        splits = F.relu(F.instance_norm(y)).split(hid, dim=1)
        outs: list[Tensor] = []
        sp = splits[0]
        for i in range(self.scale - 1):
            if i > 0:
                sp = sp + splits[i]
            k = (1, 3)[int(_randint(2, (1,), gen))]
            d = int(_randint(4, (1,), gen, low=1))
            fan_in = hid * k * k
            w = self._init_uniform((b, hid, hid, k, k), fan_in, gen, dev)
            bias = self._init_uniform((b, hid), fan_in, gen, dev)
            sp = F.relu(F.instance_norm(_grouped_conv(sp, w, bias, d, (k - 1) // 2 * d, self.pad_mode)))
            outs.append(sp)
        outs.append(splits[-1])
        y = torch.cat(outs, dim=1)
        y = _grouped_conv(y, self._init_uniform((b, c, width, 1, 1), width, gen, dev), None)
        return F.instance_norm(y)

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b = x01.shape[0]
        mean, std = self.mean.to(x01.device), self.std.to(x01.device)
        x = (x01 - mean) / std
        eps = (_rand((b,), generator, x01.device) * 0.5 + 0.5).mul_(self.max_eps).view(b, 1, 1, 1)
        for _ in range(self.num_blocks):
            x = x + eps * self._block(x, generator)
        return (x * std + mean).clamp_(0.0, 1.0)

    def extra_repr(self) -> str:
        return (
            f"max_eps={self.max_eps}, hidden_planes={self.hidden_planes}, scale={self.scale}, "
            f"num_blocks={self.num_blocks}, pad_mode={self.pad_mode!r}"
        )


# ---------------------------------------------------------------------------------- CAE
# Layers of the DeepAugment compressive autoencoder (Theis et al. 2017) in the order of the
# hendrycks/imagenet-r weight file: (state-dict prefix, kind, in, out, kernel).
_CAE_LAYERS: tuple[tuple[str, str, int, int, int], ...] = (
    ("e_conv_1.1", "conv", 3, 64, 5),
    ("e_conv_2.1", "conv", 64, 128, 5),
    ("e_block_1.1", "conv", 128, 128, 3),
    ("e_block_1.4", "conv", 128, 128, 3),
    ("e_block_2.1", "conv", 128, 128, 3),
    ("e_block_2.4", "conv", 128, 128, 3),
    ("e_block_3.1", "conv", 128, 128, 3),
    ("e_block_3.4", "conv", 128, 128, 3),
    ("e_conv_3.0", "conv", 128, 32, 5),
    ("d_up_conv_1.0", "conv", 32, 64, 3),
    ("d_up_conv_1.3", "convT", 64, 128, 2),
    ("d_block_1.1", "conv", 128, 128, 3),
    ("d_block_1.4", "conv", 128, 128, 3),
    ("d_block_2.1", "conv", 128, 128, 3),
    ("d_block_2.4", "conv", 128, 128, 3),
    ("d_block_3.1", "conv", 128, 128, 3),
    ("d_block_3.4", "conv", 128, 128, 3),
    ("d_up_conv_2.0", "conv", 128, 32, 3),
    ("d_up_conv_2.3", "convT", 32, 256, 2),
    ("d_up_conv_3.0", "conv", 256, 16, 3),
    ("d_up_conv_3.3", "conv", 16, 3, 3),
)
# Layer ranges each weight distortion may hit (CAE_distort_imagenet.py, 21 layers).
_CAE_OPTION_LAYERS: dict[int, range] = {0: range(11, 16), 3: range(10, 14)}
_CAE_DEFAULT_LAYERS = range(8, 14)
_CAE_NUM_WEIGHT_OPTIONS = 8
_CAE_NUM_LATENT_OPTIONS = 9


def cae_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Expected key -> shape of a DeepAugment CAE weight file (conv: out,in,k,k; convT: in,out,k,k)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, kind, c_in, c_out, k in _CAE_LAYERS:
        shapes[f"{name}.weight"] = (c_out, c_in, k, k) if kind == "conv" else (c_in, c_out, k, k)
        shapes[f"{name}.bias"] = (c_out,)
    return shapes


def _read_cae_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load and validate a CAE weight file; a clear ValueError for anything else (e.g. EDSR)."""
    obj: Any = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    expected = cae_state_dict_shapes()
    missing = [k for k in expected if k not in state]
    if missing:
        hint = " (this looks like EDSR, which is not supported: use the CAE file or Noise2Net)" if any(
            k.startswith(("head.", "body.", "tail.")) for k in state
        ) else ""
        raise ValueError(
            f"{path} is not a DeepAugment CAE weight file (hendrycks/imagenet-r "
            f"DeepAugment/CAE_Weights/model_final.state){hint}; missing keys: {missing[:4]}..."
        )
    bad = [k for k, shape in expected.items() if tuple(state[k].shape) != shape]
    if bad:
        raise ValueError(f"{path}: CAE tensors with unexpected shapes: {bad[:4]}")
    return {k: state[k].detach().float().clone() for k in expected}


class CAEDistortion(_Augmenter):
    """DeepAugment-CAE: the pretrained compressive autoencoder run with distorted weights and
    a distorted latent code (hendrycks/imagenet-r ``CAE_distort_imagenet.py`` and
    ``cae_32x32x32_zero_pad_bin.py``; REFERENCE B2.1/B2.2).

    Weight distortion: one of 8 options (flip filters, negate / zero / -GELU some filters, large
    random rescaling, 0-1 or +-1 masks, rot90 of kernels, negate ~20 % of filters) on one or two
    layers of the option's layer range; re-drawn before a call with probability
    ``resample_prob`` (1.0: every batch; 0.05 per image in the original; 0.0: once per run as the
    InstCal reference). Latent distortion: one of 9 options per image, then stochastic
    binarisation of the 32-channel code. Input is scaled to 0..1, padded to a multiple of 4
    (replicate) and the decoded image is cropped back and clamped to [0, 1] as in the original.
    Deviation: the original's ``bias_j`` typo (the bias of the second layer got its weight key) is
    not reproduced; distortion option 0 flips both chosen layers as intended.
    """

    def __init__(
        self, weights: str | os.PathLike[str], resample_prob: float = 1.0, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        if not 0.0 <= resample_prob <= 1.0:
            raise ValueError(f"resample_prob must be in [0, 1], got {resample_prob}")
        self.weights_path = os.fspath(weights)
        self.resample_prob = float(resample_prob)
        state = _read_cae_weights(weights)
        # Pristine weights as non-persistent buffers: they follow .to(device) but stay out of
        # checkpoints of whatever module holds this augmenter.
        for i, (name, *_rest) in enumerate(_CAE_LAYERS):
            self.register_buffer(f"w{i}", state[f"{name}.weight"], persistent=False)
            self.register_buffer(f"b{i}", state[f"{name}.bias"], persistent=False)
        self._distorted: list[tuple[Tensor, Tensor]] | None = None
        self.last_weight_option: int | None = None

    def _pristine(self) -> list[tuple[Tensor, Tensor]]:
        return [(getattr(self, f"w{i}"), getattr(self, f"b{i}")) for i in range(len(_CAE_LAYERS))]

    # --- weight distortions
    def resample_weights(self, generator: torch.Generator | None = None) -> int:
        """Draw a new weight distortion of the pristine weights; returns the option used."""
        gen = generator if generator is not None else self.generator
        layers = [(w.clone(), b.clone()) for w, b in self._pristine()]
        option = int(_randint(_CAE_NUM_WEIGHT_OPTIONS, (1,), gen))
        rng = _CAE_OPTION_LAYERS.get(option, _CAE_DEFAULT_LAYERS)
        i = rng.start + int(_randint(len(rng), (1,), gen))
        j = rng.start + int(_randint(len(rng), (1,), gen))
        w, b = layers[i]
        dev = w.device

        def filters(count: int) -> list[int]:
            return sorted(set(_randint(w.shape[0], (count,), gen).tolist()))

        if option == 0:  # reverse the filter order of two layers
            for li in sorted({i, j}):
                wl, bl = layers[li]
                layers[li] = (wl.flip(0), bl.flip(0))
        elif option in (1, 2, 3):  # negate 12 / zero 25 / -GELU 25 random filters
            for k in filters({1: 12, 2: 25, 3: 25}[option]):
                fn = {1: torch.neg, 2: torch.zeros_like, 3: lambda t: -F.gelu(t)}[option]
                w[k] = fn(w[k])
                if k < b.numel():
                    b[k] = fn(b[k])
        elif option == 4:  # multiply by large random factors in [1, 9)
            for li in (i, j) if i != j else (i,):
                wl, bl = layers[li]
                u = float(_rand((1,), gen))
                layers[li] = (wl * (1.0 + 8.0 * u * _rand(wl.shape, gen, dev)), bl)
        elif option == 5:  # random 0/1 or +-1 mask
            mask = _rand(w.shape, gen, dev).round_()
            if float(_rand((1,), gen)) >= 0.5:
                mask = mask * 2 - 1
            layers[i] = (w * mask, b)
        elif option == 6:  # rotate every kernel by 90, 180 or 270 degrees
            layers[i] = (torch.rot90(w, k=int(_randint(4, (1,), gen, low=1)), dims=(2, 3)), b)
        else:  # option 7: negate ~20 % of the filters
            idx = filters(w.shape[0] // 5)
            w[idx] = -w[idx]
        self._distorted = layers
        self.last_weight_option = option
        return option

    # --- latent distortions
    @staticmethod
    def _spatial_flip_dims(gen: torch.Generator | None) -> tuple[int, ...]:
        """Original: flip over 2 of (batch, H, W); batch of one -> H, W or both, 1/3 each."""
        return ((1,), (2,), (1, 2))[int(_randint(3, (1,), gen))]

    @staticmethod
    def _shift_kernel(c: int, device: torch.device) -> Tensor:
        z = torch.zeros(c, c, 3, 3, device=device)
        z[torch.arange(c), torch.arange(c), 1, 1] = 1.0
        return z

    def _distort_latent(self, code: Tensor, option: int, gen: torch.Generator | None) -> Tensor:
        """One latent option on one image's code (1 x 32 x h x w, tanh range). Option 0 acts
        after binarisation (see augment_unit)."""
        c, h, w = code.shape[1:]
        dev = code.device
        if option == 1:  # zero ~20 % of the positions
            return code * (_rand((h, w), gen, dev) > 0.2)
        if option == 2:  # negate ~10 % of the positions
            return code * torch.where(_rand((h, w), gen, dev) > 0.1, 1.0, -1.0)
        if option == 3:  # permute the first 10 channels
            perm = torch.cat([torch.randperm(10, generator=gen, device=gen.device if gen else "cpu").cpu(),
                              torch.arange(10, c)])
            return code[:, perm.to(dev)]
        if option in (4, 5):  # flip 5 random channels / all channels spatially
            chans = sorted(set(_randint(c, (5,), gen).tolist())) if option == 4 else list(range(c))
            dims = self._spatial_flip_dims(gen)
            code = code.clone()
            code[:, chans] = code[:, chans].flip(tuple(d + 1 for d in dims))
            return code
        if option == 6:  # near-identity 3x3 conv with uniform noise
            z = self._shift_kernel(c, dev) + (_rand((c, c, 3, 3), gen, dev) - 0.5) * 0.2
            return F.conv2d(code, z, padding=1)
        if option == 7:  # identity plus, for half of the channels, a tap from a random channel
            z = self._shift_kernel(c, dev)
            extra = (_rand((c,), gen) < 0.5).nonzero().flatten().tolist()
            if extra:
                src = _randint(c, (len(extra),), gen)
                pos = _randint(3, (len(extra), 2), gen)
                z[torch.tensor(extra), src, pos[:, 0], pos[:, 1]] = 1.0
            return F.conv2d(code, z, padding=1)
        if option == 8:  # shift channels by one position (shift re-drawn per channel w.p. 0.2)
            z = torch.zeros(c, c, 3, 3, device=dev)
            shift = _randint(3, (2,), gen).tolist()
            redraw = (_rand((c,), gen) < 0.2).tolist()
            for ch in range(c):
                if redraw[ch]:
                    shift = _randint(3, (2,), gen).tolist()
                z[ch, ch, shift[0], shift[1]] = 1.0
            return F.conv2d(code, z, padding=1)
        return code

    # --- the network (functional so distorted weights need no module copy)
    @staticmethod
    def _res_block(x: Tensor, layers: list[tuple[Tensor, Tensor]], first: int) -> Tensor:
        (w1, b1), (w2, b2) = layers[first], layers[first + 1]
        y = F.leaky_relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), w1, b1))
        return F.conv2d(F.pad(y, (1, 1, 1, 1)), w2, b2) + x

    def _encode(self, x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        y = F.leaky_relu(F.conv2d(F.pad(x, (1, 2, 1, 2)), *layers[0], stride=2))
        y = F.leaky_relu(F.conv2d(F.pad(y, (1, 2, 1, 2)), *layers[1], stride=2))
        for first in (2, 4, 6):
            y = self._res_block(y, layers, first)
        return torch.tanh(F.conv2d(y, *layers[8], padding=2))

    def _decode(self, y: Tensor, layers: list[tuple[Tensor, Tensor]]) -> Tensor:
        y = F.leaky_relu(F.conv2d(y, *layers[9]))
        y = F.conv_transpose2d(F.pad(y, (1, 1, 1, 1)), *layers[10], stride=2)
        for first in (11, 13, 15):
            y = self._res_block(y, layers, first)
        y = F.leaky_relu(F.conv2d(y, *layers[17]))
        y = F.conv_transpose2d(F.pad(y, (1, 1, 1, 1)), *layers[18], stride=2)
        y = F.leaky_relu(F.conv2d(y, *layers[19]))
        return torch.tanh(F.conv2d(F.pad(y, (2, 2, 2, 2), mode="reflect"), *layers[20]))

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        gen = generator if generator is not None else self.generator
        if self._distorted is None or (self.resample_prob > 0 and float(_rand((1,), gen)) < self.resample_prob):
            self.resample_weights(gen)
        assert self._distorted is not None
        if self._distorted[0][0].device != x01.device:
            self._distorted = [(w.to(x01.device), b.to(x01.device)) for w, b in self._distorted]
        layers = self._distorted
        b, _, h, w = x01.shape
        hp, wp = max(16, -(-h // 4) * 4), max(16, -(-w // 4) * 4)
        x = F.pad(x01, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x01
        code = self._encode(x, layers)
        options = _randint(_CAE_NUM_LATENT_OPTIONS, (b,), gen).tolist()
        code = torch.cat([self._distort_latent(code[k : k + 1], options[k], gen) for k in range(b)])
        # Stochastic binarisation: bit = 1 with probability (1 + code) / 2.
        bits = (_rand(code.shape, gen, code.device) <= (1.0 + code) / 2).float()
        for k, option in enumerate(options):
            if option == 0:  # random rescaling of the binary code
                u = float(_rand((1,), gen))
                bits[k] = bits[k] * (3.0 + 4.0 * u * _rand(bits[k].shape, gen, bits.device))
        out = self._decode(bits * 2.0 - 1.0, layers)
        return out[:, :, :h, :w].clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"weights={self.weights_path!r}, resample_prob={self.resample_prob}"


class DeepAugment(_Augmenter):
    """DeepAugment front end: ``kind`` = ``noise2net`` (no weights; default when ``weights`` is
    None) or ``cae`` (needs the local CAE weight file; default when ``weights`` is given).
    Nothing is ever downloaded. EDSR is not supported and raises ValueError."""

    KINDS = ("noise2net", "cae")

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        kind: str | None = None,
        *,
        max_eps: float = 0.75,
        hidden_planes: int = 16,
        resample_prob: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        kind = kind or ("noise2net" if weights is None else "cae")
        if kind not in self.KINDS:
            raise ValueError(f"unsupported DeepAugment kind {kind!r}; supported: {', '.join(self.KINDS)}")
        if kind == "cae" and weights is None:
            raise ValueError("DeepAugment kind 'cae' needs a local CAE weight file (nothing is downloaded)")
        if kind == "noise2net" and weights is not None:
            raise ValueError("Noise2Net uses no weights; drop `weights` or use kind='cae'")
        self.kind = kind
        self.net: _Augmenter = (
            Noise2Net(max_eps=max_eps, hidden_planes=hidden_planes)
            if kind == "noise2net"
            else CAEDistortion(weights, resample_prob=resample_prob)  # type: ignore[arg-type]
        )

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.net.augment_unit(x01, generator if generator is not None else self.generator)


# ---------------------------------------------------------------------------------- front end
class StrongAugment(_Augmenter):
    """Per-sample random choice among photometric strong augmentations (REFERENCE B7.2).

    Each sample is kept clean with probability ``p_clean``, otherwise gets one op drawn
    uniformly from ``ops`` (names from :data:`STRONG_AUGMENT_OPS`; ``deepaugment`` is the CAE when
    ``deepaugment_weights`` is given, else Noise2Net). The op of every sample of the last call is
    in ``last_choices`` (``"clean"`` for untouched samples) for logging. Clean samples are
    returned bit-identical.
    """

    def __init__(
        self,
        ops: Sequence[str] = ("randaugment", "augmix", "deepaugment"),
        p_clean: float = 0.0,
        deepaugment_weights: str | os.PathLike[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        ops = tuple(ops)
        unknown = [o for o in ops if o not in STRONG_AUGMENT_OPS]
        if unknown or not ops or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be distinct names from {STRONG_AUGMENT_OPS}, got {ops}")
        if not 0.0 <= p_clean <= 1.0:
            raise ValueError(f"p_clean must be in [0, 1], got {p_clean}")
        self.ops = ops
        self.p_clean = float(p_clean)
        self.augmenters = nn.ModuleDict()
        deep: dict[str, DeepAugment] = {}
        for op in ops:
            if op == "randaugment":
                self.augmenters[op] = PhotometricRandAugment()
            elif op == "augmix":
                self.augmenters[op] = PhotometricAugMix()
            else:
                kind = {"noise2net": "noise2net", "cae": "cae"}.get(op)
                if kind is None:  # "deepaugment"
                    kind = "cae" if deepaugment_weights is not None else "noise2net"
                if kind not in deep:
                    deep[kind] = DeepAugment(deepaugment_weights if kind == "cae" else None, kind=kind)
                self.augmenters[op] = deep[kind]
        self.last_choices: list[str] = []

    def choose(self, batch_size: int, generator: torch.Generator | None = None) -> list[str]:
        """Draw the per-sample op names (``"clean"`` or one of ``ops``)."""
        clean = (_rand((batch_size,), generator) < self.p_clean).tolist()
        picks = _randint(len(self.ops), (batch_size,), generator).tolist()
        return ["clean" if c else self.ops[p] for c, p in zip(clean, picks)]

    def augment_unit(self, x01: Tensor, generator: torch.Generator | None = None) -> Tensor:
        gen = generator if generator is not None else self.generator
        choices = self.choose(x01.shape[0], gen)
        self.last_choices = choices
        return self._apply_choices(x01, choices, gen)

    def _apply_choices(self, x01: Tensor, choices: Sequence[str], gen: torch.Generator | None) -> Tensor:
        out = x01.clone()
        for op in self.ops:
            idx = [i for i, c in enumerate(choices) if c == op]
            if not idx:
                continue
            aug = self.augmenters[op]
            if len(idx) == x01.shape[0]:
                return aug.augment_unit(x01, gen)
            index = torch.tensor(idx, device=x01.device)
            out.index_copy_(0, index, aug.augment_unit(x01.index_select(0, index), gen))
        return out

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        gen = generator if generator is not None else self.generator
        choices = self.choose(x.shape[0], gen)
        self.last_choices = choices
        if all(c == "clean" for c in choices):
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected a B x 3 x H x W RGB batch, got shape {tuple(x.shape)}")
            return x.clone()
        out = _from_unit(self._apply_choices(_to_unit(x), choices, gen), x)
        clean = [i for i, c in enumerate(choices) if c == "clean"]
        if clean:  # bit-identical clean samples (no 0..1 round trip)
            index = torch.tensor(clean, device=x.device)
            out.index_copy_(0, index, x.index_select(0, index))
        return out

    def choice_counts(self, choices: Iterable[str] | None = None) -> dict[str, int]:
        """How many samples got each op (default: the last call), for logging."""
        names = list(self.last_choices if choices is None else choices)
        return {name: names.count(name) for name in (*self.ops, "clean")}

    def extra_repr(self) -> str:
        return f"ops={self.ops}, p_clean={self.p_clean}"
