"""GaussianMixtureModel: closed forms against Pyro's enumeration, Bayes' rule, scikit-learn's
M-step, MAP fixed points, generation, canonical order, Bayesian inference."""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC, NUTS, TraceEnum_ELBO
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.mixture._gaussian_mixture import (
    _compute_precision_cholesky,
    _estimate_gaussian_parameters,
)

from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.infer.em import em
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.gmm import (
    COVARIANCE_TYPES,
    GaussianMixtureModel,
    GMMPrior,
    kmeans,
    kmeans_plusplus,
)

PROPER = GMMPrior(weight_concentration=2.0, mean_loc=0.0, mean_scale=5.0, precision_df=6.0,
                  covariance_scale=1.5)


def _blobs(n=120, d=2, k=3, sep=4.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = sep * torch.randn(k, d, generator=g, dtype=dtype)
    z = torch.randint(k, (n,), generator=g)
    return centers[z] + torch.randn(n, d, generator=g, dtype=dtype), z


def _random_model(cov_type, k=3, d=2, seed=0, prior=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    gmm = GaussianMixtureModel(k, d, cov_type, prior=prior).to(dtype)
    w = torch.rand(k, generator=g, dtype=dtype) + 0.2
    a = torch.randn(k, d, d, generator=g, dtype=dtype)
    full = a @ a.mT + 0.5 * torch.eye(d, dtype=dtype)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": torch.diagonal(full, dim1=-2, dim2=-1),
        "spherical": torch.diagonal(full, dim1=-2, dim2=-1).mean(1),
    }[cov_type]
    gmm.set_parameters(weights=w / w.sum(), means=3 * torch.randn(k, d, generator=g, dtype=dtype),
                       covariances=cov)
    return gmm


def _dense_covariances(gmm):
    cov = gmm.covariances().detach()
    k, d = gmm.n_components, gmm.n_features
    if gmm.covariance_type == "tied":
        return cov.expand(k, d, d)
    if gmm.covariance_type == "diag":
        return torch.diag_embed(cov)
    if gmm.covariance_type == "spherical":
        return cov[:, None, None] * torch.eye(d, dtype=cov.dtype)
    return cov


@pytest.mark.parametrize("prior", [None, PROPER], ids=["flat", "prior"])
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_closed_form_e_step_equals_pyro_enumeration_in_float64(cov_type, prior):
    """float64 data and model while torch's default dtype stays float32: a tensor created on
    the side would break the dtype or the agreement."""
    assert torch.get_default_dtype() == torch.float32
    x, _ = _blobs()
    gmm = _random_model(cov_type, prior=prior)
    marginals = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(gmm.model, gmm.guide, x)
    log_joint = gmm.log_joint(x)
    assert log_joint.dtype == torch.float64
    torch.testing.assert_close(torch.softmax(log_joint, 1), marginals["z"].probs, rtol=0, atol=1e-12)
    # with a Delta guide, -ELBO = -log p(x) - log p(theta)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(gmm.model, gmm.guide, x)
    expected = -(gmm.log_prob(x).sum() + gmm.log_prior())
    assert loss == pytest.approx(float(expected), rel=1e-12)
    if prior is None:
        assert float(gmm.log_prior()) == 0.0


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_responsibilities_are_bayes_rule_by_hand(cov_type):
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0], [3.0, 1.0], [-1.5, 0.5]], dtype=torch.float64)
    gmm = _random_model(cov_type, seed=3)
    w = gmm.weights.detach().numpy()
    mu = gmm.loc.detach().numpy()
    cov = _dense_covariances(gmm).numpy()
    joint = np.stack([w[k] * multivariate_normal(mu[k], cov[k]).pdf(x.numpy())
                      for k in range(3)], 1)
    np.testing.assert_allclose(gmm.posterior(x).numpy(), joint / joint.sum(1, keepdims=True),
                               rtol=1e-10)
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), np.log(joint.sum(1)), rtol=1e-10)
    assert gmm.map_z(x).tolist() == joint.argmax(1).tolist()


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_m_step_equals_scikit_learn_estimates(cov_type):
    x, _ = _blobs(n=90, d=3, seed=1)
    resp = torch.softmax(torch.randn(90, 3, dtype=torch.float64), 1)
    gmm = GaussianMixtureModel(3, 3, cov_type).double()
    gmm.m_step(x, resp)
    weights, means, covariances = _estimate_gaussian_parameters(
        x.numpy(), resp.numpy(), 1e-6, cov_type
    )
    np.testing.assert_allclose(gmm.weights.detach().numpy(), weights / weights.sum(), rtol=1e-10)
    np.testing.assert_allclose(gmm.loc.detach().numpy(), means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gmm.covariances().detach().numpy(), covariances, rtol=1e-9)
    np.testing.assert_allclose(gmm.precisions_cholesky().detach().numpy(),
                               _compute_precision_cholesky(covariances, cov_type), rtol=1e-8)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_chunked_statistics_equal_one_block(cov_type):
    x, _ = _blobs(n=257, d=3, seed=2)
    gmm = _random_model(cov_type, d=3)
    shift = x.mean(0)
    ll_a, a = gmm.expected_statistics(x, shift, chunk_size=10)
    ll_b, b = gmm.expected_statistics(x, shift, chunk_size=1000)
    assert float(ll_a) == pytest.approx(float(gmm.log_prob(x).sum()), rel=1e-12)
    assert float(ll_a) == pytest.approx(float(ll_b), rel=1e-12)
    for name in ("nk", "sx", "sxx"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-10, atol=1e-10)
    direct = gmm.sufficient_statistics(x, gmm.posterior(x), shift)
    torch.testing.assert_close(direct.sxx, a.sxx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_statistics_do_not_depend_on_the_number_of_threads(cov_type):
    """With torch on two threads the chunks are spread over two threads of single-threaded
    operations: the same bits as on one thread (also past the 64 chunks summed at a time),
    and torch's thread setting is left as it was."""
    x, _ = _blobs(n=700, d=3, seed=4)
    gmm = _random_model(cov_type, d=3)
    shift = x.mean(0)
    results = {}
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = (*gmm.expected_statistics(x, shift, chunk_size=7),
                                gmm.log_prob(x, chunk_size=7))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved)
    (ll_1, a, lp_1), (ll_2, b, lp_2) = results[1], results[2]
    assert torch.equal(ll_1, ll_2) and torch.equal(lp_1, lp_2)
    for name in ("nk", "sx", "sxx"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    ll_block, block = gmm.expected_statistics(x, shift, chunk_size=1000)
    assert float(ll_1) == pytest.approx(float(ll_block), rel=1e-12)
    torch.testing.assert_close(a.sxx, block.sxx, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cov_type", ["full", "diag", "spherical", "tied"])
def test_map_em_reaches_a_stationary_point_of_the_log_posterior(cov_type):
    """At EM's fixed point with priors (and reg_covar=0) the gradient of
    log p(x | theta) + log p(theta) vanishes: the closed-form MAP M-step is right."""
    x, _ = _blobs(n=150, d=2, k=2, sep=3.0, seed=4)
    gmm = GaussianMixtureModel(2, 2, cov_type, reg_covar=0.0, prior=PROPER).double()
    result = em(gmm, x, tol=1e-13, max_iter=2000, seed=0, device="cpu")
    assert result.converged
    assert np.all(np.diff(result.objective) >= -1e-12)
    params = list(gmm.parameters())
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(gmm.model, gmm.guide, x)
    grads = torch.autograd.grad(loss, params)
    assert max(float(g.abs().max()) for g in grads) < 1e-5 * len(x)


def test_parameters_round_trip_and_counts():
    gmm = _random_model("full", k=4, d=3)
    torch.testing.assert_close(gmm.precisions() @ gmm.covariances(),
                               torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-10, rtol=0)
    p = gmm.precisions_cholesky()
    torch.testing.assert_close(p @ p.mT, gmm.precisions(), atol=1e-10, rtol=0)
    for cov_type in COVARIANCE_TYPES:
        sk = SkGaussianMixture(3, covariance_type=cov_type).fit(np.random.default_rng(0).normal(size=(30, 4)))
        assert GaussianMixtureModel(3, 4, cov_type).num_parameters() == sk._n_parameters()


def test_canonical_order_sorts_by_weight_then_first_mean_and_keeps_the_density():
    x, _ = _blobs()
    gmm = _random_model("full", k=3)
    gmm.set_parameters(weights=torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    before = gmm.log_prob(x)
    perm = gmm.canonicalize_()
    assert perm.tolist() == [1, 2, 0]
    assert gmm.weights.tolist() == pytest.approx([0.5, 0.3, 0.2])
    torch.testing.assert_close(gmm.log_prob(x), before, rtol=1e-12, atol=0)
    tie = GaussianMixtureModel(3, 1, "spherical")
    tie.set_parameters(means=[[2.0], [-1.0], [0.5]])
    assert tie.canonicalize_().tolist() == [1, 2, 0]
    assert tie.loc[:, 0].tolist() == [-1.0, 0.5, 2.0]


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_sample_from_a_chosen_component_has_its_mean_and_covariance(cov_type):
    gmm = _random_model(cov_type, k=2, d=2, seed=5)
    x, z = gmm.sample(20000, component=1, generator=torch.Generator().manual_seed(0))
    assert set(z.tolist()) == {1}
    np.testing.assert_allclose(x.mean(0).numpy(), gmm.loc[1].detach().numpy(), atol=0.06)
    np.testing.assert_allclose(np.cov(x.numpy().T), _dense_covariances(gmm)[1].numpy(),
                               rtol=0.05, atol=0.03)
    _, z_all = gmm.sample(20000, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(z_all, minlength=2).double() / 20000
    np.testing.assert_allclose(counts.numpy(), gmm.weights.detach().numpy(), atol=0.015)


def test_kmeans_and_kmeans_plusplus_find_separated_clusters():
    x, z = _blobs(n=300, d=2, k=3, sep=10.0, seed=7)
    idx = kmeans_plusplus(x, 3, generator=torch.Generator().manual_seed(0))
    assert len(set(z[idx].tolist())) == 3
    centers, labels = kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    # labels agree with the truth up to a permutation
    pairs = {(int(a), int(b)) for a, b in zip(labels, z)}
    assert len(pairs) == 3


@pytest.mark.parametrize("method", ["kmeans", "kmeans++", "random_from_data", "random"])
def test_initialize_gives_finite_parameters(method):
    x, _ = _blobs()
    gmm = GaussianMixtureModel(3, 2, "full").double()
    gmm.initialize_(x, method, torch.Generator().manual_seed(0))
    assert torch.isfinite(gmm.log_prob(x)).all()
    assert float(gmm.weights.sum()) == pytest.approx(1.0)


def test_bad_configuration_names_the_fix():
    with pytest.raises(ConfigurationError, match="n_components must be a positive integer"):
        GaussianMixtureModel(0, 2)
    with pytest.raises(ConfigurationError, match="covariance_type must be one of"):
        GaussianMixtureModel(2, 2, "banded")
    with pytest.raises(ConfigurationError, match="positive-definite"):
        GaussianMixtureModel(2, 2).set_parameters(covariances=-torch.eye(2).expand(2, 2, 2))
    with pytest.raises(ConfigurationError, match="expected \\(2, 2\\)"):
        GaussianMixtureModel(2, 2).set_parameters(means=torch.zeros(3, 2))
    with pytest.raises(DataError, match="n_components=3 is larger than the number of points"):
        GaussianMixtureModel(3, 1).initialize_(torch.zeros(2, 1))
    with pytest.raises(ConfigurationError, match="needs precision_df > 2"):
        GaussianMixtureModel(2, 3, "full", prior=GMMPrior(precision_df=2.0))
    with pytest.raises(ConfigurationError, match="proper priors"):
        GaussianMixtureModel(2, 1).global_guide()
    with pytest.raises(ConfigurationError, match="weight_concentration >= 1"):
        gmm = GaussianMixtureModel(2, 1, prior=GMMPrior(weight_concentration=0.5))
        gmm.m_step(torch.randn(10, 1), torch.full((10, 2), 0.5))


def _two_cluster_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(2, (60,), generator=g)
    return torch.where(z[:, None] == 1, 3.0, -3.0) + 0.7 * torch.randn(60, 1, generator=g)


def test_bayesian_mixture_by_nuts_with_z_enumerated_exports_to_arviz():
    x = _two_cluster_data()
    gmm = GaussianMixtureModel(2, 1, "spherical", prior=GMMPrior(2.0, 0.0, 5.0, 4.0))
    gmm.set_parameters(means=[[-1.0], [1.0]])
    kernel = NUTS(gmm.model, max_plate_nesting=1, max_tree_depth=4,
                  init_strategy=pyro.infer.autoguide.init_to_value(
                      values={"locs": gmm.loc.detach(), "mixture_weights": gmm.weights.detach(),
                              "precisions": gmm.precisions().detach()}))
    mcmc = MCMC(kernel, num_samples=40, warmup_steps=40, disable_progbar=True)
    mcmc.run(x)
    loc = mcmc.get_samples()["locs"]
    assert loc.shape == (40, 2, 1)
    means = loc.mean(0)[:, 0].sort().values
    assert means.tolist() == pytest.approx([-3.0, 3.0], abs=0.4)
    idata = az.from_pyro(mcmc, log_likelihood=False)
    assert {"locs", "mixture_weights", "precisions"} <= set(idata.posterior.data_vars)
    draws = mcmc.get_samples()
    pointwise = gmm.pointwise_log_likelihood(draws, x)
    assert pointwise.shape == (40, len(x))
    gmm.set_parameters(weights=draws["mixture_weights"][-1], means=draws["locs"][-1],
                       precisions=draws["precisions"][-1])
    torch.testing.assert_close(pointwise[-1], gmm.log_prob(x), rtol=1e-5, atol=1e-5)


def test_bayesian_mixture_by_svi_with_z_enumerated():
    x = _two_cluster_data(1)
    gmm = GaussianMixtureModel(2, 1, "spherical", prior=GMMPrior(2.0, 0.0, 5.0, 4.0))
    gmm.set_parameters(means=[[-1.0], [1.0]])
    guide = gmm.global_guide("normal")
    fit(gmm.model, x, guide=guide, estimator="enum", steps=300, lr=0.05,
        batch_size=len(x), progress=False, seed=0, device="cpu")
    median = guide.median()
    assert sorted(median["locs"][:, 0].tolist()) == pytest.approx([-3.0, 3.0], abs=0.3)
    assert math.isclose(float(median["mixture_weights"].sum()), 1.0, rel_tol=1e-5)


def test_a_prior_mean_per_feature_is_used_and_its_length_checked():
    from lvm_pyro.models.gmm import GMMPrior

    prior = GMMPrior(1.0, (5.0, -5.0), 0.1, 4.0, 1.0)
    gmm = GaussianMixtureModel(1, 2, "diag", prior=prior).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    gmm.m_step(x, torch.ones(3, 1, dtype=torch.float64))
    # MAP mean: strong prior at (5, -5) against three points at 0
    assert gmm.loc[0, 0] > 4 and gmm.loc[0, 1] < -4
    with pytest.raises(ConfigurationError, match="one per feature"):
        GaussianMixtureModel(2, 3, "diag", prior=GMMPrior(mean_loc=(0.0, 1.0)))
