"""Batched, on-device data augmentation and preprocessing.

The data path follows the "airbench" idea: a whole split is held as one
tensor on the training device, and every transform below works on a batch
``[B, C, H, W]`` at once.  Randomness is per sample but is drawn in bulk
from an explicit :class:`torch.Generator`, so the same seed gives the same
output.  There are no PIL calls and no per-sample Python loops.

Generators must live on the same device as the data (a CUDA generator for
CUDA tensors); random numbers are created with ``device=x.device``.

Study mapping (the studies' recipes as configured in config.yaml):

* seed 000: grey -> 3 channels, bilinear resize 28 -> 224, ImageNet
  normalisation, no augmentation.
* seed 002: ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` (or the
  flip alone), then normalisation.
* seed 003: Keras ``ImageDataGenerator`` 10x offline expansion
  (:func:`augment_copies`), values scaled to [0, 1] only.
* seed 004: bilinear resize (e.g. 32 -> 48), per-channel normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "random_crop",
    "random_hflip",
    "keras_affine",
    "augment_copies",
    "to_rgb",
    "resize",
    "normalize",
    "build_batch_transform",
]



@dataclass(frozen=True)
class Augmentation:
    """One named augmentation: random draws per training batch, or a fixed set made once (or neither).

    ``copies`` is the expansion factor of a fixed set; the config's ``limits.augment_copies`` overrides it.
    """

    crop: bool = False  # RandomCrop(padding) per batch
    flip: bool = False  # RandomHorizontalFlip per batch
    copies: int | None = None  # offline expansion with :func:`augment_copies` (Keras ImageDataGenerator)

    @property
    def per_batch(self) -> bool:
        """Whether each epoch sees differently augmented images (which rules out caching features)."""
        return self.crop or self.flip


#: The names a study's ``augment`` accepts (the config schema's list is read from here).
AUGMENTATIONS: dict[str, Augmentation] = {
    "none": Augmentation(),
    "crop_flip": Augmentation(crop=True, flip=True),  # seed 002's code
    "flip": Augmentation(flip=True),  # seed 002's text
    "kmnist10x": Augmentation(copies=10),  # seed 003
}

_FILL_MODES = {"nearest": "border", "constant": "zeros", "reflect": "reflection"}


def _check_batch(x: Tensor, name: str = "x") -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------
# Random crop / flip (seed 002)
# --------------------------------------------------------------------------


def random_crop(x: Tensor, padding: int, generator: torch.Generator, fill: float = 0.0) -> Tensor:
    """Pad by ``padding`` on every side, then take a random ``H x W`` window per sample.

    Equivalent in distribution to torchvision ``RandomCrop(size=(H, W),
    padding=padding, fill=fill)``: the window's top-left corner is uniform in
    ``{0, ..., 2*padding}`` along each axis, independently per sample.

    The padded batch is built once; each sample's window is then read with a
    single advanced-indexing gather driven by per-sample row/column offsets.
    """
    _check_batch(x)
    padding = int(padding)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x.clone()
    b, _, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding), mode="constant", value=float(fill))
    # Top-left corner of each sample's window in padded coordinates.
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=dev)
    rows = top[:, None] + torch.arange(h, device=dev)[None, :]  # [B, H]
    cols = left[:, None] + torch.arange(w, device=dev)[None, :]  # [B, W]
    bidx = torch.arange(b, device=dev)[:, None, None]
    # Advanced indices separated by a slice -> result is [B, H, W, C].
    out = padded[bidx, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right independently with probability ``p``."""
    _check_batch(x)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# --------------------------------------------------------------------------
# Keras ImageDataGenerator-style affine transform (seed 003)
# --------------------------------------------------------------------------


