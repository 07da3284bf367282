"""CalibratedBatchNorm: the calibration rule, per-sample independence, gradients, conversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intrada_pl.visuals import strength_figure, write_figure
from intrada_pl.models.bn_calibration import (
    CALIBRATION_MODES,
    STRENGTH_EPS,
    CalibratedBatchNorm,
    calibration_parameters,
    convert_batchnorm,
    freeze_all_but_calibration,
    learned_strengths,
    record_strengths,
    set_calibration_mode,
)

torch.set_num_threads(1)


def _trained_bn(c: int = 4, seed: int = 0) -> nn.BatchNorm2d:
    """A BN with non-trivial gamma/beta/running stats, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, eps=1e-3)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn.eval()


def _images(b: int = 3, c: int = 4, h: int = 5, w: int = 7, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Different scale/offset per image so instance stats really differ from the source stats.
    return torch.randn(b, c, h, w, generator=g) * (1 + torch.arange(b).view(b, 1, 1, 1)) + 2.0


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)),
    )
    with torch.no_grad():  # give the BNs source statistics
        net.train()
        for _ in range(3):
            net(torch.randn(4, 3, 8, 8))
    return net.eval()


def test_mode_none_is_exactly_eval_bn():
    bn = _trained_bn()
    x = _images()
    cal = CalibratedBatchNorm.from_batchnorm(bn, "none")
    assert torch.equal(cal(x), bn(x))


def test_manual_zero_matches_eval_bn():
    bn = _trained_bn()
    x = _images()
    cal = CalibratedBatchNorm.from_batchnorm(bn, "manual", strength=0.0)
    torch.testing.assert_close(cal(x), bn(x), rtol=1e-6, atol=1e-6)


def _expected(bn: nn.BatchNorm2d, x: torch.Tensor, m_mean, m_var) -> torch.Tensor:
    """Hand-written rule: unbiased per-sample spatial stats mixed with the source stats."""
    n = x.shape[2] * x.shape[3]
    mu_t = x.mean(dim=(2, 3))
    var_t = ((x - mu_t[:, :, None, None]) ** 2).sum(dim=(2, 3)) / max(n - 1, 1)
    mu = (1 - m_mean) * bn.running_mean + m_mean * mu_t
    var = (1 - m_var) * bn.running_var + m_var * var_t
    xn = (x - mu[:, :, None, None]) / torch.sqrt(var[:, :, None, None] + bn.eps)
    return bn.weight[None, :, None, None] * xn + bn.bias[None, :, None, None]


def test_bn_adapt_is_per_instance_normalisation_with_unbiased_variance():
    bn = _trained_bn()
    x = _images()
    cal = CalibratedBatchNorm.from_batchnorm(bn, "bn_adapt")
    with torch.no_grad():
        torch.testing.assert_close(cal(x), _expected(bn, x, 1.0, 1.0), rtol=1e-5, atol=1e-5)
        # manual m = 1 is the same thing (lerp is exact at the ends).
        torch.testing.assert_close(CalibratedBatchNorm.from_batchnorm(bn, "manual", strength=1.0)(x), cal(x))
        # and it is NOT F.instance_norm's biased variance
        assert not torch.allclose(cal(x), nn.functional.instance_norm(x, eps=bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None], atol=1e-4)


def test_manual_intermediate_strength_and_1x1_maps():
    bn = _trained_bn()
    x = _images()
    cal = CalibratedBatchNorm.from_batchnorm(bn, "manual", strength=0.3)
    with torch.no_grad():
        torch.testing.assert_close(cal(x), _expected(bn, x, 0.3, 0.3), rtol=1e-5, atol=1e-5)
        y = CalibratedBatchNorm.from_batchnorm(bn, "bn_adapt")(x[:, :, :1, :1])  # biased fallback: no NaN
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("mode", ["manual", "bn_adapt", "instcal_u", "instcal_c"])
def test_output_of_one_image_does_not_depend_on_its_batch(mode):
    torch.manual_seed(0)
    cal = CalibratedBatchNorm.from_batchnorm(_trained_bn(), mode)
    x = _images(b=3)
    with torch.no_grad():
        torch.testing.assert_close(cal(x)[:1], cal(x[:1]), rtol=1e-5, atol=1e-6)


def test_instcal_u_parameters_and_projection():
    cal = CalibratedBatchNorm.from_batchnorm(_trained_bn(), "instcal_u")
    assert cal.momentum_mean.shape == (4,) and cal.momentum_var.shape == (4,)
    assert torch.all(cal.momentum_mean == 0.1) and torch.all(cal.momentum_var == 0.1)
    assert {n for n, _ in cal.named_parameters()} == {"momentum_mean", "momentum_var"}
    assert {"weight", "bias", "running_mean", "running_var"} <= {n for n, _ in cal.named_buffers()}
    with torch.no_grad():
        cal.momentum_mean[0] = 5.0
        cal.momentum_var[1] = -3.0
    cal(_images())
    assert cal.momentum_mean[0].item() == pytest.approx(1 - STRENGTH_EPS)
    assert cal.momentum_var[1].item() == pytest.approx(STRENGTH_EPS)
    assert cal.momentum_mean.min() >= STRENGTH_EPS and cal.momentum_mean.max() <= 1 - STRENGTH_EPS


