"""Datasets and input validation.

Every entry point of the library (``fit``, ``em``, the estimators, the CLI) passes user
data through :func:`validate_data` once, at the boundary; code further in trusts it.

The datasets need no network: :func:`load_digits` (scikit-learn's embedded 8x8 digits),
:func:`make_mixture` (synthetic Gaussian mixtures with their truth), and readers for the
user's own files (:func:`load_array` for .npy/.npz/.csv/.txt, :func:`load_idx` for
MNIST-style IDX), joined by :func:`load_dataset`, which the command line's ``--data`` uses.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from lvm_pyro.checks import check_int
from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError

#: Value sets a likelihood can require of the data, and the likelihoods that fit other data.
SUPPORTS = {
    "real": "any finite real number",
    "positive": "strictly positive reals",
    "unit_interval": "reals in [0, 1]",
    "binary": "exactly 0 or 1",
    "count": "non-negative integers",
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: ``"auto"`` (or None) is CUDA when available, else CPU.

    Example: ``resolve_device("auto")`` -> ``device(type='cpu')`` on a machine without a GPU.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {device!r} was asked for but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    return dev


def _as_tensor(data, name: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)) or (
        not isinstance(data, np.ndarray) and hasattr(data, "__array__")
    ):
        try:
            data = np.asarray(data)
        except ValueError as exc:
            raise DataTypeError(
                f"{name}: a ragged list cannot be made into an array ({exc})"
            ) from exc
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biuf":
            raise DataTypeError(
                f"{name} has dtype {data.dtype}; numeric data is needed: convert it with "
                "np.asarray(x, dtype=float)"
            )
        # native byte order (torch refuses big-endian) and a contiguous copy of the same shape
        # (np.ascontiguousarray alone turns a 0-d array into a 1-d one)
        native = data.astype(data.dtype.newbyteorder("="), order="C", copy=False)
        return torch.from_numpy(native.reshape(data.shape))
    raise DataTypeError(
        f"{name} is a {type(data).__name__}; pass a torch.Tensor, a numpy array or a nested list"
    )


def _first_index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0].tolist())


def _check_support(x: torch.Tensor, support: str, name: str) -> None:
    if support == "real":
        return
    if support == "binary":
        bad = (x != 0) & (x != 1)
        hint = (
            "a Bernoulli likelihood needs binary data: binarize it (for the digits, "
            "load_digits(binarize=8)), or use likelihood='gaussian' (real values) or "
            "'categorical' (a few integer levels)"
        )
    elif support == "unit_interval":
        bad = (x < 0) | (x > 1)
        hint = (
            "scale the data into [0, 1] (for the digits, load_digits(scale=True)) "
            "or use a Gaussian likelihood"
        )
    elif support == "positive":
        bad = x <= 0
        hint = "shift or transform the data to be positive, or use a Gaussian likelihood"
    elif support == "count":
        bad = (x < 0) | (x != torch.round(x))
        hint = (
            "a count or categorical likelihood needs non-negative integers; round the data "
            "or use a Gaussian likelihood"
        )
    else:
        raise ConfigurationError(f"unknown support {support!r}; valid: {sorted(SUPPORTS)}")
    n_bad = int(bad.sum())
    if n_bad:
        idx = _first_index(bad)
        raise DataError(
            f"{name} has {n_bad} value(s) outside the likelihood's support ({SUPPORTS[support]}), "
            f"first {float(x[idx]):g} at index {list(idx)}: {hint}"
        )


def _rank_fix(shape: tuple[int, ...], event_shape: Sequence[int] | None) -> str:
    """The reshape that turns data of ``shape`` into (N, *event_shape), as advice."""
    if event_shape is None:
        if len(shape) == 1:
            return (
                f"for {shape[0]} points of one feature use x.reshape(-1, 1); "
                "for one point use x.reshape(1, -1)"
            )
        if len(shape) > 2:
            return "flatten each example with x.reshape(len(x), -1)"
        return "pass a 2-D array of shape (N, D)"
    want = tuple(int(s) for s in event_shape)
    dims = ", ".join(str(s) for s in want)
    if shape == want:
        return "it looks like a single example: add the batch dimension with x[None]"
    n_event, n_values = math.prod(want), math.prod(shape)
    if n_event > 0 and n_values > 0 and n_values % n_event == 0:
        return f"reshape it with x.reshape(-1, {dims})"
    return f"pass data of shape (N, {dims})"


def validate_data(
    data,
    *,
    name: str = "data",
    event_shape: Sequence[int] | None = None,
    support: str = "real",
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    min_rows: int = 1,
) -> torch.Tensor:
    """Check user data once and return it as a floating tensor of shape (N, *event_shape).

    Refused with a message that names the fix: non-numeric data, NaN or inf (their count and
    the first index), the wrong rank or event shape, fewer than ``min_rows`` rows, values
    outside ``support`` (one of :data:`SUPPORTS`). Integer and bool data are converted to
    ``dtype`` (default: torch's default dtype); floating data keeps its dtype unless ``dtype``
    is given, so float64 in means float64 throughout.

    Example:
        >>> validate_data([[0.0, 1.0], [2.0, 3.0]]).shape
        torch.Size([2, 2])
    """
    x = _as_tensor(data, name)
    if x.is_complex():
        raise DataTypeError(f"{name} is complex ({x.dtype}); pass real-valued data")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    elif not dtype.is_floating_point:
        raise ConfigurationError(
            f"dtype={dtype} is not a floating dtype; pass torch.float32 or torch.float64"
        )
    x = x.to(dtype=dtype, device=resolve_device(device) if device is not None else x.device)

    expected_rank = 2 if event_shape is None else 1 + len(event_shape)
    if x.dim() != expected_rank:
        fix = _rank_fix(tuple(x.shape), event_shape)
        raise DataError(
            f"{name} has shape {tuple(x.shape)} but {expected_rank}-D data is expected: {fix}"
        )
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise DataError(
            f"{name} has examples of shape {tuple(x.shape[1:])} but the model expects "
            f"{tuple(event_shape)}: pass data with that feature count/shape, or build the model "
            f"for {tuple(x.shape[1:])}"
        )
    if x.shape[0] > 0 and x[0].numel() == 0:
        raise DataError(
            f"{name} has shape {tuple(x.shape)}: each example is empty; pass at least one feature"
        )
    if x.shape[0] < max(min_rows, 1):
        if x.shape[0] == 0:
            raise DataError(f"{name} has zero rows: pass at least {max(min_rows, 1)} example(s)")
        raise DataError(f"{name} has {x.shape[0]} rows but at least {min_rows} are needed")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite
        idx = _first_index(bad)
        n_nan = int(torch.isnan(x).sum())
        raise DataError(
            f"{name} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, "
            f"{int(bad.sum()) - n_nan} inf), first at index {list(idx)}: remove or impute "
            "those rows (e.g. x[torch.isfinite(x).flatten(1).all(dim=1)])"
        )
    _check_support(x, support, name)
    return x


def validate_condition(cond, n_rows: int, *, name: str = "condition", device=None) -> torch.Tensor:
    """Check a per-example condition (labels or covariates) and return it as a tensor.

    Integer labels keep an integer dtype and a boolean mask stays boolean; its first dimension
    must be the data's length.

    Example:
        >>> validate_condition([0, 1, 1], 3).dtype
        torch.int64
    """
    c = _as_tensor(cond, name)
    if device is not None:
        c = c.to(resolve_device(device))
    if c.dim() == 0:
        raise DataError(f"{name} is a scalar; pass one value per example (length {n_rows})")
    if c.shape[0] != n_rows:
        raise DataError(
            f"{name} has {c.shape[0]} rows but the data has {n_rows}: pass one condition per "
            "example, in the same order"
        )
    if c.is_floating_point() and not bool(torch.isfinite(c).all()):
        bad = ~torch.isfinite(c)
        n_nan = int(torch.isnan(c).sum())
        raise DataError(
            f"{name} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, {int(bad.sum()) - n_nan} "
            f"inf), first at index {list(_first_index(bad))}: remove or impute them"
        )
    return c  # a boolean condition (a mask) stays boolean


def validate_with_conditions(data, validate_x=None, *, name: str = "data") -> tuple[torch.Tensor, ...]:
    """``data`` is x or a tuple (x, condition, ...): x checked by ``validate_x(x, name=name)``
    (default :func:`validate_data`), each condition by :func:`validate_condition` against x's
    rows. Returns (x, condition, ...) as tensors.

    Example:
        >>> [t.shape for t in validate_with_conditions((torch.zeros(3, 2), [0, 1, 1]))]
        [torch.Size([3, 2]), torch.Size([3])]
    """
    parts = data if isinstance(data, tuple) else (data,)
    if not parts:
        raise DataError(f"{name} is an empty tuple: pass x, or a tuple (x, condition, ...)")
    x = (validate_x or validate_data)(parts[0], name=name)
    n = x.shape[0]
    return (x, *(validate_condition(c, n, name=f"{name} condition {i + 1}") for i, c in enumerate(parts[1:])))


# ------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------


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
        return value_kind(torch.cat([self.train.x.flatten(1), self.val.x.flatten(1),
                                     self.test.x.flatten(1)]))


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
_FILE_DEFAULT_SPLIT = (2 / 3, 1 / 6, 1 / 6)
_COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
_ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".txt")
#: IDX type code -> (numpy dtype, big-endian in the file).
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
    train, val, test = _make_splits(
        x, labels, split, seed, _float_dtype(dtype), _data_device(device)
    )
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


def _existing_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataTypeError(f"path {path!r} is a {type(path).__name__}; pass a str or Path")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"{p}: no such file; check the path (a relative path is resolved from {Path.cwd()})"
        )
    if p.is_dir():
        raise DataError(f"{p} is a directory; pass the path of a data file")
    return p


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p} cannot be read ({exc.strerror}); check its permissions") from exc


def _numeric_array(arr: np.ndarray, p: Path) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DataTypeError(
            f"{p} holds an array of dtype {arr.dtype}; save numeric data "
            "(e.g. np.save(path, x.astype(float)))"
        )
    return arr


def _np_load(p: Path):
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{p} cannot be read as a numpy file ({exc}); write it with np.save or np.savez"
        ) from exc


def _member(archive, key: str, p: Path) -> np.ndarray:
    try:
        return _numeric_array(archive[key], p)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: array {key!r} in the archive cannot be read ({exc})") from exc


def _load_numpy(p: Path, key: str | None) -> np.ndarray:
    loaded = _np_load(p)
    if isinstance(loaded, np.ndarray):
        return _numeric_array(loaded, p)
    with loaded:
        keys = list(loaded.files)
        if key is not None:
            if key not in keys:
                raise DataError(f"{p} has no array {key!r}; its arrays are {keys}")
            return _member(loaded, key, p)
        if len(keys) == 1:
            return _member(loaded, keys[0], p)
        if not keys:
            raise DataError(f"{p} holds no arrays; save one with np.savez(path, x=x)")
        raise DataError(
            f"{p} holds several arrays {keys}; choose one with key=, e.g. key={keys[0]!r}"
        )


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _load_text(p: Path, delimiter: str | None) -> np.ndarray:
    try:
        lines = p.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{p} cannot be read as text ({exc}); pass a .csv or .txt file of numbers"
        ) from exc
    first = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
        None,
    )
    if first is None:
        raise DataError(f"{p} holds no data rows; write one example per line")
    if delimiter is None:
        comma = p.suffix.lower() == ".csv" or "," in lines[first]
        delimiter = "," if comma else None
    fields = lines[first].split(delimiter)
    start = first if all(_is_number(f.strip()) for f in fields) else first + 1
    shown = "whitespace" if delimiter is None else repr(delimiter)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines[start:]):
        raise DataError(f"{p} has a header line but no data rows")
    try:
        arr = np.loadtxt(lines[start:], delimiter=delimiter, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DataError(
            f"{p} cannot be parsed as numbers separated by {shown} ({exc}); every row needs the "
            "same number of numeric fields (pass delimiter= if the separator differs)"
        ) from exc
    return arr


def _read_array(p: Path, key: str | None, delimiter: str | None) -> np.ndarray:
    suffix = p.suffix.lower()
    if key is not None and suffix != ".npz":
        raise ConfigurationError(f"key={key!r} applies only to .npz archives, and {p} is not one")
    if suffix in (".npy", ".npz"):
        return _load_numpy(p, key)
    if suffix in (".csv", ".txt"):
        return _load_text(p, delimiter)
    raise DataError(
        f"{p}: unknown file type {suffix or '(no suffix)'!r}; load_array reads "
        f"{', '.join(_ARRAY_SUFFIXES)} (use load_idx for MNIST-style IDX files)"
    )


def _to_float_tensor(arr: np.ndarray, keep_float: bool) -> torch.Tensor:
    if keep_float and arr.dtype.kind == "f":
        return torch.from_numpy(np.array(arr, dtype=arr.dtype.newbyteorder("=")))
    return torch.as_tensor(arr.astype(np.float64), dtype=torch.get_default_dtype())


def load_array(
    path: str | os.PathLike, *, key: str | None = None, delimiter: str | None = None
) -> torch.Tensor:
    """Read one numeric array from a .npy, .npz, .csv or .txt file as a floating tensor.

    Floating arrays in .npy/.npz keep their dtype; integer and bool arrays, and text files,
    become torch's default dtype. A .npz holding several arrays needs ``key``. In text files
    a first line that is not all numbers is taken as a header and skipped; rows are examples
    (a single column gives shape (N, 1)). ``delimiter=None`` means a comma for .csv, and for
    .txt a comma if the first data line has one, else whitespace. Values are not checked
    (callers pass the result through :func:`validate_data`).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("a,b\\n1,2\\n3,4\\n")
        >>> load_array(path)
        tensor([[1., 2.],
                [3., 4.]])
    """
    p = _existing_file(path)
    arr = _read_array(p, key, delimiter)
    return _to_float_tensor(arr, keep_float=p.suffix.lower() in (".npy", ".npz"))


def _parse_idx(raw: bytes, p: Path) -> np.ndarray:
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{p} is gzip-compressed but cannot be decompressed ({exc}); "
                "the file is probably incomplete: fetch it again"
            ) from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{p} is not an IDX file: it starts with bytes {raw[:4].hex(' ') or '(none)'} "
            "but IDX starts 00 00 <type 08|09|0b|0c|0d|0e> <ndim>; pass an MNIST-style "
            "IDX file (gzipped or not), or a .npy/.npz/.csv/.txt file"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{p} is truncated: its IDX header declares {ndim} dimensions but the file ends "
            "inside the header; fetch the file again"
        )
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    if min(shape, default=0) < 0:
        raise DataError(f"{p} has a corrupt IDX header (negative size in shape {shape})")
    dtype = _IDX_DTYPES[raw[2]]
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(raw) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has extra bytes after the data"
        raise DataError(
            f"{p} {problem}: its header declares shape {shape} of {dtype.name} "
            f"({expected} bytes) but {found} bytes follow; fetch the file again"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header)
    return arr.astype(dtype.newbyteorder("=")).reshape(shape)


def load_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an MNIST-style IDX file (gzipped or not) as a tensor of its stored shape.

    The format: two zero bytes, a type code (08 uint8, 09 int8, 0B int16, 0C int32,
    0D float32, 0E float64), the number of dimensions, each dimension as a big-endian int32,
    then the values big-endian. Gzip is recognised by its magic bytes, not by the name.
    Values keep their stored type (uint8 images stay uint8: convert with ``.float()``), except
    that one-dimensional integer data (labels) comes back as int64.

    Example:
        >>> import os, struct, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(struct.pack(">BBBBi", 0, 0, 0x08, 1, 3) + bytes([7, 2, 1]))
        >>> load_idx(path)
        tensor([7, 2, 1])
    """
    p = _existing_file(path)
    arr = _parse_idx(_read_bytes(p), p)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    return torch.from_numpy(arr)


def _read_examples(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """The examples and (when the file carries them) the labels of a user's data file."""
    if p.suffix.lower() == ".npz":
        loaded = _np_load(p)
        if isinstance(loaded, np.ndarray):
            return _numeric_array(loaded, p), None
        with loaded:
            keys = list(loaded.files)
            if "x" in keys:
                return _member(loaded, "x", p), _member(loaded, "y", p) if "y" in keys else None
            if len(keys) == 1:
                return _member(loaded, keys[0], p), None
        raise DataError(
            f"{p} holds arrays {keys}; for load_dataset save the examples as 'x' and any "
            "labels as 'y': np.savez(path, x=x, y=y)"
        )
    if p.suffix.lower() in _ARRAY_SUFFIXES:
        return _read_array(p, None, None), None
    raw = _read_bytes(p)
    if raw[:2] in (b"\x1f\x8b", b"\0\0"):
        x = _parse_idx(raw, p)
        sibling = p.with_name(p.name.replace("images-idx3", "labels-idx1"))
        y = None
        if sibling != p and sibling.is_file():
            y = _parse_idx(_read_bytes(sibling), sibling)
        return x, y
    raise DataError(
        f"{p}: unknown file type; --data takes 'digits' or a path to a "
        f"{', '.join(_ARRAY_SUFFIXES)} file or an MNIST-style IDX file (gzipped or not)"
    )


def _check_finite(x: np.ndarray, p: Path) -> None:
    """Refuse NaN and inf in a data file, naming the first one's row and column (from 0)."""
    finite = np.isfinite(x)
    if finite.all():
        return
    bad = ~finite
    row, *rest = (int(i) for i in np.argwhere(bad)[0])
    column = int(np.ravel_multi_index(rest, x.shape[1:])) if rest else 0
    n_nan = int(np.isnan(x).sum())
    raise DataError(
        f"{p} has {int(bad.sum())} non-finite value(s) ({n_nan} NaN, {int(bad.sum()) - n_nan} inf), "
        f"the first {float(x[(row, *rest)])} at row {row}, column {column} (counting from 0, a header "
        "line not counted): remove or impute them before training; lvm-pyro neither drops nor fills data"
    )


def value_kind(x: torch.Tensor) -> str:
    """What data holds: ``"binary"`` (every value 0 or 1), ``"count"`` (non-negative integers)
    or ``"real"`` (anything else); the likelihood the command line picks follows from it.

    Example:
        >>> value_kind(torch.tensor([[0.0, 1.0]])), value_kind(torch.tensor([[0.0, 3.0]]))
        ('binary', 'count')
        >>> value_kind(torch.tensor([[0.5, -1.0]]))
        'real'
    """
    if bool(((x == 0) | (x == 1)).all()):
        return "binary"
    if bool(((x >= 0) & (x == torch.round(x))).all()):
        return "count"
    return "real"


def _check_labels(y, n: int, source) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind not in "biuf" or y.ndim != 1:
        raise DataError(
            f"labels from {source} have shape {y.shape} and dtype {y.dtype}; "
            "pass one integer label per example"
        )
    if len(y) != n:
        raise DataError(
            f"labels from {source} number {len(y)} but the data has {n} examples; "
            "pass one label per example, in the same order"
        )
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise DataError(f"labels from {source} are not all integers; pass integer class labels")
    return y.astype(np.int64)


def load_dataset(
    spec: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    binarize: float | None = None,
    scale: bool = True,
    image_shape: bool = False,
    split=None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> DigitsData:
    """The dataset a ``--data`` value names: ``"digits"`` or a path, split into train/val/test.

    ``"digits"`` is :func:`load_digits` with these arguments (``split`` defaults to
    (1197, 300, 300)). A path is read by its type: .npy/.npz/.csv/.txt as with
    :func:`load_array`, anything else by content as an IDX file (:func:`load_idx`, gzipped
    or not). The examples are the first axis; with ``image_shape=False`` each example is
    flattened to a vector, with True it keeps its stored shape. The file's values are used
    as stored (``scale`` applies to the digits only), or binarized as x >= ``binarize`` in the
    file's own units, a threshold that must leave both values (min < t <= max: anything else
    would destroy the data and is refused). NaN or inf in a file is refused with its row and
    column, never dropped or filled. ``preprocessing`` of the result says what was done.
    Labels come from ``labels`` (a file of one integer per example), from a .npz's array
    ``"y"`` (the data then being ``"x"``), or for MNIST's
    ``*-images-idx3-ubyte*`` from the ``*-labels-idx1-ubyte*`` file beside it; otherwise each
    split's ``y`` is None. The split is the same seeded permutation as for the digits, with
    fractions (2/3, 1/6, 1/6) by default. Examples become ``dtype`` (default: torch's
    default dtype) on ``device`` (None: CPU), labels int64.

    Example:
        >>> import os, tempfile, numpy as np
        >>> path = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(path, np.arange(60.0).reshape(30, 2))
        >>> data = load_dataset(path)
        >>> len(data.train.x), len(data.val.x), len(data.test.x), data.train.y
        (20, 5, 5, None)
        >>> load_dataset("digits", binarize=8).threshold
        8.0
    """
    if isinstance(spec, str) and spec.strip().lower() == "digits":
        if labels is not None:
            raise ConfigurationError(
                "labels= is for a data file; the digits carry their own labels"
            )
        return load_digits(
            binarize=binarize,
            scale=scale,
            image_shape=image_shape,
            split=_DIGITS_DEFAULT_SPLIT if split is None else split,
            seed=seed,
            dtype=dtype,
            device=device,
        )
    if isinstance(spec, str) and not Path(spec).expanduser().exists():
        raise DataError(
            f"{spec}: no such file; --data takes 'digits' (the embedded dataset) or the path "
            f"of a {', '.join(_ARRAY_SUFFIXES)} or IDX file (a relative path is resolved "
            f"from {Path.cwd()})"
        )
    p = _existing_file(spec)
    x, y = _read_examples(p)
    x = _numeric_array(np.asarray(x), p)
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{p} holds no examples (shape {x.shape}); store one example per row")
    if labels is not None:
        lp = _existing_file(labels)
        y = _check_labels(_read_examples(lp)[0], len(x), lp)
    elif y is not None:
        y = _check_labels(y, len(x), p)
    _check_finite(x, p)
    threshold, preprocessing = None, "none"
    if binarize is not None:
        threshold = _check_threshold(binarize, None)
        lo, hi = float(x.min()), float(x.max())
        if not lo < threshold <= hi:
            raise ConfigurationError(
                f"binarize={threshold:g} would make every value of {p.name} "
                f"{'1' if threshold <= lo else '0'} (its values span [{lo:g}, {hi:g}]): pass a "
                f"threshold t with {lo:g} < t <= {hi:g}, or no binarize for a likelihood of real data"
            )
        x = (x >= threshold).astype(np.float64)
        preprocessing = f"binarized at >= {threshold:g} of values in [{lo:g}, {hi:g}]"
    image_size = tuple(int(s) for s in x.shape[1:]) if x.ndim == 3 else None
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    elif not image_shape:
        x = x.reshape(len(x), -1)
    train, val, test = _make_splits(
        x,
        y,
        _FILE_DEFAULT_SPLIT if split is None else split,
        seed,
        _float_dtype(dtype),
        _data_device(device),
    )
    description = (
        f"{p.name}: {len(x)} examples of shape {tuple(x.shape[1:])}"
        + (f", binarized as x >= {threshold:g}" if threshold is not None else "")
        + ("" if y is None else ", with labels")
        + f"; split with seed {seed}"
    )
    return DigitsData(train, val, test, image_size, None, threshold, description, preprocessing)
