"""Channel calibration: InstCal's source-anchored calibration beyond BatchNorm (LayerNorm transformers too).

InstCal (Zou et al., ECCV 2022; :mod:`intrada_pl.models.bn_calibration`) normalises every BatchNorm
input with a learned mix of the source running statistics and the image's own. A transformer's
LayerNorm normalises each token over its channels and keeps no source statistics, so that rule has
nothing to mix. A *channel calibration site* brings it to any activation X of one image (a
B x N x C token map or a B x C x H x W map): with mu_t, var_t the image's per-channel moments over
its tokens / pixels (unbiased variance, stop-gradient) and mu_s, var_s the *source average of
per-image moments* (collected once by :func:`collect_source_moments`), it re-standardises X
towards the source:

    mu_hat  = (1 - m_mean) * mu_s  + m_mean * mu_t
    var_hat = (1 - m_var)  * var_s + m_var  * var_t
    X'      = (X - mu_hat) * sqrt(var_s + eps) / sqrt(var_hat + eps) + mu_s

``m = 0`` leaves X exactly as it is; ``m = 1`` (``test_stats``) standardises the image with its
own moments and re-colours it with the source's. The strengths ``m`` come from InstCal's modes
(:class:`~intrada_pl.models.bn_calibration.CalibrationLayer`): ``manual`` (one m), ``instcal_u``
(learned per channel, mean and variance apart) and ``instcal_c`` (predicted per image). Put at a
BatchNorm's *input* with the BN's running statistics as source moments, ``BN(X')`` is InstCal's
calibrated BN, so on BatchNorm layers the sites *are* InstCal: :func:`convert_sites` converts them
to :class:`~intrada_pl.models.bn_calibration.CalibratedBatchNorm` (same rule, no collection), and
adds sites elsewhere:

- ``norm``: after every other normalisation layer (LayerNorm, GroupNorm, timm's LayerNorm2d ...);
- ``batchnorm``: every BatchNorm, calibrated by InstCal (at its input, its running statistics);
- ``block``: at the entry of every residual / transformer block (``*Block``, ``*Bottleneck``);
- ``stage``: at the output of every stage (the module holding a run of blocks).

A site is a child module of the layer it calibrates (``<layer>.chancal_in`` / ``<layer>.chancal_out``,
applied by a forward (pre-)hook), so the network's own parameter names do not change, source
weights load into a converted model, and a converted model's state dict (source moments, strengths)
loads into a freshly converted one. Every BatchNorm is converted, those outside the calibration in
mode ``none`` (exactly eval-mode BN, also in train mode), so training the strengths never touches
the source statistics. The model-level helpers of :mod:`~intrada_pl.models.bn_calibration`
(``calibration_parameters``, ``freeze_all_but_calibration``, ``record_strengths``,
``learned_strengths``) cover the sites too.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from intrada_pl.errors import ConfigValueError
from intrada_pl.models.bn_calibration import (
    CalibratedBatchNorm,
    CalibrationLayer,
    Condition,
    _check_mode,
    _is_frozen_bn,
    _is_norm_like,
    calibration_parameters,
    convert_batchnorm,
    instance_stats,
)

__all__ = [
    "CALIBRATION_METHODS",
    "CHANNEL_MODES",
    "DEFAULT_SITES",
    "METHOD_MODES",
    "SITE_KINDS",
    "ChannelCalibration",
    "SiteReport",
    "attach_site",
    "calibration_sites",
    "collect_source_moments",
    "configure_tent_ln",
    "convert_for_calibration",
    "convert_sites",
    "load_source_moments",
    "norm_affine_parameters",
    "select_sites",
    "set_site_mode",
    "sites_without_source",
]

ChannelMode = Literal["none", "manual", "test_stats", "instcal_u", "instcal_c"]
Where = Literal["in", "out"]

CHANNEL_MODES: tuple[str, ...] = ("none", "manual", "test_stats", "instcal_u", "instcal_c")
SITE_KINDS: tuple[str, ...] = ("norm", "batchnorm", "block", "stage")
DEFAULT_SITES: tuple[str, ...] = ("norm", "batchnorm")
#: ``intrada test --method`` names of the channel calibration methods -> the sites' mode.
METHOD_MODES: dict[str, str] = {
    "chancal_u": "instcal_u",
    "chancal_c": "instcal_c",
    "chancal_manual": "manual",
    "test_stats": "test_stats",
}
# CalibratedBatchNorm calls the m = 1 mode after the BN practice it is ("BN adapt").
_BN_MODES = {"test_stats": "bn_adapt"}
SITE_NAMES: dict[str, str] = {"in": "chancal_in", "out": "chancal_out"}
#: The probe image (H, W) a conversion runs once to learn each site's channel count and layout.
PROBE_SIZE = (64, 64)
_BLOCK_NAME = re.compile(r"(Block|Bottleneck)$")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


class ChannelCalibration(CalibrationLayer):
    """One calibration site (see the module docstring for the rule).

    The source moments are fp32 buffers (``source_mean``, ``source_var``, and ``source_images``,
    how many images they average; 0 until :meth:`set_source`): a calibrating mode refuses to run
    without them. The layer behaves the same in train and eval mode.

    Args:
        num_features: channels C.
        eps: added to both variances.
        mode: one of :data:`CHANNEL_MODES`.
        channels_last: the channels are the last dim (B x N x C tokens, B x H x W x C maps); else
            dim 1 (B x C x H x W).
        strength, init_strength, num_basis, hidden_dim, condition: as InstCal's
            (:class:`~intrada_pl.models.bn_calibration.CalibrationLayer`).
    """

    modes = CHANNEL_MODES
    full_mode = "test_stats"
    source_mean: Tensor
    source_var: Tensor
    source_images: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        mode: ChannelMode = "instcal_u",
        *,
        channels_last: bool,
        strength: float = 0.1,
        init_strength: float = 0.1,
        num_basis: int = 8,
        hidden_dim: int = 256,
        condition: Condition = "raw",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(num_features, eps, strength=strength, init_strength=init_strength, num_basis=num_basis,
                         hidden_dim=hidden_dim, condition=condition, device=device, dtype=torch.float32)
        self.channels_last = bool(channels_last)
        self.register_buffer("source_mean", torch.zeros(num_features, device=device))
        self.register_buffer("source_var", torch.ones(num_features, device=device))
        self.register_buffer("source_images", torch.zeros((), dtype=torch.long, device=device))
        self._has_source = False  # mirrors source_images > 0 without a device sync per forward
        self.set_mode(mode)

    def source_stats(self) -> tuple[Tensor, Tensor]:
        """The source average of per-image moments."""
        return self.source_mean, self.source_var

    def set_source(self, mean: Tensor, var: Tensor, images: int) -> None:
        """Anchor the site at these source moments (C,), averaged over ``images`` images."""
        if mean.shape != (self.num_features,) or var.shape != (self.num_features,):
            raise ValueError(f"source moments of shape {tuple(mean.shape)} / {tuple(var.shape)} for a site of "
                             f"{self.num_features} channels")
        with torch.no_grad():
            self.source_mean.copy_(mean)
            self.source_var.copy_(var)
            self.source_images.fill_(int(images))
        self._has_source = images > 0

    def channel_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per image, per channel: the mean and unbiased variance over tokens / pixels (B x C)."""
        if x.dim() < 3 or (x.shape[-1] if self.channels_last else x.shape[1]) != self.num_features:
            layout = "B x ... x C" if self.channels_last else "B x C x ..."
            raise ValueError(f"channel calibration site of {self.num_features} channels expects {layout} maps, "
                             f"got shape {tuple(x.shape)}")
        if self.channels_last:
            return instance_stats(x.flatten(1, -2).transpose(1, 2).unsqueeze(-1))
        return instance_stats(x if x.dim() == 4 else x.flatten(2).unsqueeze(-1))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "none":
            return x
        if not self._has_source:
            raise RuntimeError(f"channel calibration in mode {self.mode!r} has no source moments: "
                               "collect_source_moments() then load_source_moments() first")
        with torch.no_grad():  # stop-gradient, as InstCal: only the mixing path is differentiable
            mu_t, var_t = self.channel_stats(x)
            mu_t, var_t = mu_t.to(self.source_mean.dtype), var_t.to(self.source_var.dtype)
        mu, var = self.mixed_stats(mu_t, var_t)
        # Division, not rsqrt: at m = 0 both roots are the same number, the ratio exactly 1 and the
        # shift exactly 0, so X' == X bit for bit.
        scale = torch.sqrt(self.source_var + self.eps) / torch.sqrt(var + self.eps)  # B x C
        shift = self.source_mean - mu * scale
        shape = [x.shape[0]] + [1] * (x.dim() - 1)
        shape[-1 if self.channels_last else 1] = self.num_features
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._has_source = bool(self.source_images.item() > 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channels_last={self.channels_last}"


# ---------------------------------------------------------------------- placing sites
def _calibrate_input(module: nn.Module, args: tuple) -> tuple:
    return (getattr(module, SITE_NAMES["in"])(args[0]), *args[1:])


def _calibrate_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return getattr(module, SITE_NAMES["out"])(output)


def attach_site(module: nn.Module, site: ChannelCalibration, where: Where) -> str:
    """Make ``site`` calibrate the input (``in``) or output (``out``) of ``module``: a child named
    ``chancal_in`` / ``chancal_out``. Returns the child's name.

    A Sequential runs every child in order, so there the site is simply its first (``in``) or last
    (``out``) member; any other module applies it by a forward (pre-)hook, a plain function that
    looks the child up, so a deep copy of the model calibrates with its own copy of the site.
    """
    name = SITE_NAMES[where]
    if hasattr(module, name):
        raise ValueError(f"{type(module).__name__} already has a {name} calibration site")
    if where == "in":
        children = dict(module._modules)  # the entry site first: listed (and plotted) before the layers it feeds
        module._modules.clear()
        module._modules.update({name: site, **children})
    else:
        module.add_module(name, site)
    if not isinstance(module, nn.Sequential):
        if where == "in":
            module.register_forward_pre_hook(_calibrate_input)
        else:
            module.register_forward_hook(_calibrate_output)
    return name


@dataclass(frozen=True)
class _Candidate:
    """Where a site goes: its name, the calibrated module, before or after it, and the channel layout
    (``first``, ``last``, or ``auto``: B x N x C for 3-D maps, B x C x H x W for 4-D)."""

    name: str
    target: str
    kind: str
    where: Where
    layout: Literal["first", "last", "auto"]


def _is_channel_norm(module: nn.Module) -> bool:
    """A normalisation layer that keeps no source statistics (LayerNorm, GroupNorm, RMSNorm, ...)."""
    excluded = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm, CalibrationLayer)
    return _is_norm_like(module) and not isinstance(module, excluded) and not _is_frozen_bn(module)


