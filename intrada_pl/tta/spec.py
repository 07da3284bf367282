"""Test-time method names (``intrada test --method``): what each name means, parsed once.

A method is named by a string (REFERENCE B3, B5.1):

- ``none``: plain eval-mode BN (source statistics);
- ``manual`` / ``manual@M``: a fixed mix ``m`` of source and per-image statistics (``M`` in the name,
  else the evaluator's ``strength``);
- ``bn_adapt``: per-image statistics (``m = 1``);
- ``adabn``: AdaBN (Li et al. 2016): plain eval-mode BN with every layer's statistics re-estimated
  on the target's training images (:mod:`intrada_pl.tta.statistics`);
- ``instcal_u`` / ``instcal_c``: the strengths learned by :class:`~intrada_pl.stages.calibration.CalibrationModule`
  (needs its checkpoint);
- ``tent``: TENT (Wang et al. 2021) on the plain model: BN in batch-statistics mode, entropy
  minimisation on the BN affine parameters only;
- ``instcal_u+tent`` / ``instcal_c+tent``: InstCal normalisation, then TENT steps on gamma/beta;
- ``chancal_u`` / ``chancal_c``: channel calibration (:mod:`intrada_pl.models.channel_calibration`:
  InstCal's rule at LayerNorm outputs, block entries, stage outputs and BatchNorms) with the
  strengths a ``chancal_u`` / ``chancal_c`` calibration checkpoint learned;
- ``chancal_manual@M`` / ``test_stats``: the same sites with one strength M / with each image's own
  moments (m = 1), on a channel calibration checkpoint (it holds the source moments);
- ``tent_ln``: TENT on the LayerNorm / GroupNorm affine parameters (transformer segmenters).

Any method but ``none`` and ``tent`` can be restricted to some BatchNorm layers with a suffix
``METHOD[TERM,...]``: a term is one of the segmenter's layer groups (``Segmenter.layer_groups()``,
e.g. DeepLabV2's ``stem``, ``layer1``..``layer4``) or a shell-style pattern on the layer's
qualified name (``layer4.*.bn2``, ``*.downsample.*``); ``-TERM`` leaves those layers out (alone:
all layers but those). Layers outside the selection are plain eval-mode BN (``m = 0``); see
:func:`intrada_pl.tta.layers.select_layers`.
"""

from __future__ import annotations

from dataclasses import dataclass

from intrada_pl.errors import ConfigValueError

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
    "chancal_u",
    "chancal_c",
    "chancal_manual",
    "test_stats",
    "tent_ln",
)
#: Methods on channel calibration sites (their layer selection names sites, not BatchNorms).
CHANNEL_METHODS: tuple[str, ...] = ("chancal_u", "chancal_c", "chancal_manual", "test_stats")
MANUAL_METHODS: tuple[str, ...] = ("manual", "chancal_manual")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method name: the calibration mode, its manual strength, which TENT follows (if
    any), and the layer selection terms it is restricted to (empty: every layer)."""

    name: str
    calibration: str
    strength: float | None = None
    tent: str = ""  # "tent" (BN affine), "tent_ln" (LayerNorm / GroupNorm affine) or none
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
            raise ConfigValueError(f"unknown test-time method {spec!r} (--method); choose from {', '.join(TEST_METHODS)} (manual@M for a strength, METHOD[GROUP,...] for some layers)")
        if value and base not in MANUAL_METHODS:
            raise ConfigValueError(f"only manual and chancal_manual take a strength ('manual@0.3'), got {spec!r} (--method)")
        calibration, _, tent = base.partition("+")
        if base in ("tent", "tent_ln"):
            calibration, tent = "none", base
        strength = None
        if calibration in MANUAL_METHODS:
            where = f"--method {spec}" if value else f"--strength {default_strength}"
            try:
                strength = float(value or default_strength)
            except ValueError:
                raise ConfigValueError(f"manual@M takes a number M in [0, 1], got {spec!r} (--method)") from None
            if not 0.0 <= strength <= 1.0:
                raise ConfigValueError(f"manual strength M must lie in [0, 1] (0: source statistics, 1: the image's), got {where}")
        if layers and calibration == "none":
            raise ConfigValueError(f"{base} has no BatchNorm calibration to restrict to layers ({spec!r}, --method)")
        name = f"{base}@{strength:g}" if strength is not None else base
        if layers:
            name += f"[{','.join(layers)}]"
        return cls(name=name, calibration=calibration, strength=strength, tent=tent, layers=layers)
