"""Bad inputs to the scikit-learn facade ``GaussianMixture`` and to a ``GaussianMixtureModel``'s
own methods (log_prob, posterior, map_z, sample, set_parameters, bic, aic)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from harness import Case, run_case
from sklearn.exceptions import ConvergenceWarning

from lvm_pyro import GaussianMixture, GaussianMixtureModel, errors

CE, DE, DTE = errors.ConfigurationError, errors.DataError, errors.DataTypeError
RNG = np.random.default_rng(0)
X = np.vstack([RNG.normal(-3, 1, (20, 2)), RNG.normal(3, 1, (20, 2))])


def fitted() -> GaussianMixture:
    return GaussianMixture(2, random_state=0, max_iter=20).fit(X)


FITTED = fitted()


def with_nan(row: bool = False, column: bool = False) -> np.ndarray:
    """NaN entries are missing values (marginalized); a row or a column with no observed
    entry cannot be fitted."""
    x = X.copy()
    x[4, 1] = np.nan
    if row:
        x[6] = np.nan
    if column:
        x[4, 1] = X[4, 1]
        x[:, 0] = np.nan
    return x


def fit_with(**params):
    return lambda: GaussianMixture(**{"n_components": 2, "random_state": 0, **params}).fit(X)


def gmm() -> GaussianMixtureModel:
    return GaussianMixtureModel(2, 2, "diag")


CASES = [
    # --- constructor parameters (checked at fit, as scikit-learn does) -------------------------
    Case("gm-n-components-0", fit_with(n_components=0), CE, r"n_components"),
    Case("gm-n-components-negative", fit_with(n_components=-1), CE, r"n_components"),
    Case("gm-n-components-float", fit_with(n_components=2.5), CE, r"n_components"),
    Case("gm-n-components-string", fit_with(n_components="2"), CE, r"n_components"),
    Case("gm-n-components-bool", fit_with(n_components=True), CE, r"n_components"),
    Case("gm-unknown-covariance", fit_with(covariance_type="diagonal"), CE, r"covariance_type"),
    Case("gm-unknown-init-params", fit_with(init_params="kmeans+"), CE, r"init_params"),
    Case("gm-tol-negative", fit_with(tol=-1e-3), CE, r"tol"),
    Case("gm-tol-nan", fit_with(tol=float("nan")), CE, r"tol"),
    Case("gm-tol-string", fit_with(tol="1e-3"), CE, r"tol"),
    Case("gm-reg-covar-negative", fit_with(reg_covar=-1.0), CE, r"reg_covar"),
    Case("gm-reg-covar-nan", fit_with(reg_covar=float("nan")), CE, r"reg_covar"),
    Case("gm-max-iter-negative", fit_with(max_iter=-1), CE, r"max_iter"),
    Case("gm-max-iter-float", fit_with(max_iter=10.5), CE, r"max_iter"),
    Case("gm-n-init-0", fit_with(n_init=0), CE, r"n_init"),
    Case("gm-n-init-bool", fit_with(n_init=True), CE, r"n_init"),
    Case("gm-verbose-interval-0", fit_with(verbose=2, verbose_interval=0), CE, r"verbose_interval"),
    Case("gm-chunk-size-0", fit_with(chunk_size=0), CE, r"chunk_size"),
    Case("gm-dtype-int", fit_with(dtype=torch.int64), CE, r"dtype"),
    Case("gm-dtype-string", fit_with(dtype="float64"), CE, r"dtype"),
    Case("gm-unknown-device", fit_with(device="tpu"), CE, r"device"),
    Case("gm-random-state-string", fit_with(random_state="seed"), CE, r"random_state"),
    Case("gm-weights-init-wrong-shape", fit_with(weights_init=[0.2, 0.3, 0.5]), CE, r"weights"),
    Case("gm-weights-init-not-normalized", fit_with(weights_init=[0.7, 0.7]), CE, r"weights"),
    Case("gm-means-init-wrong-shape", fit_with(means_init=np.zeros((2, 3))), CE, r"means"),
    Case("gm-means-init-nan", fit_with(means_init=np.full((2, 2), np.nan)), CE, r"means"),
    Case("gm-means-init-strings", fit_with(means_init=[["a", "b"], ["c", "d"]]), CE, r"means"),
    Case(
        "gm-precisions-init-not-pd",
        fit_with(precisions_init=-np.stack([np.eye(2)] * 2)),
        CE,
        r"precisions|positive",
    ),
    Case("gm-warm-start-string", fit_with(warm_start="yes"), CE, r"warm_start"),
    Case("gm-sort-components-string", fit_with(sort_components="no"), CE, r"sort_components"),
    # a legitimate run the user must be told about: a warning, not an error
    Case("gm-not-converged-warns", fit_with(max_iter=1, tol=0.0), ConvergenceWarning, r"did not converge"),
    Case(
        "gm-constant-feature-warns",
        lambda: GaussianMixture(2, random_state=0).fit(np.c_[X, np.ones(len(X))]),
        UserWarning,
        r"constant",
    ),
    # --- data given to fit ------------------------------------------------------------------------
    Case("gm-fit-nan-row", lambda: GaussianMixture(2).fit(with_nan(row=True)), DE,
         r"every entry missing.*row 6"),
    Case("gm-fit-inf", lambda: GaussianMixture(2).fit(np.where(X > 4, np.inf, X)), DE, r"inf"),
    Case("gm-fit-1d", lambda: GaussianMixture(2).fit(X[:, 0]), DE, r"reshape"),
    Case("gm-fit-3d", lambda: GaussianMixture(2).fit(X[None]), DE, r"shape|2-D|2D"),
    Case("gm-fit-empty", lambda: GaussianMixture(2).fit(X[:0]), DE, r"empty|sample|rows|at least"),
    Case("gm-fit-no-features", lambda: GaussianMixture(2).fit(np.zeros((5, 0))), DE, r"feature"),
    Case(
        "gm-fit-more-components-than-points",
        lambda: GaussianMixture(5).fit(X[:3]),
        DE,
        r"n_components|components|points|samples",
    ),
    Case(
        "gm-fit-strings",
        lambda: GaussianMixture(2).fit(np.array([["a", "b"]] * 5)),
        DTE,
        r"numeric|number|str",
    ),
    Case(
        "gm-fit-object",
        lambda: GaussianMixture(2).fit(np.array([[1, "x"]] * 5, dtype=object)),
        DTE,
        r"object|numeric|number",
    ),
    Case("gm-fit-complex", lambda: GaussianMixture(2).fit(X + 1j), (DE), r"complex"),
    Case("gm-fit-sparse", lambda: GaussianMixture(2).fit(sp.csr_matrix(X)), DTE, r"toarray"),
    Case(
        "gm-fit-ragged", lambda: GaussianMixture(2).fit([[1.0, 2.0], [3.0]] * 3), DTE, r"ragged|shape|numeric"
    ),
    Case("gm-fit-tensor-nan-column",
         lambda: GaussianMixture(2).fit(torch.as_tensor(with_nan(column=True))), DE,
         r"column.*\[0\].*every row"),
    # --- methods before fit -----------------------------------------------------------------------
    Case("gm-predict-before-fit", lambda: GaussianMixture(2).predict(X), errors.NotFittedError, r"fit"),
    Case(
        "gm-score-samples-before-fit",
        lambda: GaussianMixture(2).score_samples(X),
        errors.NotFittedError,
        r"fit",
    ),
    Case("gm-sample-before-fit", lambda: GaussianMixture(2).sample(3), errors.NotFittedError, r"fit"),
    Case("gm-bic-before-fit", lambda: GaussianMixture(2).bic(X), errors.NotFittedError, r"fit"),
    # --- methods on data the model was not fitted on ------------------------------------------
    Case("gm-predict-wrong-features", lambda: FITTED.predict(np.zeros((4, 3))), DE, r"features"),
    Case("gm-predict-proba-inf", lambda: FITTED.predict_proba(np.where(X > 4, np.inf, X)), DE, r"inf"),
    Case("gm-score-1d", lambda: FITTED.score(X[0]), DE, r"reshape"),
    Case("gm-score-samples-empty", lambda: FITTED.score_samples(X[:0]), DE, r"empty|sample|rows|at least"),
    Case("gm-aic-strings", lambda: FITTED.aic(np.array([["a", "b"]])), DTE, r"numeric|number|str"),
    Case("gm-sample-0", lambda: FITTED.sample(0), CE, r"n_samples"),
    Case("gm-sample-float", lambda: FITTED.sample(2.5), CE, r"n_samples"),
    Case("gm-sample-bool", lambda: FITTED.sample(True), CE, r"n_samples"),
    Case("gm-sample-unknown-component", lambda: FITTED.sample(3, component=5), CE, r"component"),
    Case("gm-sample-negative-component", lambda: FITTED.sample(3, component=-1), CE, r"component"),
    # --- GaussianMixtureModel's own methods -------------------------------------------------------
    Case("gmm-log-prob-wrong-features", lambda: gmm().log_prob(torch.zeros(3, 5)), DE, r"feature|shape"),
    Case("gmm-log-prob-inf", lambda: gmm().log_prob(torch.full((3, 2), float("inf"))), DE, r"inf"),
    Case("gmm-log-prob-numpy-1d", lambda: gmm().log_prob(np.zeros(2)), DE, r"shape|reshape"),
    Case("gmm-posterior-strings", lambda: gmm().posterior([["a", "b"]]), DTE, r"numeric|number|str"),
    Case("gmm-map-z-empty", lambda: gmm().map_z(torch.zeros(0, 2)), DE, r"empty|rows|at least"),
    Case("gmm-bic-wrong-features", lambda: gmm().bic(torch.zeros(4, 3)), DE, r"feature|shape"),
    Case(
        "gmm-log-prob-chunk-size-0",
        lambda: gmm().log_prob(torch.zeros(3, 2), chunk_size=0),
        CE,
        r"chunk_size",
    ),
    Case("gmm-sample-0", lambda: gmm().sample(0), CE, r"samples"),
    Case("gmm-sample-bool", lambda: gmm().sample(True), CE, r"samples"),
    Case("gmm-sample-component-out-of-range", lambda: gmm().sample(2, component=2), CE, r"component"),
    Case("gmm-set-weights-wrong-shape", lambda: gmm().set_parameters(weights=[1.0]), CE, r"weights"),
    Case("gmm-set-weights-negative", lambda: gmm().set_parameters(weights=[1.5, -0.5]), CE, r"weights"),
    Case(
        "gmm-set-means-nan",
        lambda: gmm().set_parameters(means=[[0.0, float("nan")], [1.0, 1.0]]),
        CE,
        r"means",
    ),
    Case(
        "gmm-set-covariances-and-precisions",
        lambda: gmm().set_parameters(covariances=np.ones((2, 2)), precisions=np.ones((2, 2))),
        CE,
        r"not both",
    ),
    Case(
        "gmm-set-covariances-nonpositive",
        lambda: gmm().set_parameters(covariances=np.zeros((2, 2))),
        CE,
        r"positive",
    ),
    Case(
        "gmm-set-full-not-pd",
        lambda: GaussianMixtureModel(2, 2, "full").set_parameters(covariances=-np.stack([np.eye(2)] * 2)),
        CE,
        r"positive-definite",
    ),
    Case("gmm-set-means-strings", lambda: gmm().set_parameters(means=[["a", "b"], ["c", "d"]]), CE, r"means"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_estimators(case: Case) -> None:
    run_case(case)
