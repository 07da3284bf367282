"""Photometric strong augmentation: dtype/range, no geometry, per-sample choices, determinism."""

from __future__ import annotations

import pytest
import torch

from intrada_pl.data.strong_augment import (
    AUGMIX_OPS,
    RANDAUGMENT_OPS,
    CAEDistortion,
    DeepAugment,
    Noise2Net,
    PhotometricAugMix,
    PhotometricRandAugment,
    StrongAugment,
    cae_state_dict_shapes,
)

torch.set_num_threads(1)


def _batch(b: int = 4, h: int = 16, w: int = 24, seed: int = 0, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images with structure: a gradient plus noise
    ramp = torch.linspace(0, 200, w).view(1, 1, 1, w)
    x = ramp + torch.randint(0, 55, (b, 3, h, w), generator=g)
    return x.to(dtype) if dtype == torch.uint8 else x.to(dtype)


def _constant(b: int = 3, h: int = 12, w: int = 20) -> torch.Tensor:
    colors = torch.tensor([[200, 90, 30], [10, 250, 128], [255, 255, 0]], dtype=torch.uint8)[:b]
    return colors.view(b, 3, 1, 1).expand(b, 3, h, w).contiguous()


def _assert_spatially_constant(y: torch.Tensor) -> None:
    flat = y.float().flatten(2)
    spread = flat.amax(-1) - flat.amin(-1)
    assert spread.max() <= 1.0, spread  # at most 1 grey level of rounding


AUGMENTERS = {
    "randaugment": lambda: PhotometricRandAugment(),
    "augmix": lambda: PhotometricAugMix(),
    "noise2net": lambda: DeepAugment(),
    "strong": lambda: StrongAugment(),
}


@pytest.mark.parametrize("name", list(AUGMENTERS))
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_and_range(name, dtype):
    torch.manual_seed(0)
    x = _batch(dtype=dtype)
    y = AUGMENTERS[name]()(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.float().min() >= 0 and y.float().max() <= 255
    assert not torch.equal(y, x)


@pytest.mark.parametrize("op", RANDAUGMENT_OPS)
def test_every_randaugment_op_is_photometric(op):
    torch.manual_seed(0)
    aug = PhotometricRandAugment(num_ops=1, magnitude=20, ops=(op,))
    _assert_spatially_constant(aug(_constant()))


def test_augmix_noise2net_and_strong_augment_keep_flat_images_flat():
    torch.manual_seed(0)
    x = _constant()
    for aug in (PhotometricAugMix(severity=10), Noise2Net(), StrongAugment()):
        for _ in range(3):
            _assert_spatially_constant(aug(x))
    assert set(AUGMIX_OPS) <= set(RANDAUGMENT_OPS)  # AugMix uses the same photometric op table


def test_per_sample_choices_are_recorded_and_cover_all_ops():
    aug = StrongAugment()
    x = _batch(b=12, h=8, w=8)
    torch.manual_seed(3)
    aug(x)
    assert len(aug.last_choices) == 12
    assert set(aug.last_choices) == {"randaugment", "augmix", "deepaugment"}
    counts = aug.choice_counts()
    assert sum(counts.values()) == 12 and counts["clean"] == 0


def test_determinism_with_seed_and_generator():
    aug = StrongAugment(p_clean=0.25)
    x = _batch(b=6)
    torch.manual_seed(7)
    y1, c1 = aug(x), list(aug.last_choices)
    torch.manual_seed(7)
    y2, c2 = aug(x), list(aug.last_choices)
    assert torch.equal(y1, y2) and c1 == c2
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    y3, y4 = aug(x, generator=g1), aug(x, generator=g2)
    assert torch.equal(y3, y4)
    y5 = aug(x, generator=g1)  # the generator advanced: a new draw
    assert not torch.equal(y3, y5)


def test_noise2net_changes_images_resamples_each_call_and_per_image():
    torch.manual_seed(0)
    net = Noise2Net()
    x = _batch(b=1).expand(2, -1, -1, -1).contiguous()  # the same image twice
    y1, y2 = net(x), net(x)
    assert (y1.float() - x.float()).abs().mean() > 2
    assert not torch.equal(y1, y2)  # re-initialised every call
    assert not torch.equal(y1[0], y1[1])  # one random network per image


def test_p_clean_one_returns_input_unchanged():
    aug = StrongAugment(p_clean=1.0)
    for dtype in (torch.uint8, torch.float32):
        x = _batch(dtype=dtype) + (0.3 if dtype == torch.float32 else 0)
        y = aug(x)
        assert torch.equal(y, x) and y.dtype == x.dtype
        assert aug.last_choices == ["clean"] * x.shape[0]


def test_clean_samples_are_bit_identical_in_a_mixed_batch():
    aug = StrongAugment(p_clean=0.5)
    x = _batch(b=8, dtype=torch.float32) + 0.37
    torch.manual_seed(1)
    y = aug(x)
    clean = [i for i, c in enumerate(aug.last_choices) if c == "clean"]
    assert 0 < len(clean) < 8
    assert torch.equal(y[clean], x[clean])


def test_invalid_configuration_is_rejected():
    with pytest.raises(ValueError):
        StrongAugment(ops=("randaugment", "rotate"))
    with pytest.raises(ValueError):
        DeepAugment(kind="edsr")
    with pytest.raises(ValueError):
        DeepAugment(kind="cae")  # no weight file
    with pytest.raises(ValueError):
        PhotometricRandAugment(ops=("shear_x",))
    with pytest.raises(TypeError):
        PhotometricRandAugment()(torch.zeros(1, 3, 4, 4, dtype=torch.int32))


@pytest.fixture(scope="module")
def cae_weights(tmp_path_factory):
    """A CAE weight file in the hendrycks/imagenet-r key layout, with random weights."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in cae_state_dict_shapes().items():
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else 1
        state[key] = torch.randn(shape, generator=g) / fan_in**0.5
    path = tmp_path_factory.mktemp("cae") / "model_final.state"
    torch.save(state, path)
    return path


def test_cae_deepaugment_from_weight_file(cae_weights, tmp_path):
    torch.manual_seed(0)
    aug = DeepAugment(weights=cae_weights)
    assert aug.kind == "cae"
    x = _batch(b=2, h=18, w=26)  # not a multiple of 4: padded and cropped back
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype and not torch.equal(y, x)
    torch.manual_seed(5)
    y1 = aug(x)
    torch.manual_seed(5)
    assert torch.equal(y1, aug(x))
    # every weight and latent distortion option runs
    cae: CAEDistortion = aug.net  # type: ignore[assignment]
    seen = set()
    for seed in range(60):
        seen.add(cae.resample_weights(torch.Generator().manual_seed(seed)))
        if len(seen) == 8:
            break
    assert seen == set(range(8))
    code = torch.rand(1, 32, 6, 7) * 2 - 1
    for option in range(9):
        assert cae._distort_latent(code, option, None).shape == code.shape
    # a StrongAugment with both DeepAugment kinds
    both = StrongAugment(ops=("noise2net", "cae"), deepaugment_weights=cae_weights)
    assert both(x).shape == x.shape
    # a file that is not a CAE (EDSR-like keys) is refused with a clear message
    bad = tmp_path / "edsr.pt"
    torch.save({"head.0.weight": torch.zeros(1), "body.0.body.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="EDSR"):
        DeepAugment(weights=bad)