def _zoom_bounds(zoom: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(zoom, (int, float)):
        return 1.0 - float(zoom), 1.0 + float(zoom)
    lo, hi = zoom
    return float(lo), float(hi)


def keras_affine(
    x: Tensor,
    generator: torch.Generator,
    rotation_deg: float = 10.0,
    width_shift: float = 0.1,
    height_shift: float = 0.1,
    shear_deg: float = 0.1,
    zoom: float | Sequence[float] = (0.9, 1.1),
    fill_mode: str = "nearest",
) -> Tensor:
    """Random affine warp per sample, modelled on Keras ``ImageDataGenerator``.

    Per sample (all independent, uniform):

    * rotation ``theta`` in ``[-rotation_deg, rotation_deg]`` degrees;
    * horizontal shift in ``[-width_shift, width_shift] * W`` pixels and
      vertical shift in ``[-height_shift, height_shift] * H`` pixels
      (values >= 1 are taken as pixels directly, as in Keras);
    * shear angle in ``[-shear_deg, shear_deg]`` degrees (Keras 3 convention);
    * zoom factors ``zx`` and ``zy`` drawn independently from ``zoom``
      (a scalar ``z`` means ``(1 - z, 1 + z)``, as in Keras).

    As in Keras, the matrix ``M = R(theta) @ T(tx, ty) @ Shear @ Zoom`` maps
    *output* pixel coordinates to *input* sampling coordinates, about the
    image centre ``((W - 1) / 2, (H - 1) / 2)``; with
    ``R = [[cos, -sin], [sin, cos]]``, ``Shear = [[1, -sin s], [0, cos s]]``
    and ``Zoom = diag(zx, zy)`` acting on (column, row) coordinates.  Sampling
    is bilinear (Keras default ``interpolation_order=1``).  ``fill_mode``
    ``"nearest"`` replicates the border (``grid_sample`` ``padding_mode=
    "border"``, which equals SciPy's ``mode="nearest"`` for order-1
    interpolation); ``"constant"`` fills with 0; ``"reflect"`` mirrors about
    the image edge.

    Residual differences from Keras / SciPy ``affine_transform``:

    * Random numbers come from torch, not NumPy, so individual draws are not
      bit-identical to a Keras run with the same seed (only the distributions
      match).
    * Keras builds the matrix in (row, col) order and then swaps axes; as a
      result its ``height_shift_range`` actually moves the image along columns
      and its centre offset uses H for the column axis.  Both quirks vanish for
      square images with equal shift ranges (the KMNIST case); here width shift
      always moves columns and height shift rows.
    * Keras's ``cval`` for ``"constant"`` is fixed at 0 here; ``"wrap"`` is
      not supported.  SciPy's constant mode with order 1 blends differently at
      the very edge than ``grid_sample`` zero padding.
    * Arithmetic is float32 (SciPy uses float64); differences are ~1e-6.
    * Signs of rotation/shift/shear are symmetric random variables, so the
      handedness of the coordinate frame does not affect the distribution.
    """
    _check_batch(x)
    if fill_mode not in _FILL_MODES:
        raise ValueError(f"fill_mode must be one of {sorted(_FILL_MODES)}, got {fill_mode!r}")
    if not torch.is_floating_point(x):
        x = x.float()
    b, _, h, w = x.shape
    dev = x.device
    zlo, zhi = _zoom_bounds(zoom)

    u = torch.rand(b, 6, generator=generator, device=dev, dtype=torch.float32)
    sym = 2.0 * u - 1.0  # uniform in [-1, 1)
    theta = sym[:, 0] * math.radians(rotation_deg)
    tx_scale = width_shift * w if abs(width_shift) < 1 else width_shift
    ty_scale = height_shift * h if abs(height_shift) < 1 else height_shift
    tx = sym[:, 1] * tx_scale
    ty = sym[:, 2] * ty_scale
    shear = sym[:, 3] * math.radians(shear_deg)
    zx = zlo + (zhi - zlo) * u[:, 4]
    zy = zlo + (zhi - zlo) * u[:, 5]

    return _apply_keras_matrix(x, theta, tx, ty, shear, zx, zy, fill_mode)


def _apply_keras_matrix(
    x: Tensor,
    theta: Tensor,
    tx: Tensor,
    ty: Tensor,
    shear: Tensor,
    zx: Tensor,
    zy: Tensor,
    fill_mode: str = "nearest",
) -> Tensor:
    """Warp ``x`` with given per-sample parameters (angles in radians, shifts in pixels).

    ``tx`` moves along columns, ``ty`` along rows.  See :func:`keras_affine`.
    """
    b, _, h, w = x.shape
    dev = x.device
    zeros = torch.zeros_like(theta)
    ones = torch.ones_like(theta)

    def mat(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)  # [B, 3, 3]

    cos_t, sin_t = torch.cos(theta), torch.sin(theta)
    rot = mat([[cos_t, -sin_t, zeros], [sin_t, cos_t, zeros], [zeros, zeros, ones]])
    shift = mat([[ones, zeros, tx], [zeros, ones, ty], [zeros, zeros, ones]])
    shr = mat([[ones, -torch.sin(shear), zeros], [zeros, torch.cos(shear), zeros], [zeros, zeros, ones]])
    zm = mat([[zx, zeros, zeros], [zeros, zy, zeros], [zeros, zeros, ones]])
    m = rot @ shift @ shr @ zm  # centred pixel coords, output -> input

    # affine_grid (align_corners=False) uses normalised coords g with
    # pixel - centre = D g, D = diag(W/2, H/2).  So g_in = D^-1 A D g_out + D^-1 t.
    d = torch.tensor([w / 2.0, h / 2.0], device=dev, dtype=torch.float32)
    lin = m[:, :2, :2] * d[None, None, :] / d[None, :, None]
    trans = m[:, :2, 2] / d[None, :]
    grid_theta = torch.cat([lin, trans[:, :, None]], dim=2)
    grid = F.affine_grid(grid_theta, [b, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode=_FILL_MODES[fill_mode], align_corners=False
    )
    return out.to(x.dtype)


def augment_copies(
    x_uint8: Tensor,
    y: Tensor,
    copies: int,
    generator: torch.Generator,
    batch_size: int = 128,
    **affine_kwargs,
) -> tuple[Tensor, Tensor]:
    """Offline expansion of seed 003: ``copies`` augmented passes replace the originals.

    Each pass visits the training set in a fresh random order (like Keras
    ``flow(shuffle=True)`` over ``copies`` epochs), warps every image with
    :func:`keras_affine` (``affine_kwargs`` are passed on) and stores the
    result rounded and clamped to uint8.  Labels follow their images.  The
    output has ``copies * N`` rows and every original appears exactly
    ``copies`` times.  Work is done in chunks of ``batch_size`` so float
    intermediates stay small; output lives on ``x_uint8.device``.

    ``x_uint8`` is ``[N, C, H, W]`` (``[N, H, W]`` is accepted and returned
    in the same rank).  ``y`` is any tensor indexed along dim 0 (class ids or
    one-hot rows).  Keras would keep float32 outputs; storing uint8 adds at
    most 0.5/255 of quantisation error.
    """
    if x_uint8.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x_uint8.shape[0]} rows but y has {y.shape[0]}")
    copies = int(copies)
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    squeeze = x_uint8.dim() == 3
    x4 = x_uint8[:, None] if squeeze else x_uint8
    _check_batch(x4, "x_uint8")
    n = x4.shape[0]
    dev = x4.device
    out_x = torch.empty((copies * n, *x4.shape[1:]), dtype=torch.uint8, device=dev)
    out_y = torch.empty((copies * n, *y.shape[1:]), dtype=y.dtype, device=y.device)
    pos = 0
    for _ in range(copies):
        perm = torch.randperm(n, generator=generator, device=dev)
        for idx in perm.split(int(batch_size)):
            xb = x4[idx].float().div_(255.0)
            xb = keras_affine(xb, generator, **affine_kwargs)
            k = idx.shape[0]
            out_x[pos : pos + k] = xb.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            out_y[pos : pos + k] = y[idx.to(y.device)]
            pos += k
    if squeeze:
        out_x = out_x[:, 0]
    return out_x, out_y


# --------------------------------------------------------------------------
# Deterministic preprocessing
# --------------------------------------------------------------------------


def to_rgb(x: Tensor) -> Tensor:
    """Replicate a single grey channel to 3 channels (an expanded view); 3 channels pass through."""
    _check_batch(x)
    c = x.shape[1]
    if c == 3:
        return x
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"to_rgb expects 1 or 3 channels, got {c}")