def _norm_layout(module: nn.Module) -> Literal["first", "last"]:
    """LayerNorm / RMSNorm normalise the last dim (channels last); GroupNorm and ``*2d`` layers dim 1."""
    return "first" if isinstance(module, nn.GroupNorm) or type(module).__name__.endswith("2d") else "last"


def _candidates(model: nn.Module, kinds: Collection[str]) -> list[_Candidate]:
    """Every place of the given kinds in ``model``: BatchNorms, norms and blocks in model order, then stages."""
    found: list[_Candidate] = []
    blocks: list[str] = []
    for name, module in model.named_modules():
        if name and "batchnorm" in kinds and isinstance(module, CalibratedBatchNorm):
            found.append(_Candidate(name, name, "batchnorm", "in", "first"))
        elif name and "norm" in kinds and _is_channel_norm(module):
            found.append(_Candidate(f"{name}.{SITE_NAMES['out']}", name, "norm", "out", _norm_layout(module)))
        elif name and _BLOCK_NAME.search(type(module).__name__):
            blocks.append(name)
            if "block" in kinds:
                found.append(_Candidate(f"{name}.{SITE_NAMES['in']}", name, "block", "in", "auto"))
    if "stage" in kinds:
        stages = dict.fromkeys(_stage_of(model, block) for block in blocks)  # ordered, deduplicated
        found += [_Candidate(f"{s}.{SITE_NAMES['out']}", s, "stage", "out", "auto") for s in stages if s]
    return found


