"""Tests of lvm_pyro.data: validation, the embedded digits, synthetic mixtures, file readers."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import sklearn.datasets
import torch

from lvm_pyro.data import (
    DigitsData,
    Split,
    load_array,
    load_dataset,
    load_digits,
    load_idx,
    make_mixture,
    resolve_device,
    validate_condition,
    validate_data,
)
from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError, LVMError


@pytest.fixture(scope="module")
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = sklearn.datasets.load_digits()
    return bunch.data, bunch.target


def _rows(x: torch.Tensor) -> list[bytes]:
    return [row.tobytes() for row in x.reshape(len(x), -1).to(torch.float64).numpy()]


# ------------------------------------------------------------------------------ validate_data


def test_validate_data_nan_and_inf_report_count_and_first_index():
    x = torch.zeros(4, 3)
    x[2, 1] = float("nan")
    x[3, 0] = float("inf")
    x[3, 2] = float("nan")
    with pytest.raises(DataError, match=r"3 non-finite value\(s\) \(2 NaN, 1 inf\).*\[2, 1\]"):
        validate_data(x)


def test_validate_data_inf_only():
    x = np.ones((2, 2))
    x[1, 1] = -np.inf
    with pytest.raises(DataError, match=r"1 non-finite.*0 NaN, 1 inf.*\[1, 1\]"):
        validate_data(x)


def test_validate_data_one_d_suggests_reshape():
    with pytest.raises(DataError, match=r"reshape\(-1, 1\).*reshape\(1, -1\)"):
        validate_data(np.arange(5.0))


def test_validate_data_three_d_suggests_flatten():
    with pytest.raises(DataError, match=r"x\.reshape\(len\(x\), -1\)"):
        validate_data(np.zeros((2, 8, 8)))


def test_validate_data_event_shape_hints():
    with pytest.raises(DataError, match=r"x\.reshape\(-1, 8, 8\)"):
        validate_data(np.zeros((5, 64)), event_shape=(8, 8))
    with pytest.raises(DataError, match=r"x\[None\]"):
        validate_data(np.zeros((8, 8)), event_shape=(8, 8))
    with pytest.raises(DataError, match=r"x\[None\]"):
        validate_data(np.zeros(64), event_shape=(64,))
    with pytest.raises(DataError, match=r"examples of shape \(63,\).*expects \(64,\)"):
        validate_data(np.zeros((3, 63)), event_shape=(64,))
    assert validate_data(np.zeros((3, 8, 8)), event_shape=(8, 8)).shape == (3, 8, 8)


def test_validate_data_refuses_zero_rows_and_zero_features():
    with pytest.raises(DataError, match="zero rows"):
        validate_data(np.zeros((0, 3)))
    with pytest.raises(DataError, match="at least one feature"):
        validate_data(np.zeros((3, 0)))
    with pytest.raises(DataError, match="at least 5 are needed"):
        validate_data(np.zeros((3, 2)), min_rows=5)


def test_validate_data_dtypes():
    ints = validate_data(np.array([[1, 2], [3, 4]], dtype=np.int32))
    assert ints.dtype == torch.get_default_dtype()
    assert ints.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    bools = validate_data(torch.tensor([[True, False]]))
    assert bools.dtype == torch.get_default_dtype() and bools.tolist() == [[1.0, 0.0]]
    assert validate_data(np.zeros((2, 2))).dtype == torch.float64
    assert validate_data(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float64
    assert validate_data(np.zeros((2, 2)), dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ConfigurationError, match="floating"):
        validate_data(np.zeros((2, 2)), dtype=torch.int64)


def test_validate_data_refuses_non_numeric():
    with pytest.raises(DataTypeError, match="numeric data is needed") as info:
        validate_data(np.array([["a", "b"]]))
    assert isinstance(info.value, TypeError) and isinstance(info.value, LVMError)
    with pytest.raises(DataTypeError, match="complex"):
        validate_data(torch.zeros(2, 2, dtype=torch.complex64))
    with pytest.raises(DataTypeError, match="ragged"):
        validate_data([[1.0, 2.0], [3.0]])
    with pytest.raises(DataTypeError, match="pass a torch.Tensor"):
        validate_data({"x": 1})


def test_validate_data_big_endian_and_zero_d():
    big = np.arange(4.0).reshape(2, 2).astype(">f8")
    out = validate_data(big)
    assert out.dtype == torch.float64 and out.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(DataError, match=r"shape \(\)"):
        validate_data(np.array(5.0))
    transposed = validate_data(np.arange(6.0).reshape(2, 3).T)
    assert transposed.tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_validate_data_accepts_array_likes():
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.ones((2, 3))

    assert validate_data(ArrayLike()).shape == (2, 3)


def test_validate_data_binary_support():
    assert validate_data([[0, 1], [1, 0]], support="binary").tolist() == [[0, 1], [1, 0]]
    with pytest.raises(DataError, match=r"1 value\(s\).*exactly 0 or 1.*0\.5.*\[1, 0\]") as info:
        validate_data([[0.0, 1.0], [0.5, 1.0]], support="binary")
    message = str(info.value)
    assert "binarize" in message and "gaussian" in message and "categorical" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, LVMError)


@pytest.mark.parametrize(
    ("support", "good", "bad", "first"),
    [
        ("unit_interval", [[0.0, 1.0, 0.5]], [[0.0, 1.5, -0.1]], "1.5"),
        ("count", [[0.0, 3.0, 16.0]], [[1.0, 2.5, -1.0]], "2.5"),
        ("positive", [[0.1, 3.0, 1e-9]], [[1.0, 0.0, -2.0]], "0"),
    ],
)
def test_validate_data_supports(support, good, bad, first):
    assert validate_data(good, support=support).shape == (1, 3)
    with pytest.raises(DataError, match=rf"2 value\(s\).*first {first} at index \[0, 1\]"):
        validate_data(bad, support=support)


def test_validate_data_unknown_support():
    with pytest.raises(ConfigurationError, match="unknown support"):
        validate_data([[1.0]], support="gamma")


def test_validate_condition():
    assert validate_condition([0, 1, 1], 3).dtype == torch.int64
    # a boolean mask stays boolean (poutine.mask needs it): converting it would transform user data
    assert validate_condition(np.array([True, False]), 2).dtype == torch.bool
    with pytest.raises(DataError, match="has 2 rows but the data has 3") as info:
        validate_condition([0, 1], 3)
    assert isinstance(info.value, ValueError)
    with pytest.raises(DataError, match="scalar"):
        validate_condition(np.float64(1.0), 3)
    with pytest.raises(DataError, match=r"non-finite.*\[1\]"):
        validate_condition([0.0, float("nan")], 2)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(ConfigurationError, match="unknown device"):
        resolve_device("gpu0")


# -------------------------------------------------------------------------------- load_digits


def test_load_digits_split_sizes_disjoint_and_covering(raw_digits):
    images, labels = raw_digits
    data = load_digits(scale=False)
    assert isinstance(data, DigitsData) and isinstance(data.train, Split)
    assert [len(s.x) for s in (data.train, data.val, data.test)] == [1197, 300, 300]
    assert [len(s.y) for s in (data.train, data.val, data.test)] == [1197, 300, 300]
    parts = [set(_rows(s.x)) for s in (data.train, data.val, data.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(_rows(torch.from_numpy(images)))
    # the split is default_rng(seed).permutation, cut in order
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(data.val.x.numpy(), images[order[1197:1497]])
    np.testing.assert_array_equal(data.test.y.numpy(), labels[order[1497:]])
    assert data.train.y.dtype == torch.int64
    assert set(torch.cat([data.train.y, data.val.y, data.test.y]).tolist()) == set(range(10))


def test_load_digits_seed_controls_split():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert set(_rows(a.test.x)) != set(_rows(c.test.x))


def test_load_digits_binarize_threshold(raw_digits):
    images, _ = raw_digits
    data = load_digits(binarize=8, seed=0)
    order = np.random.default_rng(0).permutation(1797)
    raw_train = images[order[:1197]]
    x = data.train.x.numpy()
    assert set(np.unique(x)) == {0.0, 1.0}
    assert (x[raw_train == 8] == 1).all() and (raw_train == 8).any()
    assert (x[raw_train == 7] == 0).all() and (raw_train == 7).any()
    np.testing.assert_array_equal(x, (raw_train >= 8).astype(x.dtype))
    assert data.threshold == 8.0
    assert validate_data(data.train.x, support="binary") is not None


def test_load_digits_scale_and_raw_levels(raw_digits):
    images, _ = raw_digits
    scaled = load_digits(scale=True)
    allx = torch.cat([scaled.train.x, scaled.val.x, scaled.test.x])
    assert float(allx.min()) == 0.0 and float(allx.max()) == 1.0
    assert scaled.threshold is None and scaled.n_levels == 17 and scaled.image_size == (8, 8)
    raw = load_digits(scale=False)
    rawx = torch.cat([raw.train.x, raw.val.x, raw.test.x])
    assert float(rawx.max()) == 16.0 and bool((rawx == rawx.round()).all())
    assert validate_data(raw.train.x, support="count") is not None
    assert torch.allclose(raw.train.x / 16, scaled.train.x)


def test_load_digits_image_shape_and_dtype():
    data = load_digits(image_shape=True, dtype=torch.float64)
    assert data.train.x.shape == (1197, 8, 8) and data.event_shape == (8, 8)
    assert data.train.x.dtype == torch.float64 and data.train.y.dtype == torch.int64
    flat = load_digits()
    assert flat.train.x.dtype == torch.get_default_dtype()
    assert torch.equal(data.train.x.reshape(1197, 64).to(flat.train.x.dtype), flat.train.x)
    assert "1197" in repr(flat)


def test_load_digits_fraction_split():
    data = load_digits(split=(0.8, 0.1, 0.1))
    sizes = [len(s.x) for s in (data.train, data.val, data.test)]
    assert sum(sizes) == 1797 and sizes[0] == 1438 and abs(sizes[1] - 180) <= 1


@pytest.mark.parametrize(
    "split", [(1000, 300, 300), (0.5, 0.5, 0.5), (1, 2), (0, 900, 897), (-1, 900, 898), "abc"]
)
def test_load_digits_bad_split(split):
    with pytest.raises(ConfigurationError, match="summing to 1797.*fractions summing to 1"):
        load_digits(split=split)


@pytest.mark.parametrize("threshold", [True, 0, 17, "8"])
def test_load_digits_bad_threshold(threshold):
    with pytest.raises(ConfigurationError, match="binarize=8"):
        load_digits(binarize=threshold)


def test_load_digits_refuses_integer_dtype():
    with pytest.raises(ConfigurationError, match="float64"):
        load_digits(dtype=torch.int32)


# ------------------------------------------------------------------------------- make_mixture


@pytest.mark.parametrize(
    ("covariance_type", "cov_shape"),
    [("full", (3, 2, 2)), ("diag", (3, 2)), ("spherical", (3,)), ("tied", (2, 2))],
)
def test_make_mixture_shapes(covariance_type, cov_shape):
    mix = make_mixture(50, 3, 2, covariance_type=covariance_type)
    assert mix.x.shape == (50, 2) and mix.z.shape == (50,) and mix.z.dtype == torch.int64
    assert mix.weights.shape == (3,) and mix.means.shape == (3, 2)
    assert mix.covariances.shape == cov_shape and mix.covariance_type == covariance_type
    assert torch.isclose(mix.weights.sum(), torch.tensor(1.0))
    assert int(mix.z.min()) >= 0 and int(mix.z.max()) <= 2


def test_make_mixture_covariances_are_valid():
    full = make_mixture(10, 4, 3, covariance_type="full").covariances.double()
    assert torch.allclose(full, full.transpose(-1, -2))
    eig = torch.linalg.eigvalsh(full)
    assert float(eig.min()) >= 0.25 - 1e-9 and float(eig.max()) <= 1 + 1e-9
    tied = make_mixture(10, 4, 3, covariance_type="tied").covariances.double()
    assert float(torch.linalg.eigvalsh(tied).min()) > 0


def test_make_mixture_deterministic():
    a = make_mixture(100, 3, 4, seed=5)
    b = make_mixture(100, 3, 4, seed=5)
    c = make_mixture(100, 3, 4, seed=6)
    for field in ("x", "z", "weights", "means", "covariances"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.allclose(a.x, c.x)
    d64 = make_mixture(100, 3, 4, seed=5, dtype=torch.float64)
    assert d64.x.dtype == torch.float64 and torch.allclose(d64.x.float(), a.x)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_make_mixture_labels_and_separation(covariance_type):
    mix = make_mixture(2000, 5, 3, seed=2, separation=10.0, covariance_type=covariance_type)
    gaps = torch.cdist(mix.means, mix.means) + torch.eye(5) * 1e9
    assert float(gaps.min()) == pytest.approx(10.0, rel=1e-5)
    nearest = torch.cdist(mix.x, mix.means).argmin(dim=1)
    assert float((nearest == mix.z).float().mean()) > 0.99
    # with overlapping components the nearest mean gets noticeably worse
    close = make_mixture(2000, 5, 3, seed=2, separation=0.5, covariance_type=covariance_type)
    assert float((torch.cdist(close.x, close.means).argmin(1) == close.z).float().mean()) < 0.9


def test_make_mixture_empirical_weights():
    mix = make_mixture(40000, 4, 2, seed=3)
    empirical = torch.bincount(mix.z, minlength=4).float() / 40000
    assert torch.allclose(empirical, mix.weights.float(), atol=0.015)
    # the points of each component have its mean and covariance
    for j in range(4):
        xj = mix.x[mix.z == j].double()
        assert torch.allclose(xj.mean(0), mix.means[j].double(), atol=0.05)
        assert torch.allclose(torch.cov(xj.T), mix.covariances[j].double(), atol=0.06)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "k": 1, "d": 1}, "n=0"),
        ({"n": 5, "k": 0, "d": 1}, "k=0"),
        ({"n": 5, "k": 1, "d": 0}, "d=0"),
        ({"n": 3, "k": 4, "d": 2}, "n >= 4"),
        ({"n": 3, "k": 1, "d": 2, "covariance_type": "ful"}, "'full', 'diag'"),
        ({"n": 3, "k": 1, "d": 2, "separation": -1.0}, "separation"),
    ],
)
def test_make_mixture_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match) as info:
        make_mixture(**kwargs)
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------- load_array


def test_load_array_npy(tmp_path):
    x = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    out = load_array(tmp_path / "x.npy")
    assert out.dtype == torch.float64 and np.array_equal(out.numpy(), x)
    np.save(tmp_path / "i.npy", x.astype(np.int16))
    ints = load_array(str(tmp_path / "i.npy"))
    assert ints.dtype == torch.get_default_dtype() and ints.tolist() == x.tolist()


def test_load_array_npz(tmp_path):
    x = np.ones((2, 3), dtype=np.float32)
    np.savez(tmp_path / "one.npz", data=x)
    assert torch.equal(load_array(tmp_path / "one.npz"), torch.ones(2, 3))
    np.savez(tmp_path / "two.npz", images=x, labels=np.arange(2))
    with pytest.raises(DataError, match=r"several arrays \['images', 'labels'\].*key="):
        load_array(tmp_path / "two.npz")
    assert load_array(tmp_path / "two.npz", key="labels").tolist() == [0.0, 1.0]
    with pytest.raises(DataError, match=r"no array 'x'.*\['images', 'labels'\]"):
        load_array(tmp_path / "two.npz", key="x")


def test_load_array_csv_with_and_without_header(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,c\n1,2,3\n4,5,6.5\n")
    (tmp_path / "n.csv").write_text("1,2,3\n4,5,6.5\n")
    expected = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]
    for name in ("h.csv", "n.csv"):
        out = load_array(tmp_path / name)
        assert out.dtype == torch.get_default_dtype() and out.tolist() == expected
    (tmp_path / "w.txt").write_text("x y\n1 2\n3 4\n")
    assert load_array(tmp_path / "w.txt").tolist() == [[1.0, 2.0], [3.0, 4.0]]
    (tmp_path / "col.csv").write_text("1\n2\n3\n")
    assert load_array(tmp_path / "col.csv").shape == (3, 1)
    (tmp_path / "s.csv").write_text("1;2\n3;4\n")
    assert load_array(tmp_path / "s.csv", delimiter=";").tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_load_array_refusals(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match="nope.npy: no such file") as info:
        load_array(missing)
    assert str(missing) in str(info.value) and isinstance(info.value, ValueError)
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"x\.json.*'\.json'.*\.npy, \.npz, \.csv, \.txt"):
        load_array(tmp_path / "x.json")
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(DataError, match=r"bad\.csv cannot be parsed"):
        load_array(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(DataError, match="ragged.csv"):
        load_array(tmp_path / "ragged.csv")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="no data rows"):
        load_array(tmp_path / "header_only.csv")
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(DataError, match=r"junk\.npy cannot be read"):
        load_array(tmp_path / "junk.npy")
    np.save(tmp_path / "str.npy", np.array(["a", "b"]))
    with pytest.raises(DataTypeError, match="numeric"):
        load_array(tmp_path / "str.npy")
    with pytest.raises(DataError, match="directory"):
        load_array(tmp_path)
    with pytest.raises(ConfigurationError, match="only to .npz"):
        load_array(tmp_path / "str.npy", key="x")


# ----------------------------------------------------------------------------------- load_idx


def _idx_bytes(arr: np.ndarray) -> bytes:
    codes = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D}
    codes["float64"] = 0x0E
    header = struct.pack(">BBBB", 0, 0, codes[arr.dtype.name], arr.ndim)
    header += struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.fixture
def mnist_like(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, size=30).astype(np.uint8)
    return tmp_path, images, labels


@pytest.mark.parametrize("gzipped", [False, True])
def test_load_idx_round_trip(mnist_like, gzipped):
    tmp_path, images, labels = mnist_like
    pack = gzip.compress if gzipped else (lambda b: b)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(pack(_idx_bytes(images)))
    (tmp_path / "labels.bin").write_bytes(pack(_idx_bytes(labels)))
    x = load_idx(tmp_path / "train-images-idx3-ubyte")
    assert x.dtype == torch.uint8 and x.shape == (30, 4, 5)
    assert np.array_equal(x.numpy(), images)
    y = load_idx(tmp_path / "labels.bin")
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()


@pytest.mark.parametrize(
    "arr",
    [
        np.array([[1.5, -2.25], [3.0, 1e-3]], dtype=np.float32),
        np.array([[1.5, -2.25]], dtype=np.float64),
        np.array([[-300, 2, 30000]], dtype=np.int16),
        np.array([[-70000, 5]], dtype=np.int32),
        np.array([[-5, 5]], dtype=np.int8),
    ],
)
def test_load_idx_dtypes_big_endian(tmp_path, arr):
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr))
    out = load_idx(tmp_path / "a.idx")
    assert out.shape == arr.shape and np.array_equal(out.numpy(), arr)


def test_load_idx_refusals(mnist_like):
    tmp_path, images, _ = mnist_like
    good = _idx_bytes(images)
    (tmp_path / "short").write_bytes(good[:-7])
    with pytest.raises(DataError, match=r"short is truncated.*\(30, 4, 5\).*600 bytes.*593"):
        load_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(good[:10]))
    with pytest.raises(DataError, match="truncated"):
        load_idx(tmp_path / "short.gz")
    (tmp_path / "cut.gz").write_bytes(gzip.compress(good)[:50])
    with pytest.raises(DataError, match="gzip-compressed but cannot be decompressed"):
        load_idx(tmp_path / "cut.gz")
    (tmp_path / "magic").write_bytes(b"\x01\x00" + good[2:])
    with pytest.raises(DataError, match=r"not an IDX file.*01 00 08 03"):
        load_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07" + good[3:])
    with pytest.raises(DataError, match="not an IDX file"):
        load_idx(tmp_path / "code")
    (tmp_path / "long").write_bytes(good + b"\x00")
    with pytest.raises(DataError, match="extra bytes"):
        load_idx(tmp_path / "long")
    with pytest.raises(DataError, match="missing-idx1-ubyte: no such file"):
        load_idx(tmp_path / "missing-idx1-ubyte")


# ------------------------------------------------------------------------------- load_dataset


def test_load_dataset_digits_matches_load_digits():
    a = load_dataset("digits", binarize=8)
    b = load_digits(binarize=8)
    assert torch.equal(a.train.x, b.train.x) and a.threshold == 8.0
    with pytest.raises(ConfigurationError, match="labels"):
        load_dataset("digits", labels="y.npy")


def test_load_dataset_npz_with_labels(tmp_path):
    x = np.arange(60.0).reshape(30, 2)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_dataset(tmp_path / "d.npz", seed=4)
    assert [len(s.x) for s in (data.train, data.val, data.test)] == [20, 5, 5]
    order = np.random.default_rng(4).permutation(30)
    np.testing.assert_array_equal(data.val.x.numpy(), x[order[20:25]])
    np.testing.assert_array_equal(data.val.y.numpy(), y[order[20:25]])
    assert data.train.x.dtype == torch.get_default_dtype() and data.train.y.dtype == torch.int64
    assert data.n_levels is None and data.image_size is None and data.threshold is None
    np.savez(tmp_path / "bad.npz", a=x, b=y)
    with pytest.raises(DataError, match=r"\['a', 'b'\].*np\.savez\(path, x=x, y=y\)"):
        load_dataset(tmp_path / "bad.npz")


def test_load_dataset_csv_unlabelled_and_labels_file(tmp_path):
    rows = "\n".join(f"{i},{i % 2}" for i in range(12))
    (tmp_path / "d.csv").write_text("f1,f2\n" + rows + "\n")
    data = load_dataset(str(tmp_path / "d.csv"), binarize=1, split=(6, 3, 3))
    assert data.train.y is None and data.test.y is None
    allx = torch.cat([data.train.x, data.val.x, data.test.x])
    assert sorted(allx[:, 0].tolist()) == [0.0] + [1.0] * 11
    np.save(tmp_path / "y.npy", np.arange(12) % 4)
    labelled = load_dataset(tmp_path / "d.csv", labels=tmp_path / "y.npy", split=(6, 3, 3))
    assert torch.equal(labelled.train.x[:, 0].long() % 4, labelled.train.y)
    np.save(tmp_path / "y_short.npy", np.arange(5))
    with pytest.raises(DataError, match="number 5 but the data has 12"):
        load_dataset(tmp_path / "d.csv", labels=tmp_path / "y_short.npy")


def test_load_dataset_idx_finds_labels_beside_images(mnist_like):
    tmp_path, images, labels = mnist_like
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    data = load_dataset(tmp_path / "train-images-idx3-ubyte.gz", dtype=torch.float64)
    assert data.train.x.shape == (20, 20) and data.train.x.dtype == torch.float64
    assert data.image_size == (4, 5)
    x = torch.cat([data.train.x, data.val.x, data.test.x])
    y = torch.cat([data.train.y, data.val.y, data.test.y])
    order = np.random.default_rng(0).permutation(30)
    np.testing.assert_array_equal(x.numpy(), images[order].reshape(30, 20))
    np.testing.assert_array_equal(y.numpy(), labels[order])
    shaped = load_dataset(tmp_path / "train-images-idx3-ubyte.gz", image_shape=True)
    assert shaped.train.x.shape == (20, 4, 5)


def test_load_dataset_refusals(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.csv: no such file; --data takes 'digits'"):
        load_dataset(str(tmp_path / "nowhere.csv"))
    (tmp_path / "notes.md").write_text("# hello\n")
    with pytest.raises(DataError, match=r"notes\.md: unknown file type"):
        load_dataset(tmp_path / "notes.md")
    np.save(tmp_path / "tiny.npy", np.ones((2, 2)))
    with pytest.raises(ConfigurationError, match="summing to 2"):
        load_dataset(tmp_path / "tiny.npy", split=(1, 1, 1))


def test_load_dataset_states_its_preprocessing(tmp_path):
    assert load_digits(binarize=8).preprocessing == "binarized at >= 8 of the grey levels 0..16"
    assert load_digits().preprocessing == "scaled: grey level / 16, in [0, 1]"
    assert load_digits(scale=False).preprocessing == "none: raw grey levels 0..16"
    x = np.linspace(-1.0, 3.0, 40).reshape(20, 2)
    np.save(tmp_path / "x.npy", x)
    assert load_dataset(tmp_path / "x.npy").preprocessing == "none"
    data = load_dataset(tmp_path / "x.npy", binarize=1.0)
    assert data.preprocessing == "binarized at >= 1 of values in [-1, 3]"
    allx = torch.cat([data.train.x, data.val.x, data.test.x])
    assert int(allx.sum()) == int((x >= 1.0).sum()) and data.values == "binary"


def test_load_dataset_refuses_non_finite_values_and_destructive_thresholds(tmp_path):
    x = np.ones((12, 3))
    x[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"1 NaN.*row 5, column 2"):
        load_dataset(tmp_path / "nan.npy", binarize=0.5)  # refused before binarizing turns it into 0
    np.save(tmp_path / "unit.npy", np.linspace(0, 1, 36).reshape(12, 3))
    with pytest.raises(ConfigurationError, match=r"every value of unit\.npy 0 .*0 < t <= 1"):
        load_dataset(tmp_path / "unit.npy", binarize=8)


def test_value_kind():
    from lvm_pyro.data import value_kind

    assert value_kind(torch.tensor([[0.0, 1.0], [1.0, 1.0]])) == "binary"
    assert value_kind(torch.tensor([[0.0, 16.0], [3.0, 1.0]])) == "count"
    assert value_kind(torch.tensor([[0.0, 0.5]])) == "real"
    assert value_kind(torch.tensor([[-1.0, 2.0]])) == "real"
