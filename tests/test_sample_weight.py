"""Sample weights in the Gaussian mixture: integer weights equal replicated rows, fractional
weights equal a weighted closed form written here, weighted k-means, validation."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from lvm_pyro.errors import DataError
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import COVARIANCE_TYPES, GaussianMixtureModel, kmeans, kmeans_plusplus

EM_TAKES_WEIGHTS = "sample_weight" in inspect.signature(em).parameters


def _data(n=60, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(3, d, generator=g, dtype=torch.float64)
    z = torch.randint(3, (n,), generator=g)
    return centers[z] + torch.randn(n, d, generator=g, dtype=torch.float64)


def _start(cov_type, x, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    gmm = GaussianMixtureModel(k, x.shape[1], cov_type).double()
    gmm.initialize_(x, "random_from_data", g)
    return gmm


def _params(gmm):
    return [gmm.weights.detach(), gmm.loc.detach(), gmm.covariances().detach()]


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_integer_weights_equal_replicated_rows(cov_type):
    """EM iterations through the statistics protocol, float64, the same start: weights
    (0, 1, 2, 3) give the fit of the rows repeated that many times, to 1e-10."""
    x = _data()
    w = torch.arange(len(x)) % 4
    replicated = x.repeat_interleave(w, 0)
    weighted, repeated = _start(cov_type, x), _start(cov_type, x)
    shift = replicated.mean(0)
    for _ in range(6):
        ll_w, s_w = weighted.expected_statistics(x, shift, chunk_size=7, sample_weight=w)
        ll_r, s_r = repeated.expected_statistics(replicated, shift, chunk_size=11)
        assert float(ll_w) == pytest.approx(float(ll_r), rel=1e-10)
        weighted.m_step_from_statistics(s_w)
        repeated.m_step_from_statistics(s_r)
    for a, b in zip(_params(weighted), _params(repeated)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _weighted_closed_form(x, resp, w, cov_type, reg):
    """n_k = sum w r, mu_k = sum w r x / n_k, Sigma_k = sum w r (x - mu)(x - mu)^T / n_k (+reg),
    pooled for tied (divided by sum_k n_k), its diagonal for diag, its trace / D for spherical."""
    x, resp, w = x.numpy(), resp.numpy(), w.numpy()
    wr = resp * w[:, None]
    nk = wr.sum(0)
    mu = wr.T @ x / nk[:, None]
    scat = np.stack([(wr[:, k, None] * (x - mu[k])).T @ (x - mu[k]) for k in range(len(nk))])
    d = x.shape[1]
    cov = {
        "full": scat / nk[:, None, None] + reg * np.eye(d),
        "tied": scat.sum(0) / nk.sum() + reg * np.eye(d),
        "diag": np.diagonal(scat, axis1=1, axis2=2) / nk[:, None] + reg,
        "spherical": np.trace(scat, axis1=1, axis2=2) / (d * nk) + reg,
    }[cov_type]
    return nk / nk.sum(), mu, cov


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_fractional_weights_give_the_weighted_closed_form(cov_type):
    x = _data(n=50, seed=2)
    g = torch.Generator().manual_seed(3)
    w = torch.rand(len(x), generator=g, dtype=torch.float64) * 2.5
    resp = torch.softmax(torch.randn(len(x), 3, generator=g, dtype=torch.float64), 1)
    gmm = GaussianMixtureModel(3, 3, cov_type, reg_covar=1e-4).double()
    gmm.m_step_from_statistics(gmm.sufficient_statistics(x, resp, x.mean(0), sample_weight=w))
    weights, means, cov = _weighted_closed_form(x, resp, w, cov_type, 1e-4)
    np.testing.assert_allclose(gmm.weights.detach().numpy(), weights, rtol=1e-10)
    np.testing.assert_allclose(gmm.loc.detach().numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gmm.covariances().detach().numpy(), cov, rtol=1e-9)
    # the E-step's responsibilities, weighted: the same closed form from the posterior
    ll, stats = gmm.expected_statistics(x, x.mean(0), sample_weight=w)
    assert float(ll) == pytest.approx(float((w * gmm.log_prob(x)).sum()), rel=1e-12)
    post = gmm.posterior(x)
    _, means_e, _ = _weighted_closed_form(x, post, w, cov_type, 1e-4)
    gmm.m_step_from_statistics(stats)
    np.testing.assert_allclose(gmm.loc.detach().numpy(), means_e, rtol=1e-10, atol=1e-12)


def test_statistics_form_a_vector_space():
    x = _data(n=40)
    gmm = _start("full", x)
    shift = x.mean(0)
    _, a = gmm.expected_statistics(x[:15], shift)
    _, b = gmm.expected_statistics(x[15:], shift)
    _, both = gmm.expected_statistics(x, shift)
    _, doubled = gmm.expected_statistics(x, shift, sample_weight=torch.full((40,), 2.0))
    for name in ("nk", "sx", "sxx"):
        torch.testing.assert_close(getattr(a + b, name), getattr(both, name), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(getattr(2.0 * both, name), getattr(doubled, name), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="different shifts"):
        _ = a + gmm.expected_statistics(x, shift + 1)[1]


def test_weighted_kmeans_ignores_zero_weights_and_centers_are_weighted_means():
    x = _data(n=90, d=2, seed=4)
    far = torch.full((5, 2), 1e3, dtype=torch.float64)
    xs = torch.cat([x, far])
    w = torch.cat([torch.rand(90, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5,
                   torch.zeros(5, dtype=torch.float64)])
    for seed in range(5):
        seeds = kmeans_plusplus(xs, 3, generator=torch.Generator().manual_seed(seed), sample_weight=w)
        assert int(seeds.max()) < 90
    centers, labels = kmeans(xs, 3, generator=torch.Generator().manual_seed(0), sample_weight=w, tol=0.0)
    assert float(centers.abs().max()) < 100  # the zero-weight outliers pulled no center
    for k in range(3):
        member = labels[:90] == k
        expected = (w[:90][member, None] * x[member]).sum(0) / w[:90][member].sum()
        torch.testing.assert_close(centers[k], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "weights, match",
    [
        (-np.ones(10), "negative value"),
        (np.ones(9), r"shape \(9,\), expected \(10,\)"),
        (np.r_[np.ones(9), np.nan], "non-finite"),
        (np.zeros(10), "zero for every row"),
        (np.ones((10, 1)), "expected \\(10,\\)"),
    ],
)
def test_bad_sample_weight_names_the_problem(weights, match):
    x = _data(n=10)
    gmm = _start("diag", x)
    with pytest.raises(DataError, match=match):
        gmm.expected_statistics(x, sample_weight=weights)
    with pytest.raises(DataError, match=match):
        GaussianMixture(2, batch_size=5).fit(x.numpy(), sample_weight=weights)


def test_initialization_takes_the_weights():
    """Weight 0 on one cluster: the k-means initialization puts no component there."""
    x = torch.cat([_data(n=60, d=2, seed=5), torch.full((30, 2), 50.0, dtype=torch.float64)
                   + torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)])
    w = torch.cat([torch.ones(60, dtype=torch.float64), torch.zeros(30, dtype=torch.float64)])
    for method in ("kmeans", "kmeans++", "random_from_data"):
        gmm = GaussianMixtureModel(3, 2, "diag").double()
        gmm.initialize_(x, method, torch.Generator().manual_seed(1), sample_weight=w)
        assert float(gmm.loc.detach().max()) < 30, method


@pytest.mark.skipif(not EM_TAKES_WEIGHTS, reason="em(..., sample_weight=) comes with the em helper's branch")
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_estimator_integer_weights_equal_replicated_rows(cov_type):
    x = _data(n=80, seed=6).numpy()
    w = np.arange(80) % 3
    gmm = _start(cov_type, torch.from_numpy(x))
    start = dict(weights_init=gmm.weights.detach().numpy(), means_init=gmm.loc.detach().numpy(),
                 precisions_init=gmm.precisions().detach().numpy())
    options = dict(covariance_type=cov_type, max_iter=15, tol=0.0, sort_components=False, **start)
    weighted = GaussianMixture(3, **options).fit(x, sample_weight=w)
    repeated = GaussianMixture(3, **options).fit(np.repeat(x, w, axis=0))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-10, atol=1e-10)