def test_instance_stats_carry_no_gradient():
    bn = _trained_bn()
    x = _images().requires_grad_(True)
    cal = CalibratedBatchNorm.from_batchnorm(bn, "bn_adapt")
    cal(x).sum().backward()
    # With stop-gradient the input gradient is just gamma * rsqrt(var + eps) per sample/channel:
    # constant over H x W (true BN/instance-norm backprop would not be).
    with torch.no_grad():
        var_t = x.var(dim=(2, 3))
        expected = (bn.weight * torch.rsqrt(var_t + bn.eps))[:, :, None, None].expand_as(x)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6)


def test_only_calibration_parameters_receive_gradients():
    net = _small_net()
    buffers_before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    report = convert_batchnorm(net, "instcal_u")
    n_trainable = freeze_all_but_calibration(net)
    assert n_trainable == 2 * (8 + 4)
    net.train()  # calibrated layers behave the same in train mode and never update their stats
    net(torch.randn(2, 3, 8, 8)).square().mean().backward()
    for name, p in net.named_parameters():
        if "momentum" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    after = net.state_dict()
    for key, value in buffers_before.items():
        assert torch.equal(after[key], value), key
    assert len(report.converted) == 2


def test_instcal_c_shapes_weights_and_per_sample_strengths():
    torch.manual_seed(0)
    c = 4
    cal = CalibratedBatchNorm.from_batchnorm(_trained_bn(c), "instcal_c")
    assert cal.basis_mean.shape == (8, c) and cal.basis_var.shape == (8, c)
    for net in (cal.mean_net, cal.var_net):
        assert net[0].in_features == 2 * c and net[0].out_features == 256
        assert net[2].in_features == 256 and net[2].out_features == 8
        assert isinstance(net[1], nn.ReLU) and isinstance(net[3], nn.Softmax)
        assert torch.all(net[0].bias == 0) and net[0].weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert cal.basis_mean.std().item() == pytest.approx(0.05, rel=0.6)
    # Bigger MLP weights so different images give visibly different softmax weights.
    with torch.no_grad():
        for net in (cal.mean_net, cal.var_net):
            net[0].weight.mul_(10)
            net[2].weight.mul_(10)
    x = _images(b=3)
    rm, rv = cal.running_mean, cal.running_var
    mu_t, var_t = x.mean(dim=(2, 3)), x.var(dim=(2, 3))
    w_mean = cal.mean_net(torch.cat([mu_t, rm.expand_as(mu_t)], 1))
    w_var = cal.var_net(torch.cat([var_t, rv.expand_as(var_t)], 1))
    torch.testing.assert_close(w_mean.sum(1), torch.ones(3))
    torch.testing.assert_close(w_var.sum(1), torch.ones(3))
    record_strengths(cal)
    y = cal(x)
    m_mean, m_var = cal.last_strengths["mean"], cal.last_strengths["var"]
    assert m_mean.shape == (3, c) and m_var.shape == (3, c)
    torch.testing.assert_close(m_mean, (0.1 + w_mean @ cal.basis_mean).clamp(STRENGTH_EPS, 1 - STRENGTH_EPS).detach())
    for m in (m_mean, m_var):
        assert m.min() >= STRENGTH_EPS and m.max() <= 1 - STRENGTH_EPS
        assert not torch.allclose(m[0], m[1]) and not torch.allclose(m[1], m[2])
    with torch.no_grad():
        torch.testing.assert_close(y, _expected(cal_as_bn(cal), x, m_mean, m_var), rtol=1e-5, atol=1e-5)
    # gradients reach the MLPs and the bases
    y.square().mean().backward()
    assert all(p.grad is not None for p in cal.calibration_parameters())
    # normalized conditioning: same shapes, finite
    cal_n = CalibratedBatchNorm.from_batchnorm(_trained_bn(c), "instcal_c", condition="normalized")
    assert torch.isfinite(cal_n(x)).all()


def cal_as_bn(cal: CalibratedBatchNorm) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(cal.num_features, eps=cal.eps).eval()
    with torch.no_grad():
        bn.weight.copy_(cal.weight)
        bn.bias.copy_(cal.bias)
        bn.running_mean.copy_(cal.running_mean)
        bn.running_var.copy_(cal.running_var)
    return bn


def test_instcal_c_parameter_count_matches_reference_formula():
    c = 16
    cal = CalibratedBatchNorm.from_batchnorm(nn.BatchNorm2d(c), "instcal_c")
    n = sum(p.numel() for p in cal.calibration_parameters())
    assert n == 2 * (2 * c * 256 + 256 + 256 * 8 + 8) + 2 * 8 * c


