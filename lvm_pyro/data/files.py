"""Readers for the user's own data files: .npy/.npz/.csv/.txt and MNIST-style IDX.

:func:`load_array` (one numeric array from .npy/.npz/.csv/.txt), :func:`load_idx`
(MNIST-style IDX, gzipped or not), and :func:`load_dataset`, which joins them with the
embedded digits and which the command line's ``--data`` uses. Values are read as stored:
NaN and inf are refused with their position, never dropped or filled.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from lvm_pyro.data.datasets import (
    _DIGITS_DEFAULT_SPLIT,
    DigitsData,
    _check_threshold,
    _data_device,
    _float_dtype,
    _make_splits,
    load_digits,
)
from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError

_FILE_DEFAULT_SPLIT = (2 / 3, 1 / 6, 1 / 6)
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


def _existing_file(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataTypeError(f"path {path!r} is a {type(path).__name__}; pass a str or Path")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path (a relative path is resolved from {Path.cwd()})")
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
        raise DataError(f"{p} holds several arrays {keys}; choose one with key=, e.g. key={keys[0]!r}")


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
        raise DataError(f"{p} cannot be read as text ({exc}); pass a .csv or .txt file of numbers") from exc
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
            raise ConfigurationError("labels= is for a data file; the digits carry their own labels")
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
