"""Datasets that need no network: the digits embedded in scikit-learn and synthetic mixtures.

:func:`load_digits` (scikit-learn's embedded 8x8 digits; scikit-learn is imported on first
use) and :func:`make_mixture` (synthetic Gaussian mixtures with their truth), and the
structures they return (:class:`DigitsData` with three :class:`Split` parts,
:class:`MixtureData`). The user's own files are read by :mod:`lvm_pyro.data.files`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lvm_pyro.checks import check_int
from lvm_pyro.data.validation import resolve_device, value_kind
from lvm_pyro.errors import ConfigurationError


class Split(NamedTuple):
    """One part of a dataset: examples ``x`` and their int64 labels ``y`` (None if unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor | None


@dataclass(frozen=True, eq=False, repr=False)
class DigitsData:
    """A dataset cut into train / validation / test splits, with what is known about it.

    :func:`load_digits` fills every field; :func:`load_dataset` returns the same structure
    for a user's file, with ``n_levels=None`` and ``image_size`` the stored example shape
    when examples are 2-D images (else None).
    """

    train: Split
    val: Split
    test: Split
    image_size: tuple[int, ...] | None = (8, 8)
    n_levels: int | None = 17
    threshold: float | None = None
    description: str = ""
    preprocessing: str = "none"

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one example (``(64,)``, or ``(8, 8)`` with ``image_shape=True``)."""
        return tuple(self.train.x.shape[1:])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={len(self.train.x)}, val={len(self.val.x)}, "
            f"test={len(self.test.x)}, event_shape={self.event_shape}, "
            f"dtype={self.train.x.dtype}, threshold={self.threshold}, "
            f"preprocessing={self.preprocessing!r}, description={self.description!r})"
        )

    @property
    def values(self) -> str:
        """What the examples hold, over all three splits: see :func:`value_kind`."""
        return value_kind(torch.cat([self.train.x.flatten(1), self.val.x.flatten(1), self.test.x.flatten(1)]))


@dataclass(frozen=True, eq=False)
class MixtureData:
    """Samples of a Gaussian mixture together with the truth that generated them.

    ``covariances`` follows scikit-learn's ``GaussianMixture.covariances_`` convention for
    ``covariance_type``: full (k, d, d), diag (k, d), spherical (k,), tied (d, d).
    """

    x: torch.Tensor
    z: torch.Tensor
    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    covariance_type: str


_DIGITS_DEFAULT_SPLIT = (1197, 300, 300)
_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


def _float_dtype(dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigurationError(
            f"dtype={dtype!r} is not a floating torch dtype; pass torch.float32 or torch.float64"
        )
    return dtype


def _data_device(device: str | torch.device | None) -> torch.device:
    return torch.device("cpu") if device is None else resolve_device(device)


def _check_threshold(binarize, upper: float | None) -> float:
    rng_hint = f"a pixel level in (0, {upper:g}], e.g. binarize=8" if upper else "a number"
    if isinstance(binarize, bool) or not isinstance(binarize, (int, float, np.number)):
        raise ConfigurationError(
            f"binarize={binarize!r}: pass the threshold itself, {rng_hint} (x >= threshold -> 1)"
        )
    t = float(binarize)
    if not math.isfinite(t) or (upper is not None and not 0 < t <= upper):
        raise ConfigurationError(
            f"binarize={binarize!r} would make every pixel 0 or every pixel 1: pass {rng_hint}"
        )
    return t


def _split_counts(split, n: int) -> tuple[int, int, int]:
    """Three split sizes summing to ``n``, from counts or from fractions summing to 1."""
    usage = (
        f"split={split!r}: pass three counts (train, val, test) summing to {n}, or three "
        "fractions summing to 1 such as (2/3, 1/6, 1/6); val and test may be 0, train may not"
    )
    try:
        parts = tuple(split)
    except TypeError:
        raise ConfigurationError(usage) from None
    if len(parts) != 3 or any(
        isinstance(p, bool) or not isinstance(p, (int, float, np.number)) for p in parts
    ):
        raise ConfigurationError(usage)
    if all(isinstance(p, (int, np.integer)) for p in parts):
        counts = tuple(int(p) for p in parts)
    else:
        fractions = [float(p) for p in parts]
        if not all(math.isfinite(f) and f >= 0 for f in fractions):
            raise ConfigurationError(usage)
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigurationError(f"{usage} (these fractions sum to {sum(fractions):g})")
        b1 = min(n, math.floor(fractions[0] * n + 0.5))
        b2 = min(n, max(b1, math.floor((fractions[0] + fractions[1]) * n + 0.5)))
        counts = (b1, b2 - b1, n - b2)
    if min(counts) < 0 or sum(counts) != n or counts[0] == 0:
        raise ConfigurationError(f"{usage} (this gives sizes {counts})")
    return counts


def _make_splits(
    x: np.ndarray,
    y: np.ndarray | None,
    split,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Split, Split, Split]:
    counts = _split_counts(split, len(x))
    seed = check_int(seed, "seed", 0)
    order = np.random.default_rng(seed).permutation(len(x))
    bounds = np.cumsum(counts)[:-1]
    splits = []
    for idx in np.split(order, bounds):
        xs = torch.as_tensor(x[idx], dtype=dtype, device=device)
        ys = None if y is None else torch.as_tensor(y[idx], dtype=torch.int64, device=device)
        splits.append(Split(xs, ys))
    return splits[0], splits[1], splits[2]


@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits(
    *,
    binarize: float | None = None,
    scale: bool = True,
    image_shape: bool = False,
    split=_DIGITS_DEFAULT_SPLIT,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> DigitsData:
    """The 1797 8x8 hand-written digits embedded in scikit-learn, split into train/val/test.

    Pixels are grey levels 0..16. ``binarize=t`` gives x = 1[pixel >= t] (the project's
    standard is t = 8, so level 8 -> 1 and level 7 -> 0), for a Bernoulli likelihood.
    Otherwise ``scale=True`` gives x = pixel / 16 in [0, 1], and ``scale=False`` the raw
    levels 0..16 as floats (for a 17-level Categorical likelihood). ``image_shape=True`` keeps
    examples as (8, 8) images instead of 64-vectors. The split is
    ``numpy.random.default_rng(seed).permutation(1797)`` cut into ``split``: three counts
    summing to 1797 or three fractions summing to 1. Labels y are the digits 0..9 (int64).
    Tensors have ``dtype`` (default: torch's default dtype) and live on ``device``
    (None: CPU; "auto": CUDA when available).

    Example:
        >>> data = load_digits(binarize=8)
        >>> data.train.x.shape, data.val.x.shape, data.test.x.shape
        (torch.Size([1197, 64]), torch.Size([300, 64]), torch.Size([300, 64]))
        >>> sorted(data.train.x.unique().tolist()), data.threshold
        ([0.0, 1.0], 8.0)
    """
    images, labels = _digits_raw()
    if binarize is not None:
        threshold = _check_threshold(binarize, 16.0)
        x = (images >= threshold).astype(np.float64)
        how = f"binarized as pixel >= {threshold:g}"
        preprocessing = f"binarized at >= {threshold:g} of the grey levels 0..16"
    elif scale:
        threshold, x, how = None, images / 16.0, "scaled to pixel / 16 in [0, 1]"
        preprocessing = "scaled: grey level / 16, in [0, 1]"
    else:
        threshold, x, how = None, images, "raw grey levels 0..16"
        preprocessing = "none: raw grey levels 0..16"
    if image_shape:
        x = x.reshape(-1, 8, 8)
    train, val, test = _make_splits(x, labels, split, seed, _float_dtype(dtype), _data_device(device))
    description = (
        "scikit-learn digits (UCI optical recognition of hand-written digits): 1797 8x8 "
        f"images of the digits 0-9 with grey levels 0..16, {how}; split with seed {seed}"
    )
    return DigitsData(train, val, test, (8, 8), 17, threshold, description, preprocessing)


def _spread_means(rng: np.random.Generator, k: int, d: int, separation: float) -> np.ndarray:
    """k points in R^d whose two closest are ``separation`` apart, spread fairly evenly."""
    if k == 1:
        return np.zeros((1, d))
    best, best_ratio = None, -1.0
    for _ in range(32):
        pts = rng.standard_normal((k, d))
        pts -= pts.mean(axis=0)
        dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        closest = dist[np.triu_indices(k, 1)].min()
        ratio = closest / max(np.linalg.norm(pts, axis=1).max(), 1e-12)
        if ratio > best_ratio:
            best, best_ratio, best_closest = pts, ratio, closest
    return best * (separation / best_closest)


def _random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    cov = (q * rng.uniform(0.25, 1.0, size=d)) @ q.T
    return (cov + cov.T) / 2


def make_mixture(
    n: int,
    k: int,
    d: int,
    *,
    seed: int = 0,
    separation: float = 4.0,
    covariance_type: str = "full",
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> MixtureData:
    """Sample n points of a random k-component Gaussian mixture in R^d and return the truth.

    z_i ~ Categorical(weights), x_i | z_i ~ Normal(means[z_i], covariance of z_i), with
    weights ~ Dirichlet(5, ..., 5). Every component's variance along any direction lies in
    [0.25, 1] (standard deviation 0.5..1), and the means are spread so that the two closest
    are exactly ``separation`` apart: separation is the closest distance between means in
    units of at most one standard deviation (4: well separated; 1-2: overlapping). The
    covariance structure is scikit-learn's ``covariance_type``. Deterministic for a ``seed``
    (all draws are made in float64 with numpy, then cast to ``dtype``).

    Example:
        >>> mix = make_mixture(500, 3, 2, seed=1, covariance_type="diag")
        >>> mix.x.shape, mix.z.shape, mix.means.shape, mix.covariances.shape
        (torch.Size([500, 2]), torch.Size([500]), torch.Size([3, 2]), torch.Size([3, 2]))
        >>> round(float(mix.weights.sum()), 6)
        1.0
    """
    n = check_int(n, "n", 1)
    k = check_int(k, "k", 1)
    d = check_int(d, "d", 1)
    if k > n:
        raise ConfigurationError(
            f"k={k} components need at least as many points: pass n >= {k} or a smaller k"
        )
    if covariance_type not in _COVARIANCE_TYPES:
        raise ConfigurationError(
            f"covariance_type={covariance_type!r} is unknown; use one of {list(_COVARIANCE_TYPES)}"
        )
    if (
        isinstance(separation, bool)
        or not isinstance(separation, (int, float, np.number))
        or not math.isfinite(separation)
        or separation < 0
    ):
        raise ConfigurationError(
            f"separation={separation!r}: pass a finite number >= 0 (4 is well separated)"
        )
    seed = check_int(seed, "seed", 0)
    dtype, device = _float_dtype(dtype), _data_device(device)

    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(k, 5.0))
    means = _spread_means(rng, k, d, float(separation))
    if covariance_type == "full":
        covariances = np.stack([_random_covariance(rng, d) for _ in range(k)])
    elif covariance_type == "tied":
        covariances = _random_covariance(rng, d)
    elif covariance_type == "diag":
        covariances = rng.uniform(0.25, 1.0, size=(k, d))
    else:
        covariances = rng.uniform(0.25, 1.0, size=k)
    z = rng.choice(k, size=n, p=weights)
    eps = rng.standard_normal((n, d))
    if covariance_type == "full":
        noise = np.einsum("nij,nj->ni", np.linalg.cholesky(covariances)[z], eps)
    elif covariance_type == "tied":
        noise = eps @ np.linalg.cholesky(covariances).T
    elif covariance_type == "diag":
        noise = eps * np.sqrt(covariances[z])
    else:
        noise = eps * np.sqrt(covariances[z])[:, None]
    x = means[z] + noise

    def as_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return MixtureData(
        x=as_tensor(x),
        z=torch.as_tensor(z, dtype=torch.int64, device=device),
        weights=as_tensor(weights),
        means=as_tensor(means),
        covariances=as_tensor(covariances),
        covariance_type=covariance_type,
    )
