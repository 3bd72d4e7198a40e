"""lvm_pyro.estimators.GaussianMixture: scikit-learn's estimator checks, agreement with
scikit-learn's GaussianMixture from the same start, torch inputs, choosing K, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from lvm_pyro.diagnostics.selection import select_components
from lvm_pyro.errors import ConfigurationError, DataError, NotFittedError
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.models.gmm import COVARIANCE_TYPES


@parametrize_with_checks([GaussianMixture(max_iter=20)])
def test_scikit_learn_estimator_checks(estimator, check):
    """Every check of scikit-learn's, none expected to fail: sample weights included (integer
    weights equal replicated rows: tests/test_sample_weight.py)."""
    check(estimator)


def _data(n=400, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    z = rng.integers(k, size=n)
    a = rng.normal(size=(k, d, d)) * 0.4 + np.eye(d)
    return centers[z] + np.einsum("nij,nj->ni", a[z], rng.normal(size=(n, d)))


def _start(X, cov_type, k=3, seed=1):
    """A fully specified start: weights, means and precisions in sklearn's shapes."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    weights = rng.dirichlet(np.ones(k) * 5)
    means = X[rng.choice(len(X), k, replace=False)]
    var = X.var(0)
    precisions = {
        "full": np.stack([np.diag(1 / var)] * k),
        "tied": np.diag(1 / var),
        "diag": np.stack([1 / var] * k),
        "spherical": np.full(k, 1 / var.mean()),
    }[cov_type]
    del d
    return dict(weights_init=weights, means_init=means, precisions_init=precisions)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_same_start_gives_scikit_learns_fit(cov_type):
    X = _data()
    start = _start(X, cov_type)
    kwargs = dict(covariance_type=cov_type, max_iter=200, tol=1e-8, **start)
    sk = SkGaussianMixture(3, **kwargs).fit(X)
    ours = GaussianMixture(3, sort_components=False, **kwargs).fit(X)
    assert ours.converged_ and sk.converged_ and ours.n_iter_ == sk.n_iter_
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-6)
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-6)
    np.testing.assert_allclose(ours.weights_, sk.weights_, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.precisions_cholesky_, sk.precisions_cholesky_, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), rtol=1e-6)
    assert ours.bic(X) == pytest.approx(sk.bic(X), rel=1e-6)
    assert ours.aic(X) == pytest.approx(sk.aic(X), rel=1e-6)


def test_fixed_iterations_match_scikit_learn_with_tol_zero():
    X = _data(seed=3)
    start = _start(X, "full", seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, max_iter=7, tol=0, **start).fit(X)
        ours = GaussianMixture(3, max_iter=7, tol=0, sort_components=False, **start).fit(X)
    assert ours.n_iter_ == 7 and not ours.converged_
    assert ours.score(X) == pytest.approx(sk.score(X), rel=1e-9)


def test_canonical_order_relabels_but_keeps_the_fit():
    X = _data(seed=5)
    start = _start(X, "diag", seed=6)
    raw = GaussianMixture(3, covariance_type="diag", sort_components=False, **start).fit(X)
    canon = GaussianMixture(3, covariance_type="diag", **start).fit(X)
    perm = np.argsort(-raw.weights_, kind="stable")
    np.testing.assert_allclose(canon.weights_, raw.weights_[perm], rtol=1e-12)
    np.testing.assert_allclose(canon.means_, raw.means_[perm], rtol=1e-12)
    assert np.all(np.diff(canon.weights_) <= 0)
    np.testing.assert_array_equal(perm[canon.predict(X)], raw.predict(X))
    assert canon.score(X) == pytest.approx(raw.score(X), rel=1e-12)


def test_torch_tensors_in_torch_tensors_out():
    X = _data(n=200)
    Xt = torch.from_numpy(X)
    gm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(Xt)
    assert isinstance(gm.means_, torch.Tensor) and gm.means_.dtype == torch.float64
    assert isinstance(gm.predict(Xt), torch.Tensor)
    assert isinstance(gm.predict(X), np.ndarray)
    np.testing.assert_array_equal(gm.predict(X), gm.predict(Xt).numpy())
    np32 = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X.astype(np.float32))
    assert np32.means_.dtype == np.float32
    ref = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    assert ref.score(X) == pytest.approx(gm.score(X), rel=1e-12)


def test_sampling_and_sampling_one_component():
    X = _data(n=300)
    gm = GaussianMixture(3, random_state=0).fit(X)
    x, y = gm.sample(4000)
    assert x.shape == (4000, 3) and set(np.unique(y)) <= {0, 1, 2}
    x1, y1 = gm.sample(4000, component=1)
    assert set(y1.tolist()) == {1}
    np.testing.assert_allclose(x1.mean(0), gm.means_[1], atol=0.1)


