"""Channel calibration sites: the rule, its two identities (m = 0 and InstCal at a BatchNorm's input),
training the strengths, source moments, state dicts, site selection and TENT-LN.

Real networks at tiny sizes: a random timm MiT-B0 SegFormer at 64x64 and a depth-18 DeepLabV2.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import trained_segmenter
from intrada_pl.errors import ConfigValueError
from intrada_pl.visuals import strength_figure, write_figure
from intrada_pl.models.bn_calibration import (
    STRENGTH_EPS,
    CalibratedBatchNorm,
    calibration_parameters,
    convert_batchnorm,
    freeze_all_but_calibration,
    learned_strengths,
    record_strengths,
)
from intrada_pl.models.channel_calibration import (
    ChannelCalibration,
    attach_site,
    calibration_sites,
    collect_source_moments,
    configure_tent_ln,
    convert_sites,
    load_source_moments,
    norm_affine_parameters,
    select_sites,
    set_site_mode,
    sites_without_source,
)
from intrada_pl.models.segformer import SegFormer

torch.set_num_threads(1)
ALL_KINDS = ("norm", "batchnorm", "block", "stage")
CHANNEL_KINDS = ("norm", "block", "stage")


def _segformer(seed: int = 0) -> SegFormer:
    """MiT-B0 + SegFormer head, random weights, its head BatchNorm with real statistics."""
    torch.manual_seed(seed)
    model = SegFormer(num_classes=19, encoder="mit_b0", head="segformer").train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 255, (2, 3, 64, 64)).float())
    return model.eval()


@pytest.fixture(scope="module")
def segformer() -> SegFormer:
    """Shared, never mutated: tests work on copies."""
    return _segformer()


@pytest.fixture(scope="module")
def deeplab() -> nn.Module:
    return trained_segmenter()


@pytest.fixture(params=["segformer", "deeplab"])
def source(request, segformer, deeplab) -> nn.Module:
    """A fresh copy of each source network."""
    return copy.deepcopy(segformer if request.param == "segformer" else deeplab)


def _images(n: int = 3, seed: int = 1, h: int = 64, w: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Per-image contrast and brightness, so every image's moments differ from the source average.
    scale = torch.linspace(0.3, 1.0, n).view(n, 1, 1, 1)
    return (torch.rand(n, 3, h, w, generator=g) * 255 * scale).round()


def _calibrated(model: nn.Module, mode: str, kinds=ALL_KINDS, **kwargs) -> nn.Module:
    """``model`` converted and anchored at the source moments of a few source images."""
    convert_sites(model, mode, sites=kinds, **kwargs)
    load_source_moments(model, collect_source_moments(model, _images(4, seed=7).split(2)))
    return model


def _channel_names(model: nn.Module) -> set[str]:
    return {n for n, m in calibration_sites(model).items() if isinstance(m, ChannelCalibration)}


def _randomise_strengths(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in calibration_parameters(model):
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.8 + 0.1)


# ---------------------------------------------------------------------- the rule at one site
def _by_hand(x: torch.Tensor, dims: tuple[int, ...], c_dim: int, mu_s, var_s, m: float, eps: float) -> torch.Tensor:
    n = 1
    for d in dims:
        n *= x.shape[d]
    mu_t = x.mean(dim=dims, keepdim=True)
    var_t = ((x - mu_t) ** 2).sum(dim=dims, keepdim=True) / (n - 1)
    shape = [1] * x.dim()
    shape[c_dim] = -1
    mu_s, var_s = mu_s.view(shape), var_s.view(shape)
    mu = (1 - m) * mu_s + m * mu_t
    var = (1 - m) * var_s + m * var_t
    return (x - mu) * torch.sqrt(var_s + eps) / torch.sqrt(var + eps) + mu_s


@pytest.mark.parametrize(
    ("shape", "channels_last", "dims", "c_dim"),
    [((2, 12, 5), True, (1,), 2), ((2, 3, 4, 5), True, (1, 2), 3), ((2, 5, 3, 4), False, (2, 3), 1)],
    ids=["tokens BxNxC", "BxHxWxC", "BxCxHxW"],
)
@pytest.mark.parametrize(("mode", "m"), [("manual", 0.3), ("test_stats", 1.0)])
def test_site_rule_matches_the_formula_in_every_layout(shape, channels_last, dims, c_dim, mode, m):
    g = torch.Generator().manual_seed(0)
    c = shape[c_dim]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    mu_s, var_s = torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    site = ChannelCalibration(c, 1e-3, channels_last=channels_last).double()
    site.set_mode(mode, strength=m)  # in float64 (0.3 as a float32 differs by 1e-8)
    site.set_source(mu_s, var_s, images=10)
    torch.testing.assert_close(site(x), _by_hand(x, dims, c_dim, mu_s, var_s, m, 1e-3), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=f"site of {c} channels"):
        site(x.narrow(c_dim, 0, c - 1))


def test_m0_leaves_the_map_bit_for_bit_and_a_site_needs_source_moments():
    x = torch.randn(2, 16, 8) * 5 + 3
    site = ChannelCalibration(8, mode="manual", channels_last=True, strength=0.0)
    with pytest.raises(RuntimeError, match="no source moments: collect_source_moments"):
        site(x)
    site.set_source(torch.randn(8), torch.rand(8) + 0.1, images=4)
    assert torch.equal(site(x), x)
    site.set_mode("none")
    assert site(x) is x


# ---------------------------------------------------------------------- identity 1: m = 0 is the source network
def test_m0_is_the_uncalibrated_network_exactly(source):
    images = _images(2)
    expected = source(images)[1]
    model = _calibrated(source, "none")
    assert torch.equal(model(images)[1], expected)
    channel = _channel_names(model)
    assert set_site_mode(model, "manual", strength=0.0, select=channel) == len(channel) > 0
    assert torch.equal(model(images)[1], expected)  # every channel site at m = 0, BatchNorms plain
    set_site_mode(model, "test_stats", select=channel)
    assert not torch.allclose(model(images)[1], expected)  # and the sites do act


# ---------------------------------------------------------------------- identity 2: at a BN's input, InstCal
def _bn(c: int = 6, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, eps=1e-3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn.eval()


def _input_sites_at_batchnorms(model: nn.Module, mode: str, strength: float = 0.1, condition: str = "raw") -> None:
    """Every BatchNorm of ``model`` (left plain, eval mode) gets a site at its input anchored at
    its running statistics."""
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        site = ChannelCalibration(bn.num_features, bn.eps, channels_last=False, condition=condition)
        site.to(bn.running_mean.dtype).set_mode(mode, strength=strength)
        site.set_source(bn.running_mean, bn.running_var, images=1)
        attach_site(bn, site, "in")


def _copy_strengths(instcal: nn.Module, sites: nn.Module) -> None:
    """InstCal's learned strengths into the sites at the same BatchNorms' inputs."""
    keys = ("momentum_mean", "momentum_var", "basis_mean", "basis_var", "mean_net", "var_net")
    for name, layer in instcal.named_modules():
        if isinstance(layer, CalibratedBatchNorm):
            state = {k: v for k, v in layer.state_dict().items() if k.startswith(keys)}
            sites.get_submodule(f"{name}.chancal_in").load_state_dict(state, strict=False)


MODE_PAIRS = [("manual", "manual", "raw"), ("test_stats", "bn_adapt", "raw"), ("instcal_u", "instcal_u", "raw"),
              ("instcal_c", "instcal_c", "raw"), ("instcal_c", "instcal_c", "normalized")]


@pytest.mark.parametrize(("mode", "bn_mode", "condition"), MODE_PAIRS)
def test_site_at_a_batchnorm_input_is_instcal_layer(mode, bn_mode, condition):
    bn = _bn()
    torch.manual_seed(5)
    cal = CalibratedBatchNorm.from_batchnorm(bn, bn_mode, strength=0.3, condition=condition)
    _randomise_strengths(cal)
    model = nn.Sequential(copy.deepcopy(bn))
    _input_sites_at_batchnorms(model, mode, strength=0.3, condition=condition)
    _copy_strengths(nn.Sequential(cal), model)
    x = (torch.randn(3, 6, 5, 7, dtype=torch.float64) * torch.tensor([0.5, 1.0, 3.0]).view(3, 1, 1, 1) + 2).requires_grad_()
    expected, got = cal(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if mode.startswith("instcal"):  # the strengths get the same gradients too
        site = model[0].chancal_in
        grads = torch.autograd.grad(expected.square().sum(), cal.calibration_parameters())
        site_grads = torch.autograd.grad(got.square().sum(), site.calibration_parameters())
        for a, b in zip(site_grads, grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("mode", "bn_mode", "condition"), MODE_PAIRS[:4])
def test_sites_at_every_batchnorm_input_are_instcal_network(source, mode, bn_mode, condition):
    """Whole networks in float64: BN(site(X)) at every BatchNorm == InstCal's converted network."""
    instcal = copy.deepcopy(source).double()
    convert_batchnorm(instcal, bn_mode, strength=0.3)
    _randomise_strengths(instcal)
    sites = source.double()
    _input_sites_at_batchnorms(sites, mode, strength=0.3)
    _copy_strengths(instcal, sites)
    images = _images(2).double()
    torch.testing.assert_close(sites(images)[1], instcal(images)[1], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- training the strengths
def test_instcal_u_strengths_train_everything_else_frozen(source):
    model = _calibrated(source, "instcal_u", kinds=ALL_KINDS)
    trainable = freeze_all_but_calibration(model)
    strengths = calibration_parameters(model)
    sites = calibration_sites(model)
    assert trainable == sum(2 * layer.num_features for layer in sites.values())
    assert {id(p) for p in strengths} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(torch.equal(p, torch.full_like(p, 0.1)) for p in strengths)  # InstCal's init
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "momentum" not in k}
    optimizer = torch.optim.Adam(strengths, lr=0.05)
    model.train()  # drop-path / dropout on, as when the calibration stage trains
    labels = torch.randint(0, 19, (2, 16, 16))
    for _ in range(2):
        logits = F.interpolate(model(_images(2))[1], size=(16, 16), mode="bilinear", align_corners=False)
        F.cross_entropy(logits, labels).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in strengths)
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.allclose(p, torch.full_like(p, 0.1)) for p in strengths)
    with torch.no_grad():
        model(_images(1))  # a forward projects the stepped strengths back into [eps, 1 - eps], as InstCal's
    assert all(torch.equal(p, p.clamp(STRENGTH_EPS, 1 - STRENGTH_EPS)) for p in strengths)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # weights, source moments, BN statistics


