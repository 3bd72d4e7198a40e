"""The boundary: every entry point checks user data here, once.

Every entry point of the library (``fit``, ``em``, the estimators, the CLI) passes user
data through :func:`validate_data` once, at the boundary; code further in trusts it. Here:
the device choice (:func:`resolve_device`), dtype, shape, NaN/inf and support checks of the
data (:func:`validate_data`) and of per-example conditions (:func:`validate_condition`,
:func:`validate_with_conditions`), and what values data holds (:func:`value_kind`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

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
        raise ConfigurationError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"device {device!r} was asked for but CUDA is not available here; use device='auto' or 'cpu'"
        )
    return dev


def _as_tensor(data, name: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)) or (not isinstance(data, np.ndarray) and hasattr(data, "__array__")):
        try:
            data = np.asarray(data)
        except ValueError as exc:
            raise DataTypeError(f"{name}: a ragged list cannot be made into an array ({exc})") from exc
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
        raise DataError(f"{name} has shape {tuple(x.shape)} but {expected_rank}-D data is expected: {fix}")
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
