"""Tests for cnnrepro.data.augment (CPU, fast)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnnrepro.data import augment as A


def gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def rand_batch(b=16, c=3, h=8, w=8, seed=123) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


# ---------------------------------------------------------------- random_crop


def test_random_crop_padding_zero_is_identity():
    x = rand_batch()
    assert torch.equal(A.random_crop(x, 0, gen()), x)


def test_random_crop_is_shifted_window_of_padded_input():
    p = 3
    x = rand_batch(b=64, c=2, h=7, w=9)
    out = A.random_crop(x, p, gen(1))
    assert out.shape == x.shape
    padded = F.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(x.shape[0]):
        # Per-sample reference: search every legal window for an exact match.
        matches = [
            (t, l)
            for t in range(2 * p + 1)
            for l in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, t : t + 7, l : l + 9])
        ]
        assert matches, f"sample {i} is not a window of the padded input"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets really vary across samples


def test_random_crop_fill_value():
    x = torch.ones(32, 1, 4, 4)
    out = A.random_crop(x, 2, gen(0), fill=-1.0)
    assert set(out.unique().tolist()) <= {1.0, -1.0}
    assert (out == -1.0).any()


def test_random_crop_determinism():
    x = rand_batch(b=32)
    a = A.random_crop(x, 4, gen(7))
    b = A.random_crop(x, 4, gen(7))
    c = A.random_crop(x, 4, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------- random_hflip


def test_random_hflip_p1_p0():
    x = rand_batch()
    assert torch.equal(A.random_hflip(x, gen(), p=1.0), x.flip(-1))
    assert torch.equal(A.random_hflip(x, gen(), p=0.0), x)


def test_random_hflip_half():
    n = 4000
    # Asymmetric rows so flipped/unflipped are distinguishable.
    x = torch.arange(4.0).repeat(n, 1, 1, 1)  # [n, 1, 1, 4]
    out = A.random_hflip(x, gen(3), p=0.5)
    flipped = (out[:, 0, 0, 0] == 3.0).float().mean().item()
    assert 0.45 < flipped < 0.55
    assert torch.equal(A.random_hflip(x, gen(3)), out)
    assert not torch.equal(A.random_hflip(x, gen(4)), out)


# ---------------------------------------------------------------- keras_affine


def test_keras_affine_zero_ranges_is_identity():
    x = rand_batch(c=1, h=28, w=28)
    out = A.keras_affine(
        x, gen(), rotation_deg=0, width_shift=0, height_shift=0, shear_deg=0, zoom=(1.0, 1.0)
    )
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)


def test_keras_affine_random_changes_and_stays_in_range():
    x = rand_batch(b=32, c=1, h=28, w=28)
    out = A.keras_affine(x, gen(5))
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    # Bilinear + border replication never leaves the convex hull of each image.
    lo = x.amin(dim=(1, 2, 3))
    hi = x.amax(dim=(1, 2, 3))
    assert (out.amin(dim=(1, 2, 3)) >= lo - 1e-5).all()
    assert (out.amax(dim=(1, 2, 3)) <= hi + 1e-5).all()
    # Each sample gets its own transform.
    same = x[:1].expand(8, -1, -1, -1).contiguous()
    outs = A.keras_affine(same, gen(5))
    assert not torch.allclose(outs[0], outs[1])
    # Determinism.
    assert torch.equal(A.keras_affine(x, gen(5)), out)
    assert not torch.equal(A.keras_affine(x, gen(6)), out)


def test_keras_affine_pure_shift_moves_pixels():
    # A horizontal shift of exactly 2 px moves content by 2 columns (either way).
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = A._apply_keras_matrix(
        x, *(torch.tensor([v]) for v in (0.0, 2.0, 0.0, 0.0, 1.0, 1.0))
    )
    assert out[0, 0, 4, 2] == pytest.approx(1.0, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)


def _keras_reference(img, theta_deg, tx, ty, shear_deg, zx, zy):
    """Keras apply_affine_transform (channels_last, square image) re-derived with SciPy."""
    import numpy as np
    from scipy import ndimage

    t, s = np.deg2rad(theta_deg), np.deg2rad(shear_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    shear = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    m = rot @ shift @ shear @ zoom
    h, w = img.shape
    ox, oy = h / 2 - 0.5, w / 2 - 0.5
    m = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ m @ np.array([[1, 0, -ox], [0, 1, -oy], [0, 0, 1]])
    m[:, [0, 1]] = m[:, [1, 0]]
    m[[0, 1]] = m[[1, 0]]
    return ndimage.affine_transform(img, m[:2, :2], m[:2, 2], order=1, mode="nearest")


@pytest.mark.parametrize(
    "params", [(7.0, 2.3, -1.7, 5.0, 0.93, 1.08), (-9.5, -2.8, 2.8, -0.1, 1.1, 0.9)]
)
def test_keras_affine_matches_scipy_keras_reference(params):
    pytest.importorskip("scipy")
    img = torch.rand(28, 28, generator=gen(11), dtype=torch.float64).numpy()
    ref = _keras_reference(img, *params)
    th, tx, ty, sh, zx, zy = params
    args = [torch.tensor([float(v)]) for v in (math.radians(th), tx, ty, math.radians(sh), zx, zy)]
    out = A._apply_keras_matrix(torch.tensor(img, dtype=torch.float32)[None, None], *args)
    assert abs(out[0, 0].double().numpy() - ref).max() < 1e-4


def test_keras_affine_bad_fill_mode():
    with pytest.raises(ValueError):
        A.keras_affine(rand_batch(), gen(), fill_mode="wrap")


# ---------------------------------------------------------------- augment_copies


def test_augment_copies_counts_and_labels():
    n, copies = 37, 3
    # Each image encodes its index as a constant value; labels are the index too.
    x = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 6, 6).contiguous()
    y = torch.arange(n)
    ax, ay = A.augment_copies(x, y, copies, gen(0), batch_size=8)
    assert ax.dtype == torch.uint8 and ax.shape == (copies * n, 1, 6, 6)
    assert ay.shape == (copies * n,)
    assert torch.equal(torch.bincount(ay, minlength=n), torch.full((n,), copies))
    # Constant images stay constant under any warp with border fill: labels follow images.
    assert torch.equal(ax[:, 0, 0, 0].long(), ay)
    assert (ax == ax[:, :, :1, :1]).all()
    # Every pass is a permutation, and passes differ in order.
    passes = ay.view(copies, n)
    for k in range(copies):
        assert torch.equal(passes[k].sort().values, y)
    assert not torch.equal(passes[0], passes[1])


def test_augment_copies_transforms_and_is_deterministic():
    x = (torch.rand(10, 1, 28, 28, generator=gen(2)) * 255).round().to(torch.uint8)
    y = torch.arange(10)
    ax1, ay1 = A.augment_copies(x, y, 2, gen(9), batch_size=4)
    ax2, ay2 = A.augment_copies(x, y, 2, gen(9), batch_size=4)
    assert torch.equal(ax1, ax2) and torch.equal(ay1, ay2)
    ax3, _ = A.augment_copies(x, y, 2, gen(10), batch_size=4)
    assert not torch.equal(ax1, ax3)
    # The augmented image is not just the original.
    assert not torch.equal(ax1[: 10], x[ay1[:10]])
    # 3-D input round-trips in rank.
    ax4, _ = A.augment_copies(x[:, 0], y, 1, gen(9))
    assert ax4.shape == (10, 28, 28)


def test_augment_copies_identity_kwargs():
    x = (torch.rand(5, 1, 8, 8, generator=gen(2)) * 255).round().to(torch.uint8)
    y = torch.arange(5)
    ax, ay = A.augment_copies(
        x, y, 2, gen(0), rotation_deg=0, width_shift=0, height_shift=0, shear_deg=0, zoom=(1, 1)
    )
    assert torch.equal(ax, x[ay])


# ---------------------------------------------------------------- to_rgb / resize / normalize


def test_to_rgb():
    x = rand_batch(c=1)
    out = A.to_rgb(x)
    assert out.shape == (16, 3, 8, 8)
    for c in range(3):
        assert torch.equal(out[:, c], x[:, 0])
    x3 = rand_batch(c=3)
    assert A.to_rgb(x3) is x3
    with pytest.raises(ValueError):
        A.to_rgb(rand_batch(c=2))


def test_resize():
    x = rand_batch(c=1, h=28, w=28)
    out = A.resize(x, 56)
    assert out.shape == (16, 1, 56, 56)
    ref = F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False, antialias=False)
    assert torch.equal(out, ref)
    assert A.resize(x, 28) is x
    assert A.resize(x, (14, 20)).shape == (16, 1, 14, 20)
    const = torch.full((2, 1, 5, 5), 0.25)
    assert torch.allclose(A.resize(const, 9), torch.full((2, 1, 9, 9), 0.25))


def test_normalize():
    x = torch.ones(2, 3, 4, 4) * torch.tensor([0.5, 0.2, 0.9])[None, :, None, None]
    out = A.normalize(x, [0.5, 0.1, 0.4], [0.5, 0.1, 0.25])
    assert torch.allclose(out[:, 0], torch.zeros(2, 4, 4))
    assert torch.allclose(out[:, 1], torch.ones(2, 4, 4))
    assert torch.allclose(out[:, 2], torch.full((2, 4, 4), 2.0))
    grey = torch.rand(2, 1, 4, 4)
    assert A.normalize(A.to_rgb(grey), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError):
        A.normalize(x, [0.1, 0.2], [1.0, 1.0])


# ---------------------------------------------------------------- build_batch_transform

CIFAR = {
    "rgb": False,
    "input_size": None,
    "augment": "crop_flip",
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2023, 0.1994, 0.2010),
}


def u8(b=32, c=3, h=32, w=32, seed=0):
    return (torch.rand(b, c, h, w, generator=gen(seed)) * 255).round().to(torch.uint8)


def test_build_transform_eval_is_deterministic_and_plain():
    t = A.build_batch_transform(CIFAR, "cpu")
    x = u8()
    e1 = t(x, gen(0), False)
    e2 = t(x, gen(1), False)
    e3 = t(x, None, False)
    ref = A.normalize(x.float() / 255, CIFAR["mean"], CIFAR["std"])
    assert torch.equal(e1, e2) and torch.equal(e1, e3)
    assert torch.allclose(e1, ref, atol=1e-6)
    assert e1.dtype == torch.float32


def test_build_transform_train_augments_and_is_seeded():
    t = A.build_batch_transform(CIFAR, "cpu")
    x = u8()
    a = t(x, gen(0), True)
    b = t(x, gen(0), True)
    c = t(x, gen(1), True)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.allclose(a, t(x, None, False))
    # Same pipeline by hand: scale, crop, flip, normalise with the same generator stream.
    g = gen(0)
    ref = A.random_hflip(A.random_crop(x.float() / 255, 4, g), g)
    assert torch.allclose(a, A.normalize(ref, CIFAR["mean"], CIFAR["std"]), atol=1e-6)


def test_build_transform_flip_only():
    spec = dict(CIFAR, augment="flip")
    t = A.build_batch_transform(spec, "cpu")
    x = u8()
    out = t(x, gen(2), True)
    plain = t(x, None, False)
    for i in range(x.shape[0]):
        assert torch.allclose(out[i], plain[i]) or torch.allclose(out[i], plain[i].flip(-1))


def test_build_transform_grey_rgb_resize_imagenet():
    spec = {
        "rgb": True,
        "input_size": 56,
        "augment": "none",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    t = A.build_batch_transform(spec, "cpu")
    x = u8(b=4, c=1, h=28, w=28)
    out_train = t(x, gen(0), True)
    out_eval = t(x, None, False)
    assert out_train.shape == (4, 3, 56, 56)
    assert torch.equal(out_train, out_eval)  # "none" never augments
    ref = A.normalize(A.resize(A.to_rgb(x.float() / 255), 56), spec["mean"], spec["std"])
    assert torch.allclose(out_eval, ref, atol=1e-5)


def test_build_transform_kmnist_unit_scale_only():
    spec = {"rgb": False, "input_size": None, "augment": "kmnist10x", "mean": None, "std": None}
    t = A.build_batch_transform(spec, "cpu")
    x = u8(b=4, c=1, h=28, w=28)
    out = t(x, gen(0), True)
    assert torch.equal(out, x.float() / 255)
    spec_empty = dict(spec, mean=[], std=[])
    assert torch.equal(A.build_batch_transform(spec_empty, "cpu")(x, gen(0), True), out)


def test_build_transform_crop_padding_after_resize():
    spec = {"rgb": False, "input_size": 16, "augment": "crop_flip", "crop_padding": 2, "mean": None, "std": None}
    t = A.build_batch_transform(spec, "cpu")
    x = u8(b=8, c=1, h=8, w=8)
    out = t(x, gen(4), True)
    assert out.shape == (8, 1, 16, 16)
    g = gen(4)
    ref = A.random_hflip(A.random_crop(A.resize(x.float() / 255, 16), 2, g), g)
    assert torch.equal(out, ref)


def test_build_transform_unknown_augment():
    with pytest.raises(ValueError, match="crop_flip"):
        A.build_batch_transform(dict(CIFAR, augment="autoaugment"), "cpu")


def test_channels_last_batches_come_out_in_one_copy():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    spec = {"rgb": True, "input_size": 32, "augment": "none", "mean": [0.5] * 3, "std": [0.5] * 3}
    plain = A.build_batch_transform(spec, "cpu")(x)
    cl = A.build_batch_transform({**spec, "channels_last": True}, "cpu")(x)
    assert plain.is_contiguous() and cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert torch.equal(plain, cl)  # the same values, already in the layout the model reads