def test_conversion_report_syncbn_and_remode():
    net = _small_net()
    net.append(nn.SyncBatchNorm(4).eval())
    net.append(nn.BatchNorm2d(4, track_running_stats=False))
    net.append(nn.LayerNorm([4, 8, 8]))
    report = convert_batchnorm(net, "manual", strength=0.2)
    assert report.converted == ["1", "5.1", "6"]
    assert isinstance(net[6], CalibratedBatchNorm)  # SyncBatchNorm became a local calibrated layer
    skipped = {name: kind for name, kind, _ in report.skipped}
    assert skipped == {"4": "GroupNorm", "7": "BatchNorm2d", "8": "LayerNorm"}
    text = str(report)
    assert "GroupNorm" in text and "5.1" in text and "converted 3" in text
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 4, 8, 8)
    # converting again re-modes in place instead of wrapping twice
    again = convert_batchnorm(net, "instcal_u")
    assert again.converted == [] and again.remoded == ["1", "5.1", "6"]
    assert all(m.mode == "instcal_u" for m in net.modules() if isinstance(m, CalibratedBatchNorm))


def test_source_state_dict_loads_into_converted_model():
    src = _small_net()
    net = _small_net()
    convert_batchnorm(net, "instcal_u")
    result = net.load_state_dict(src.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all("momentum" in k for k in result.missing_keys)


def test_set_calibration_mode_and_strengths_plot(tmp_path):
    net = _small_net()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = net(x)
        convert_batchnorm(net, "instcal_u")
        assert set_calibration_mode(net, "none") == 2
        assert torch.equal(net(x), plain)
        set_calibration_mode(net, "manual", strength=0.5)
        assert all(float(m.strength) == 0.5 for m in net.modules() if isinstance(m, CalibratedBatchNorm))
        s = learned_strengths(net)
        assert torch.all(s["1"]["mean"] == 0.5)
        set_calibration_mode(net, "instcal_u")
        net[1].momentum_mean.fill_(0.7)
    assert calibration_parameters(net) and all(p.shape in {(8,), (4,)} for p in calibration_parameters(net))
    s = learned_strengths(net)
    assert list(s) == ["1", "5.1"] and s["1"]["mean"].shape == (8,)
    torch.testing.assert_close(s["1"]["mean"], torch.full((8,), 0.7))
    out = write_figure(tmp_path / "plots" / "strengths.png", strength_figure(s))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["strengths.png"]  # no temp file left
    with pytest.raises(ValueError):
        set_calibration_mode(nn.Sequential(nn.Conv2d(1, 1, 1)), "manual")
    with pytest.raises(ValueError):
        set_calibration_mode(net, "tent")


def test_all_modes_run_and_dtype_is_kept():
    assert CALIBRATION_MODES == ("none", "manual", "bn_adapt", "instcal_u", "instcal_c")
    x = _images()
    for mode in CALIBRATION_MODES:
        cal = CalibratedBatchNorm.from_batchnorm(_trained_bn(), mode)
        y = cal(x)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            yb = cal(x.bfloat16())
        assert yb.dtype == torch.bfloat16 and torch.isfinite(yb.float()).all()


def test_instance_stats_match_var_mean():
    from intrada_pl.models.bn_calibration import instance_stats

    x = _images(b=2, c=3, h=6, w=9)
    mu, var = instance_stats(x)
    ref_var, ref_mu = torch.var_mean(x, dim=(2, 3), correction=1)
    torch.testing.assert_close(mu, ref_mu)
    torch.testing.assert_close(var, ref_var)
    mu1, var1 = instance_stats(x[:, :, :1, :1])  # 1x1 maps: biased (zero) variance, no NaN
    assert torch.equal(var1, torch.zeros(2, 3)) and torch.equal(mu1, x[:, :, 0, 0])


def test_two_forwards_before_one_backward():
    """Clean + augmented views through the same layers, one backward: the projection must not
    invalidate the first graph."""
    net = _small_net()
    convert_batchnorm(net, "instcal_u")
    freeze_all_but_calibration(net)
    with torch.no_grad():
        net[1].momentum_mean[0] = 3.0  # out of range: projected by the first forward
    loss = net(torch.randn(2, 3, 8, 8)).square().mean() + net(torch.randn(2, 3, 8, 8)).square().mean()
    loss.backward()
    assert net[1].momentum_mean.grad is not None
    assert net[1].momentum_mean[0].item() == pytest.approx(1 - STRENGTH_EPS)


class FrozenBatchNorm2d(nn.Module):
    """Stand-in for torchvision's FrozenBatchNorm2d (matched by class name)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.eps = 1e-5
        for name, value in (("weight", torch.ones(c)), ("bias", torch.zeros(c)),
                            ("running_mean", torch.zeros(c)), ("running_var", torch.ones(c))):
            self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class InputNormalization(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_frozen_bn_is_opt_in_and_non_norm_names_are_ignored():
    net = nn.Sequential(InputNormalization(), nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4))
    report = convert_batchnorm(net, "bn_adapt")
    assert report.converted == [] and [s[:2] for s in report.skipped] == [("2", "FrozenBatchNorm2d")]
    report = convert_batchnorm(net, "bn_adapt", include_frozen=True)
    assert report.converted == ["2"] and report.skipped == []
    assert isinstance(net[2], CalibratedBatchNorm)