def _stage_of(model: nn.Module, block: str) -> str:
    """The module running a block: its parent, past ModuleList / ModuleDict containers (never called)."""
    parent = block.rpartition(".")[0]
    while parent and isinstance(model.get_submodule(parent), _CONTAINERS):
        parent = parent.rpartition(".")[0]
    return parent


@contextmanager
def _source_network(model: nn.Module) -> Iterator[None]:
    """The uncalibrated source network for a probe or a collection: every calibration layer in mode
    ``none``, every module in eval mode, no gradient; all restored afterwards."""
    layers = [m for m in model.modules() if isinstance(m, CalibrationLayer)]
    modes = [layer.mode for layer in layers]
    flags = [(m, m.training) for m in model.modules()]
    try:
        for layer in layers:
            layer.set_mode("none")
        model.eval()
        with torch.inference_mode(False), torch.no_grad():
            yield
    finally:
        for layer, mode in zip(layers, modes):
            layer.set_mode(mode)
        for module, training in flags:
            module.training = training


def _probe(model: nn.Module, wanted: Sequence[_Candidate], example: Tensor) -> dict[str, list[Any]]:
    """What each wanted site would see in one forward of ``example``: one entry per call (a shape,
    or the type of a non-tensor)."""
    seen: dict[str, list[Any]] = {c.name: [] for c in wanted}
    handles = []
    for c in wanted:
        def record(value: Any, name: str = c.name) -> None:
            seen[name].append(tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__)

        module = model.get_submodule(c.target)
        if c.where == "in":
            handles.append(module.register_forward_pre_hook(lambda m, args, r=record: r(args[0] if args else None)))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, r=record: r(out)))
    try:
        with _source_network(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _site_shape(c: _Candidate, calls: list[Any]) -> tuple[int, bool] | str:
    """``(channels, channels_last)`` of a site from what the probe saw, or why it cannot be placed."""
    if not calls:
        return "not run by a forward of the model"
    if len(calls) > 1:
        return f"run {len(calls)} times per forward (a shared module): its per-image moments would mix"
    shape = calls[0]
    if not isinstance(shape, tuple):
        return f"its {c.where}put is a {shape}, not a tensor"
    if len(shape) < 3 or (c.layout == "auto" and len(shape) > 4):
        return f"its {c.where}put is a {len(shape)}-D map; expected B x N x C tokens or B x C x H x W"
    last = c.layout == "last" or (c.layout == "auto" and len(shape) == 3)
    return (shape[-1] if last else shape[1]), last


# ---------------------------------------------------------------------- conversion
@dataclass
class SiteReport:
    """What :func:`convert_sites` did: every site it calibrates, re-moded, left in mode none or skipped."""

    mode: str
    kinds: tuple[str, ...]
    created: list[str] = field(default_factory=list)
    remoded: list[str] = field(default_factory=list)  # sites already there: mode switched, parameters kept
    batchnorm: list[str] = field(default_factory=list)  # BatchNorms calibrated (InstCal's layer)
    uncalibrated: list[str] = field(default_factory=list)  # calibration layers left in mode none
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (site, reason)
    num_calibration_parameters: int = 0

    def __str__(self) -> str:
        lines = [
            f"channel calibration {self.mode!r} at {', '.join(self.kinds)}: {len(self.created)} site(s) created, "
            f"{len(self.remoded)} re-moded, {len(self.batchnorm)} BatchNorm(s) calibrated, "
            f"{len(self.uncalibrated)} left uncalibrated (m = 0), {len(self.skipped)} skipped; "
            f"{self.num_calibration_parameters:,} calibration parameters"
        ]
        for label, names in (("created", self.created), ("re-moded", self.remoded), ("BatchNorm", self.batchnorm),
                             ("uncalibrated", self.uncalibrated)):
            if names:
                lines.append(f"  {label}: " + ", ".join(names))
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def _layer_mode(layer: CalibrationLayer, mode: str) -> str:
    return _BN_MODES.get(mode, mode) if isinstance(layer, CalibratedBatchNorm) else mode


def _site_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    allowed = ("strength", "init_strength", "num_basis", "hidden_dim", "condition")
    if unknown := set(kwargs) - set(allowed):
        raise TypeError(f"unknown channel calibration option(s) {', '.join(sorted(unknown))}; valid: {', '.join(allowed)}")
    return dict(kwargs)


def _device(model: nn.Module) -> torch.device:
    return next((t.device for t in model.parameters()), torch.device("cpu"))


def convert_sites(
    model: nn.Module,
    mode: ChannelMode = "instcal_u",
    *,
    sites: Sequence[str] = DEFAULT_SITES,
    select: Sequence[str] | None = None,
    eps: float = 1e-5,
    example: Tensor | None = None,
    **kwargs: Any,
) -> SiteReport:
    """Place channel calibration sites in ``model`` (in place) and put them in ``mode``.

    ``sites``: the kinds of :data:`SITE_KINDS`; ``select``: restrict them with layer-group or
    pattern terms (:func:`select_sites`; ``-TERM`` drops). Every BatchNorm becomes a
    CalibratedBatchNorm, calibrated when ``batchnorm`` sites are selected, else in mode ``none``.
    A new site learns its channel count and layout from one forward of ``example`` (default: a
    zero 1 x 3 x 64 x 64 image on the model's device) through the uncalibrated network. Sites
    already there are re-moded, keeping their parameters (the function is idempotent); those not
    selected go to mode ``none``. ``eps`` guards the new sites' variances (BatchNorms keep theirs);
    ``kwargs``: ``strength``, ``init_strength``, ``num_basis``, ``hidden_dim``, ``condition``.
    """
    _check_mode(mode, CHANNEL_MODES)
    if bad := [k for k in sites if k not in SITE_KINDS]:
        raise ConfigValueError(f"unknown calibration site kind(s) {', '.join(bad)}; valid: {', '.join(SITE_KINDS)}")
    options = _site_options(kwargs)
    bn_report = convert_batchnorm(model, "none", **options)
    candidates = _candidates(model, sites)
    chosen = candidates
    if select:
        picked = _select([c.name for c in candidates], select, _groups(model), "calibration site")
        chosen = [c for c in candidates if c.name in picked]
    report = SiteReport(mode=mode, kinds=tuple(sites))
    report.skipped += [(name, f"{kind}: {reason}") for name, kind, reason in bn_report.skipped if "BatchNorm" in kind]
    new = [c for c in chosen if c.kind != "batchnorm" and not _has_site(model, c)]
    if new:
        seen = _probe(model, new, torch.zeros(1, 3, *PROBE_SIZE, device=_device(model)) if example is None else example)
        for c in new:
            shape = _site_shape(c, seen[c.name])
            if isinstance(shape, str):
                report.skipped.append((c.name, shape))
                continue
            channels, channels_last = shape
            site = ChannelCalibration(channels, eps, mode, channels_last=channels_last, device=_device(model), **options)
            attach_site(model.get_submodule(c.target), site, c.where)
            report.created.append(c.name)
    calibrated = {c.name for c in chosen} - {name for name, _ in report.skipped}
    for name, layer in calibration_sites(model).items():
        if name in calibrated:
            layer.set_mode(_layer_mode(layer, mode), strength=options.get("strength"))
            if isinstance(layer, CalibratedBatchNorm):
                report.batchnorm.append(name)
            elif name not in report.created:
                report.remoded.append(name)
        else:
            layer.set_mode("none")
            report.uncalibrated.append(name)
    report.num_calibration_parameters = sum(p.numel() for p in calibration_parameters(model))
    return report


def _has_site(model: nn.Module, c: _Candidate) -> bool:
    return isinstance(getattr(model.get_submodule(c.target), SITE_NAMES[c.where], None), ChannelCalibration)


def calibration_sites(model: nn.Module) -> dict[str, CalibrationLayer]:
    """Every calibration layer of ``model`` (channel sites and calibrated BatchNorms) by name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CalibrationLayer)}


def _channel_sites(model: nn.Module) -> dict[str, ChannelCalibration]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ChannelCalibration)}


# ---------------------------------------------------------------------- selection and modes
def _groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    layer_groups = getattr(model, "layer_groups", None)
    return dict(layer_groups()) if callable(layer_groups) else {}


def _select(names: Sequence[str], terms: Sequence[str], groups: Mapping[str, tuple[str, ...]], what: str) -> frozenset[str]:
    """The names that ``terms`` pick: a term is a layer group or a shell-style pattern; ``-TERM``
    drops; only drops: everything but those. A term matching nothing is refused (a typo, or a
    group without sites, must not leave a model silently uncalibrated)."""
    picked: list[set[str]] = []
    dropped: list[set[str]] = []
    for term in terms:
        key = term.removeprefix("-")
        patterns = groups.get(key, (key,))
        matched = {n for n in names if any(fnmatchcase(n, p) for p in patterns)}
        if not matched:
            have = [g for g, ps in groups.items() if any(fnmatchcase(n, p) for n in names for p in ps)]
            what_term = f"layer group {key!r} ({', '.join(patterns)})" if key in groups else f"pattern {key!r}"
            raise ConfigValueError(
                f"{what_term} matches no {what} of this model; groups with sites: {', '.join(have) or 'none'}; "
                f"patterns match qualified names such as {', '.join(names[:3])}")
        (dropped if term.startswith("-") else picked).append(matched)
    selected = (set().union(*picked) if picked else set(names)) - set().union(*dropped)
    if not selected:
        raise ConfigValueError(f"the selection [{','.join(terms)}] leaves no {what}")
    return frozenset(selected)


def select_sites(model: nn.Module, terms: Sequence[str]) -> frozenset[str]:
    """The names of the calibration layers (:func:`calibration_sites`) that ``terms`` pick, e.g.
    ``["stage1", "stage2"]`` (the segmenter's :meth:`layer_groups`), ``["*.norm1.*"]``, ``["-head"]``."""
    return _select(list(calibration_sites(model)), terms, _groups(model), "calibration layer")


def set_site_mode(model: nn.Module, mode: ChannelMode, strength: float | None = None,
                  select: Collection[str] | None = None) -> int:
    """Switch the calibration layers to ``mode`` (``strength``: the manual m); with ``select``
    (names from :func:`select_sites`) only those, every other one to ``none`` (m = 0). Cheap: a
    test-time method calls it before each forward. Returns how many layers took ``mode``."""
    _check_mode(mode, CHANNEL_MODES)
    layers = calibration_sites(model)
    if not layers:
        raise ValueError("model has no calibration layers; call convert_sites(model, mode) first")
    if select is not None and (unknown := set(select) - set(layers)):
        raise ValueError(f"no calibration layer named {', '.join(sorted(unknown))} in the model")
    switched = 0
    for name, layer in layers.items():
        if select is None or name in select:
            layer.set_mode(_layer_mode(layer, mode), strength=strength)
            switched += 1
        else:
            layer.set_mode("none")
    return switched


# ---------------------------------------------------------------------- source moments
def collect_source_moments(model: nn.Module, images: Iterable[Tensor], sites: Collection[str] | None = None,
                           device: torch.device | str | None = None) -> dict[str, dict[str, Tensor]]:
    """Per channel site (``sites``: names; None: all): ``{"mean": (C,), "var": (C,), "images": ()}``,
    the average over ``images`` (batches of what the model takes, e.g. raw N x 3 x H x W pixels for
    a segmenter, moved to ``device``, default the model's; streamed) of each image's per-channel moments at the site,
    as the uncalibrated source network computes them (every calibration layer off, eval mode, no
    gradient; the model is left as it was). Moments are taken in fp32 and summed in fp64, so the
    batching does not change the result; plain CPU tensors, ready for ``torch.save`` and
    :func:`load_source_moments`. The average of per-image moments, not the pooled moments: the
    mix at a site is between moments of one image."""
    available = _channel_sites(model)
    if sites is not None and (unknown := set(sites) - set(available)):
        raise ValueError(f"no channel calibration site named {', '.join(sorted(unknown))} in the model")
    chosen = {n: s for n, s in available.items() if sites is None or n in sites}
    if not chosen:
        raise ValueError("the model has no channel calibration site to collect moments for; call convert_sites() first")
    sums = {n: [torch.zeros(s.num_features, dtype=torch.float64) for _ in range(2)] for n, s in chosen.items()}
    counts = dict.fromkeys(chosen, 0)

    def accumulate(name: str, site: ChannelCalibration, x: Tensor) -> None:
        mean, var = site.channel_stats(x.float())
        sums[name][0] += mean.sum(0).cpu().double()
        sums[name][1] += var.sum(0).cpu().double()
        counts[name] += x.shape[0]

    handles = [site.register_forward_pre_hook(lambda m, args, n=name: accumulate(n, m, args[0]))
               for name, site in chosen.items()]
    target = device if device is not None else _device(model)
    seen = 0
    try:
        with _source_network(model):
            for batch in images:
                model(batch.to(target))
                seen += batch.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("no source image to collect calibration moments on")
    if off := [n for n, c in counts.items() if c != seen]:
        raise ValueError(f"calibration site(s) {', '.join(off)} did not see every image once per forward")
    return {n: {"mean": (s[0] / seen).float(), "var": (s[1] / seen).float(), "images": torch.tensor(seen)}
            for n, s in sums.items()}


def load_source_moments(model: nn.Module, moments: Mapping[str, Mapping[str, Tensor]]) -> int:
    """Anchor every channel site of ``model`` at its entry of ``moments`` (:func:`collect_source_moments`'
    output, or ``torch.load`` of it); entries for other sites are ignored. Returns the count."""
    sites = _channel_sites(model)
    if missing := set(sites) - set(moments):
        raise ValueError(f"source moments lack the calibration site(s) {', '.join(sorted(missing))}")
    for name, site in sites.items():
        entry = moments[name]
        site.set_source(entry["mean"], entry["var"], int(entry["images"]))
    return len(sites)


def sites_without_source(model: nn.Module) -> list[str]:
    """The channel sites that have no source moments yet (e.g. to collect them only when a
    checkpoint did not bring them)."""
    return [name for name, site in _channel_sites(model).items() if not site._has_source]


# ---------------------------------------------------------------------- TENT on LayerNorm / GroupNorm
def norm_affine_parameters(model: nn.Module,
                           types: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm)) -> list[nn.Parameter]:
    """The affine weights and biases of every layer of ``types`` (subclasses included: timm's
    LayerNorm2d is a LayerNorm), in model order: what TENT adapts on a transformer, whose norms
    keep no statistics to re-estimate. A site's own parameters are not among them."""
    params: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, types):
            for p in module.parameters(recurse=False):
                params.setdefault(id(p), p)
    return list(params.values())