# ---------------------------------------------------------------------- source moments
def _one_shot_moments(model: nn.Module, images: torch.Tensor, sites: dict[str, ChannelCalibration]) -> dict:
    """Each site's input for all images in one batch (captured from the plain source network), then
    per image: mean and unbiased variance over its tokens / pixels, averaged over the images."""
    captured = {}
    handles = [site.register_forward_pre_hook(lambda m, args, n=name: captured.__setitem__(n, args[0].clone()))
               for name, site in sites.items()]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    out = {}
    for name, x in captured.items():
        tokens = x.flatten(1, -2) if sites[name].channels_last else x.flatten(2).transpose(1, 2)  # B x L x C
        out[name] = {"mean": tokens.mean(1).mean(0), "var": tokens.var(1, correction=1).mean(0)}
    return out


def test_source_moments_stream_as_one_shot_average_of_per_image_moments(source, tmp_path):
    convert_sites(source, "instcal_u", sites=CHANNEL_KINDS)
    source.train()
    sites = {n: m for n, m in calibration_sites(source).items() if isinstance(m, ChannelCalibration)}
    images = _images(5, seed=11)
    streamed = collect_source_moments(source, [images[:2], images[2:3], images[3:]])
    assert set(streamed) == set(sites)
    assert source.training and all(s.mode == "instcal_u" for s in sites.values())  # the model is left as it was
    set_site_mode(source, "none")
    source.eval()
    expected = _one_shot_moments(source, images, sites)
    for name, entry in streamed.items():
        assert entry["mean"].dtype == entry["var"].dtype == torch.float32 and int(entry["images"]) == 5
        torch.testing.assert_close(entry["mean"], expected[name]["mean"], msg=name)
        torch.testing.assert_close(entry["var"], expected[name]["var"], msg=name)
    # Average of per-image moments, not pooled moments: the pooled variance also holds the spread of the means.
    name = next(iter(sites))
    pooled = _one_shot_moments(source, images[:1], sites)[name]["var"]
    assert not torch.allclose(expected[name]["var"], pooled)
    # Plain tensors: a cache file round trip loads into the sites.
    torch.save(streamed, tmp_path / "moments.pt")
    assert load_source_moments(source, torch.load(tmp_path / "moments.pt", weights_only=True)) == len(sites)
    torch.testing.assert_close(sites[name].source_var, streamed[name]["var"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="source moments lack the calibration site"):
        load_source_moments(source, {k: v for k, v in streamed.items() if k != name})


# ---------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("mode", ["instcal_u", "instcal_c"])
def test_state_dict_round_trip_into_a_freshly_converted_model(mode, source):
    reference = copy.deepcopy(source)
    model = _calibrated(source, mode)
    _randomise_strengths(model)
    images = _images(2)
    expected = model(images)[1]
    state = model.state_dict()
    fresh = _segformer(seed=9) if isinstance(model, SegFormer) else trained_segmenter(seed=9)
    convert_sites(fresh, mode, sites=ALL_KINDS)
    with pytest.raises(RuntimeError, match="no source moments"):
        fresh(images)
    assert sites_without_source(fresh) == sorted(_channel_names(fresh), key=list(calibration_sites(fresh)).index)
    fresh.load_state_dict(state)
    assert sites_without_source(fresh) == []
    assert torch.equal(fresh(images)[1], expected)
    # A source checkpoint loads into a converted model: only the calibration entries are missing.
    result = fresh.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(".chancal_" in k or "momentum" in k or "basis" in k or "_net." in k
                                       for k in result.missing_keys)


def test_conversion_is_idempotent_and_a_copy_calibrates_with_its_own_sites(segformer):
    model = _calibrated(copy.deepcopy(segformer), "instcal_u")
    _randomise_strengths(model)
    images = _images(2)
    expected = model(images)[1]
    report = convert_sites(model, "manual", sites=ALL_KINDS, strength=0.5)
    assert not report.created and len(report.remoded) == len(_channel_names(model))
    convert_sites(model, "instcal_u", sites=ALL_KINDS)
    assert torch.equal(model(images)[1], expected)  # learned strengths kept, hooks not doubled
    assert all(len(model.get_submodule(n.rpartition(".")[0])._forward_hooks) == 1
               for n in _channel_names(model) if n.endswith("chancal_out"))
    twin = copy.deepcopy(model)  # as a TENT method copies the shared model
    set_site_mode(twin, "test_stats")
    assert not torch.allclose(twin(images)[1], expected)
    assert torch.equal(model(images)[1], expected)  # the copy's hooks run the copy's sites


class _Shared(nn.Module):
    """One LayerNorm run twice, one never run, one GroupNorm on B x C x L maps."""

    def __init__(self) -> None:
        super().__init__()
        self.twice = nn.LayerNorm(4)
        self.unused = nn.LayerNorm(4)
        self.group = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.twice(self.twice(x.flatten(2).transpose(1, 2)))
        return self.group(tokens.transpose(1, 2))


def test_sites_that_cannot_be_placed_are_reported():
    model = _Shared()
    report = convert_sites(model, "test_stats", example=torch.randn(1, 4, 3, 3))
    assert report.created == ["group.chancal_out"]
    assert dict(report.skipped) == {"twice.chancal_out": "run 2 times per forward (a shared module): its per-image moments would mix",
                                    "unused.chancal_out": "not run by a forward of the model"}
    assert model.group.chancal_out.num_features == 4 and not model.group.chancal_out.channels_last
    load_source_moments(model, collect_source_moments(model, [torch.randn(2, 4, 3, 3)]))
    assert model(torch.randn(2, 4, 3, 3)).shape == (2, 4, 9)
    assert "skipped twice.chancal_out" in str(report)


# ---------------------------------------------------------------------- selection by layer group
def test_sites_selected_by_segmenter_groups(segformer):
    model = copy.deepcopy(segformer)
    report = convert_sites(model, "manual", sites=ALL_KINDS, select=["stage1", "stage2"])
    groups = model.layer_groups()
    in_groups = ("encoder.model.patch_embed.", "encoder.model.stages.0.", "encoder.model.stages.1.")
    assert report.created and all(n.startswith(in_groups) for n in report.created)
    assert "encoder.model.stages.1.chancal_out" in report.created  # the stage output site
    assert "head.fuse_conv.bn" in report.uncalibrated and not report.batchnorm
    assert calibration_sites(model)["head.fuse_conv.bn"].mode == "none"
    load_source_moments(model, collect_source_moments(model, [_images(2)]))
    stage1 = select_sites(model, ["stage1"])
    assert stage1 and all(any(n.startswith(p.rstrip("*")) for p in groups["stage1"]) for n in stage1)
    assert set_site_mode(model, "test_stats", select=stage1) == len(stage1)
    assert {n for n, m in calibration_sites(model).items() if m.mode == "test_stats"} == stage1
    assert select_sites(model, ["-stage1"]) == frozenset(calibration_sites(model)) - stage1
    assert select_sites(model, ["*.norm1.*"]) and all(".norm1." in n for n in select_sites(model, ["*.norm1.*"]))
    with pytest.raises(ConfigValueError, match="layer group 'stage4' .* matches no calibration layer"):
        select_sites(model, ["stage4"])  # converted for stages 1-2 only


def test_deeplab_sites_by_group(deeplab):
    model = copy.deepcopy(deeplab)
    report = convert_sites(model, "instcal_u", sites=ALL_KINDS, select=["stem", "layer1"])
    assert "bn1" in report.batchnorm and "layer1.0.chancal_in" in report.created and "layer1.chancal_out" in report.created
    assert all(n == "bn1" or n.startswith("layer1.") for n in report.batchnorm + report.created)
    assert "layer2.0.bn1" in report.uncalibrated
    assert set_site_mode(model, "test_stats", select=select_sites(model, ["stem"])) == 1
    assert model.bn1.mode == "bn_adapt" and model.layer1.chancal_out.mode == "none"  # InstCal's name for m = 1
    with pytest.raises(ConfigValueError, match="layer group 'heads'"):
        convert_sites(model, "instcal_u", sites=ALL_KINDS, select=["heads"])  # DeepLabV2's heads hold no site
    with pytest.raises(ConfigValueError, match="unknown calibration site kind"):
        convert_sites(model, "instcal_u", sites=["attention"])


# ---------------------------------------------------------------------- strengths for the plot
def test_strengths_recorded_and_plotted_for_every_site(segformer, tmp_path):
    model = _calibrated(copy.deepcopy(segformer), "instcal_c", kinds=("norm", "batchnorm"))
    assert record_strengths(model) == len(calibration_sites(model))
    model(_images(2))
    per_layer = learned_strengths(model, from_last_forward=True)
    assert list(per_layer) == list(calibration_sites(model))
    site = "encoder.model.stages.0.blocks.0.norm1.chancal_out"
    assert per_layer[site]["mean"].shape == (calibration_sites(model)[site].num_features,)
    assert write_figure(tmp_path / "strengths.png", strength_figure(per_layer)).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------- TENT on LayerNorm
def test_tent_ln_adapts_layernorm_affine_parameters_only(segformer, deeplab):
    model = _calibrated(copy.deepcopy(segformer), "instcal_u", kinds=("norm",))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    params = configure_tent_ln(model)
    assert {id(p) for p in params} == {id(p) for m in norms for p in (m.weight, m.bias)}
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    assert norm_affine_parameters(model) == params
    with pytest.raises(ValueError, match="no LayerNorm / GroupNorm affine parameters"):
        configure_tent_ln(copy.deepcopy(deeplab))