def test_bic_chooses_the_true_number_of_components():
    X = _data(n=600, d=2, k=3, seed=8)
    selection = select_components(X, range(1, 6), criterion="bic", covariance_type="full")
    assert selection.best_k == 3
    fits = {k: GaussianMixture(k, random_state=0).fit(X) for k in range(1, 6)}
    bic = {k: gm.bic(X) for k, gm in fits.items()}
    assert min(bic, key=bic.get) == 3
    assert bic[3] == pytest.approx(selection.scores[3], rel=1e-6)
    aic = {k: gm.aic(X) for k, gm in fits.items()}
    assert min(aic, key=aic.get) >= 3 and aic[3] < aic[2] < aic[1]


def test_warm_start_continues_from_the_last_fit():
    X = _data(n=300, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(3, max_iter=2, tol=0, warm_start=True, random_state=0).fit(X)
        first = gm.score(X)
        gm.fit(X)
    assert gm.score(X) >= first - 1e-12
    cold = GaussianMixture(3, max_iter=2, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert cold.fit(X).score(X) == pytest.approx(first, rel=1e-12)


# --------------------------------------------------------------------------- bad input


def test_more_components_than_points():
    with pytest.raises(DataError, match="n_components=5 is larger than the number of points"):
        GaussianMixture(5).fit(np.random.default_rng(0).normal(size=(4, 2)))


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_fewer_than_one_component(k):
    with pytest.raises(ConfigurationError, match="n_components must be an integer >= 1"):
        GaussianMixture(k).fit(np.zeros((10, 2)))


def test_feature_count_at_predict_differs_from_fit():
    gm = GaussianMixture(2, random_state=0).fit(_data(n=100))
    for X in (np.zeros((5, 2)), torch.zeros(5, 4, dtype=torch.float64)):
        with pytest.raises(DataError, match="expecting 3 features.*same 3 columns used in fit"):
            gm.predict(X)


def test_constant_feature_is_regularized_with_a_warning():
    X = _data(n=200)
    X[:, 2] = 5.0
    with pytest.warns(UserWarning, match=r"feature\(s\) \[2\] are constant.*reg_covar"):
        gm = GaussianMixture(2, random_state=0).fit(X)
    assert np.isfinite(gm.score(X))
    assert gm.covariances_[:, 2, 2] == pytest.approx([1e-6, 1e-6], rel=1e-3)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_inf(bad):
    X = _data(n=50)
    X[7, 1] = bad
    with pytest.raises(DataError, match=r"non-finite.*first at index \[7, 1\].*remove or impute"):
        GaussianMixture(2).fit(X)
    gm = GaussianMixture(2, random_state=0).fit(_data(n=50))
    with pytest.raises(DataError, match="non-finite"):
        gm.predict(X)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_nan_entries_are_marginalized(cov_type):
    """NaN marks a missing entry: score_samples of a row is the mixture's marginal density of
    its observed entries (brute force with scipy); empty rows are refused by fit."""
    from scipy.stats import multivariate_normal

    X = _data(n=300)
    X[np.random.default_rng(1).random(X.shape) < 0.2] = np.nan
    X = X[~np.isnan(X).all(1)]
    gm = GaussianMixture(3, covariance_type=cov_type, random_state=0).fit(X)
    c = gm.covariances_
    cov = {
        "full": lambda: c,
        "tied": lambda: np.broadcast_to(c, (3, 3, 3)),
        "diag": lambda: np.stack([np.diag(v) for v in c]),
        "spherical": lambda: np.stack([v * np.eye(3) for v in c]),
    }[cov_type]()
    for row, value in zip(X[:20], gm.score_samples(X[:20])):
        o = ~np.isnan(row)
        dens = sum(
            w * multivariate_normal(m[o], c[np.ix_(o, o)]).pdf(row[o])
            for w, m, c in zip(gm.weights_, gm.means_, cov)
        )
        assert value == pytest.approx(np.log(dens), rel=1e-9)
    assert gm.predict(X).shape == (len(X),)
    with pytest.raises(DataError, match="every entry missing"):
        GaussianMixture(2).fit(np.vstack([X, np.full((1, 3), np.nan)]))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score", "score_samples", "bic"])
def test_predict_before_fit(method):
    with pytest.raises(NotFittedError, match="not fitted yet: call fit") as info:
        getattr(GaussianMixture(2), method)(np.zeros((3, 2)))
    assert isinstance(info.value, SklearnNotFittedError)
    with pytest.raises(NotFittedError):
        GaussianMixture(2).sample(3)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(covariance_type="banded"), "covariance_type must be one of"),
        (dict(init_params="zeros"), "init_params must be one of"),
        (dict(tol=-1), "tol must be"),
        (dict(reg_covar=-1e-3), "reg_covar must be non-negative"),
        (dict(max_iter=-1), "max_iter must be an integer >= 0"),
        (dict(n_init=0), "n_init must be an integer >= 1"),
        (dict(weights_init=[0.5, 0.6]), "weights must be positive and sum to 1"),
        (dict(means_init=np.zeros((3, 3))), "means has shape \\(3, 3\\), expected \\(2, 3\\)"),
    ],
)
def test_bad_parameters_name_the_fix(params, match):
    with pytest.raises(ConfigurationError, match=match):
        GaussianMixture(2, **params).fit(_data(n=50))
