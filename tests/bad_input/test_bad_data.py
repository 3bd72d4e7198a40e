"""Bad data files through ``load_dataset`` (what ``lvm-pyro --data`` reads): every one refused
with a message naming the problem and the fix, never a numpy/zipfile/gzip traceback, never
a silent transformation (NaN turned into 0, a binarization leaving one value)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from harness import Case, run_case

from lvm_pyro import errors
from lvm_pyro.data import load_dataset

rng = np.random.default_rng(0)
UNIT = rng.random((30, 4))


def _npy(name: str, array) -> callable:
    def write(d: Path) -> Path:
        np.save(d / name, array)
        return d / name

    return write


def _text(name: str, text: str) -> callable:
    def write(d: Path) -> Path:
        (d / name).write_text(text)
        return d / name

    return write


def _raw(name: str, raw: bytes) -> callable:
    def write(d: Path) -> Path:
        (d / name).write_bytes(raw)
        return d / name

    return write


def _npz(name: str, **arrays) -> callable:
    def write(d: Path) -> Path:
        np.savez(d / name, **arrays)
        return d / name

    return write


def _with(a, index, value):
    a = np.array(a, dtype=float)
    a[index] = value
    return a


def _idx(dtype_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">BBBB{len(shape)}i", 0, 0, dtype_code, len(shape), *shape) + payload


# (id, file writer, load_dataset keyword arguments, error, message)
TABLE = [
    ("npy-nan", _npy("x.npy", _with(UNIT, (3, 2), np.nan)), {}, errors.DataError, r"NaN.*row 3, column 2"),
    ("npy-inf", _npy("x.npy", _with(UNIT, (7, 0), np.inf)), {}, errors.DataError, r"1 inf.*row 7, column 0"),
    ("npy-nan-then-binarize", _npy("x.npy", _with(UNIT, (0, 1), np.nan)), {"binarize": 0.5},
     errors.DataError, r"row 0, column 1.*neither drops nor fills"),
    ("npy-image-nan", _npy("x.npy", _with(rng.random((10, 3, 4)), (2, 1, 3), np.nan)), {},
     errors.DataError, r"row 2, column 7"),
    ("csv-nan", _text("x.csv", "a,b\n1,2\n3,nan\n4,5\n"), {}, errors.DataError, r"NaN.*row 1, column 1"),
    ("csv-inf", _text("x.csv", "1,2\n3,4\n-inf,5\n"), {}, errors.DataError, r"inf.*row 2, column 0"),
    ("csv-strings", _text("x.csv", "a,b\nc,d\ne,f\n"), {}, errors.DataError, r"cannot be parsed as numbers"),
    ("csv-ragged", _text("x.csv", "1,2\n3\n4,5\n"), {}, errors.DataError, r"same number of numeric fields"),
    ("csv-empty", _text("x.csv", ""), {}, errors.DataError, r"no data rows"),
    ("csv-header-only", _text("x.csv", "a,b\n"), {}, errors.DataError, r"header line but no data rows"),
    ("csv-comments-only", _text("x.csv", "# nothing\n# here\n"), {}, errors.DataError, r"no data rows"),
    ("txt-binary-garbage", _raw("x.txt", b"\xff\xfe\x00\x81" * 8), {}, errors.DataError, r"cannot be"),
    ("npy-strings", _npy("x.npy", np.array([["a", "b"]] * 6)), {}, errors.DataTypeError, r"numeric data"),
    ("npy-complex", _npy("x.npy", np.ones((6, 2), dtype=complex)), {}, errors.DataTypeError, r"numeric"),
    ("npy-object", _raw("x.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, "
                                 b"'shape': (2,), }" + b" " * 60 + b"\n"), {},
     errors.DataError, r"cannot be read as a numpy file"),
    ("npy-truncated", _raw("x.npy", b"\x93NUMPY\x01\x00"), {}, errors.DataError, r"numpy file"),
    ("npy-zero-d", _npy("x.npy", np.float64(3.0)), {}, errors.DataError, r"no examples"),
    ("npy-zero-rows", _npy("x.npy", np.zeros((0, 4))), {}, errors.DataError, r"no examples"),
    ("npz-empty", _npz("x.npz"), {}, errors.DataError, r"holds arrays \[\]"),
    ("npz-two-arrays", _npz("x.npz", a=UNIT, b=UNIT), {}, errors.DataError, r"np\.savez\(path, x=x, y=y\)"),
    ("npz-labels-wrong-length", _npz("x.npz", x=UNIT, y=np.arange(5)), {}, errors.DataError,
     r"number 5 but the data has 30"),
    ("npz-labels-fractional", _npz("x.npz", x=UNIT, y=np.linspace(0, 1, 30)), {}, errors.DataError,
     r"not all integers"),
    ("idx-wrong-magic", _raw("images-idx3-ubyte", b"\x01\x02\x08\x03" + b"\0" * 40), {}, errors.DataError,
     r"unknown file type"),
    ("idx-bad-type-code", _raw("images-idx3-ubyte", _idx(0x07, (2, 2), b"\0" * 4)), {}, errors.DataError,
     r"not an IDX file"),
    ("idx-truncated", _raw("images-idx3-ubyte", _idx(0x08, (5, 2, 2), b"\0" * 7)), {}, errors.DataError,
     r"is truncated"),
    ("idx-extra-bytes", _raw("images-idx3-ubyte", _idx(0x08, (1, 2, 2), b"\0" * 9)), {}, errors.DataError,
     r"extra bytes"),
    ("idx-header-cut", _raw("images-idx3-ubyte", b"\0\0\x08\x03\0\0"), {}, errors.DataError, r"truncated"),
    ("gzip-corrupt", _raw("images-idx3-ubyte.gz", gzip.compress(_idx(0x08, (2, 2), b"\0" * 4))[:-9]), {},
     errors.DataError, r"gzip-compressed but cannot be decompressed"),
    ("unknown-suffix", _text("x.json", "[1, 2]"), {}, errors.DataError, r"unknown file type"),
    ("binarize-above-range", _npy("x.npy", UNIT), {"binarize": 2.0}, errors.ConfigurationError,
     r"every value of x\.npy 0.*span \[0\.0\d*, 0\.9\d*\]"),
    ("binarize-below-range", _npy("x.npy", UNIT), {"binarize": -1.0}, errors.ConfigurationError,
     r"every value of x\.npy 1"),
    ("binarize-at-minimum", _npy("x.npy", np.arange(12.0).reshape(6, 2)), {"binarize": 0.0},
     errors.ConfigurationError, r"every value .* 1 .*0 < t <= 11"),
    ("binarize-constant-data", _npy("x.npy", np.ones((6, 2))), {"binarize": 1.0}, errors.ConfigurationError,
     r"would make every value"),
    ("binarize-nan-threshold", _npy("x.npy", UNIT), {"binarize": float("nan")}, errors.ConfigurationError,
     r"binarize=nan"),
    ("binarize-string", _npy("x.npy", UNIT), {"binarize": "8"}, errors.ConfigurationError,
     r"pass the threshold itself"),
    ("labels-for-digits", None, {"labels": "y.npy"}, errors.ConfigurationError,
     r"digits carry their own labels"),
    ("digits-threshold-17", None, {"binarize": 17}, errors.ConfigurationError, r"pixel level in \(0, 16\]"),
    ("digits-threshold-0", None, {"binarize": 0}, errors.ConfigurationError, r"every pixel"),
    ("missing-file", lambda d: d / "nowhere.npy", {}, errors.DataError, r"nowhere\.npy: no such file"),
    ("missing-file-by-name", lambda d: str(d / "nowhere.csv"), {}, errors.DataError,
     r"no such file; --data takes 'digits'"),
    ("a-directory", lambda d: d, {}, errors.DataError, r"is a directory"),
    ("bad-split", _npy("x.npy", UNIT), {"split": (1, 1, 1)}, errors.ConfigurationError, r"summing to 30"),
    ("negative-seed", _npy("x.npy", UNIT), {"seed": -1}, errors.ConfigurationError, r"seed=-1"),
]


@pytest.mark.parametrize("case_id, write, kwargs, error, match", TABLE, ids=[row[0] for row in TABLE])
def test_bad_data_file_is_refused(case_id, write, kwargs, error, match, tmp_path):
    spec = "digits" if write is None else write(tmp_path)
    run_case(Case(case_id, lambda: load_dataset(spec, **kwargs), error, match))


def test_the_table_is_big_enough():
    assert len(TABLE) >= 20