def resize(x: Tensor, size: int | Sequence[int], mode: str = "bilinear") -> Tensor:
    """Resize to ``size`` (int = square) with ``F.interpolate``, no antialiasing.

    ``align_corners=False`` for the interpolating modes (torchvision's
    tensor ``Resize`` convention).  Returns ``x`` unchanged if it already has
    that size.
    """
    _check_batch(x)
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == hw:
        return x
    if not torch.is_floating_point(x):
        x = x.float()
    kwargs = {}
    if mode in ("linear", "bilinear", "bicubic", "trilinear"):
        kwargs["align_corners"] = False
        kwargs["antialias"] = False
    return F.interpolate(x, size=hw, mode=mode, **kwargs)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` (broadcast over the batch and space)."""
    _check_batch(x)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    if m.shape[1] not in (1, x.shape[1]) or s.shape[1] not in (1, x.shape[1]):
        raise ValueError(
            f"mean/std have {m.shape[1]}/{s.shape[1]} entries but x has {x.shape[1]} channels"
        )
    return (x - m) / s


def build_batch_transform(spec: dict, device) -> Callable[..., Tensor]:
    """Compose the per-batch pipeline described by ``spec``.

    Keys: ``rgb`` (bool), ``input_size`` (int or None), ``augment`` (a name in
    :data:`AUGMENTATIONS`), ``crop_padding`` (default 4, in pixels of the
    input resolution, i.e. after resizing), ``mean``/``std`` (sequences; None
    or empty means no normalisation), ``channels_last`` (bool: the memory format
    of the output batch).

    The returned callable ``f(x_uint8_batch, generator, train)`` does, in
    effect: uint8 -> float / 255 (float input is taken as already scaled),
    to_rgb if ``rgb``, resize to ``input_size``, (train only) augmentation,
    normalisation.  Because resize, crop (zero fill), and flip act on each
    channel identically, the grey -> RGB replication is applied just before
    normalisation, which is numerically identical and 3x cheaper.  Evaluation
    (``train=False``) is deterministic and draws no random numbers; its
    ``generator`` may be None.  An expansion made once (``copies``, e.g.
    ``"kmnist10x"``) is applied offline by :func:`augment_copies` and is a no-op here.
    """
    augment = spec.get("augment", "none") or "none"
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; valid names: {', '.join(AUGMENTATIONS)}")
    aug = AUGMENTATIONS[augment]
    rgb = bool(spec.get("rgb", False))
    input_size = spec.get("input_size")
    padding = int(spec.get("crop_padding", 4))
    mean, std = spec.get("mean"), spec.get("std")
    do_norm = mean is not None and std is not None and len(mean) > 0 and len(std) > 0
    if (mean is None or len(mean) == 0) != (std is None or len(std) == 0):
        raise ValueError("mean and std must be given together")
    dev = torch.device(device)
    memory_format = torch.channels_last if spec.get("channels_last") else torch.contiguous_format
    if do_norm:
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=dev)

    def transform(x: Tensor, generator: torch.Generator | None = None, train: bool = False) -> Tensor:
        x = x.to(dev, non_blocking=True)
        if x.dim() == 3:  # [B, H, W] grey
            x = x[:, None]
        _check_batch(x)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if input_size:
            x = resize(x, input_size)
        if train and aug.per_batch:
            if generator is None:
                raise ValueError("a generator is required for training-time augmentation")
            if aug.crop:
                x = random_crop(x, padding, generator)
            if aug.flip:
                x = random_hflip(x, generator)
        if rgb:
            x = to_rgb(x)
        if do_norm:
            x = normalize(x, mean_t, std_t)
        # One copy into the layout the model reads (a second one, NCHW then channels_last, would be wasted).
        return x.contiguous(memory_format=memory_format)

    return transform