def configure_tent_ln(model: nn.Module) -> list[nn.Parameter]:
    """TENT-LN's ``configure_model``: freeze everything but the LayerNorm / GroupNorm affine
    parameters and return them (BatchNorms, if any, stay as they are)."""
    params = norm_affine_parameters(model)
    if not params:
        raise ValueError("TENT-LN found no LayerNorm / GroupNorm affine parameters to adapt")
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return params


#: What a calibration checkpoint may hold (``CalibrationModule(calibration=...)``): InstCal on BatchNorm,
#: or channel calibration sites (BatchNorm included).
CALIBRATION_METHODS: tuple[str, ...] = ("instcal_u", "instcal_c", "chancal_u", "chancal_c")


def convert_for_calibration(model: nn.Module, calibration: str, *, sites: Sequence[str] = DEFAULT_SITES,
                            select: Sequence[str] | None = None, **options: Any) -> Any:
    """Convert ``model`` in place for a calibration method of :data:`CALIBRATION_METHODS` (the one
    conversion the calibration stage and the segmenter factory share); returns the report."""
    if calibration in ("chancal_u", "chancal_c"):
        return convert_sites(model, METHOD_MODES[calibration], sites=sites, select=select, **options)  # type: ignore[arg-type]
    if calibration not in CALIBRATION_METHODS:
        raise ConfigValueError(f"unknown calibration {calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    return convert_batchnorm(model, calibration, **options)  # type: ignore[arg-type]
