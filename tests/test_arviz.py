"""to_inference_data (SVI, EM, guides), LOO against the closed form, PSIS k-hat both ways,
model comparison, choosing K, and bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import (
    NOISE,
    PRIOR_SCALE,
    LocalGaussian,
    normal_normal_guide,
    normal_normal_model,
    normal_normal_posterior,
)
from pyro.infer.autoguide import AutoNormal

import lvm_pyro
from lvm_pyro.data import make_mixture
from lvm_pyro.diagnostics.arviz import compare, loo, psis_khat, to_inference_data
from lvm_pyro.diagnostics.selection import select_components
from lvm_pyro.errors import ConfigurationError, DataError, ModelContractError
from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GLOBAL_SITES, GaussianMixtureModel

WEIGHTS, LOCS, _ = GLOBAL_SITES

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


@pytest.fixture
def x():
    torch.manual_seed(1)
    return 1.5 + torch.randn(40)


def exact_guide(x, widen=1.0, shift=0.0):
    """The exact posterior of mu in the Normal-Normal model (optionally scaled / shifted)."""
    mean, sd = normal_normal_posterior(x)

    def guide(data):
        pyro.sample("mu", dist.Normal(data.new_tensor(mean + shift), sd * widen))

    return guide


def exact_loo(x: torch.Tensor) -> np.ndarray:
    """log p(x_i | x_-i) = log N(x_i; m_-i, noise^2 + s_-i^2) of the Normal-Normal model."""
    x = x.double()
    n = len(x)
    out = []
    for i in range(n):
        rest = torch.cat([x[:i], x[i + 1:]])
        precision = 1 / PRIOR_SCALE**2 + (n - 1) / NOISE**2
        mean = float(rest.sum()) / NOISE**2 / precision
        out.append(float(dist.Normal(mean, math.sqrt(NOISE**2 + 1 / precision)).log_prob(x[i])))
    return np.array(out)


def test_svi_result_gives_every_group_with_the_right_shapes(x):
    result = lvm_pyro.fit((normal_normal_model, normal_normal_guide), x, steps=400, lr=0.05,
                          batch_size=len(x), progress=False, seed=0)
    idata = to_inference_data(result, x, num_samples=300, seed=0)
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
            "sample_stats"} <= set(idata.groups())
    assert idata.log_likelihood["x"].shape == (1, 300, 40)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "obs")
    assert idata.posterior_predictive["x"].shape == (1, 300, 40)
    np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
    assert idata.sample_stats["loss"].shape == (1, 400)
    np.testing.assert_allclose(idata.sample_stats["loss"].values[0], result.losses)
    mean, sd = normal_normal_posterior(x)
    summary = az.summary(idata, var_names=["mu"])
    assert abs(summary.loc["mu", "mean"] - mean) < 0.05
    assert abs(summary.loc["mu", "sd"] - sd) / sd < 0.2
    # the posterior predictive spreads as noise^2 + posterior variance
    assert abs(float(idata.posterior_predictive["x"].std()) - math.sqrt(1 + sd**2)) < 0.1


def test_loo_of_the_exact_posterior_matches_the_closed_form(x):
    idata = to_inference_data((normal_normal_model, exact_guide(x)), x, num_samples=2000, seed=0)
    elpd = loo(idata)
    assert np.isfinite(float(elpd.elpd_loo))
    assert float(elpd.elpd_loo) == pytest.approx(float(elpd.loo_i.sum()), rel=1e-10)
    truth = exact_loo(x)
    assert float(elpd.elpd_loo) == pytest.approx(truth.sum(), abs=0.3)
    np.testing.assert_allclose(elpd.loo_i.values, truth, atol=0.05)
    assert float(elpd.pareto_k.max()) < 0.5


def test_autoguide_on_a_user_model_names_the_model_sites(x):
    guide = AutoNormal(normal_normal_model)
    result = lvm_pyro.fit(normal_normal_model, x, guide=guide, steps=300, lr=0.05, batch_size=len(x),
                          progress=False, seed=0)
    idata = to_inference_data(result, x, num_samples=50, posterior_predictive=False)
    assert list(idata.posterior.data_vars) == ["mu"]
    assert "posterior_predictive" not in idata.groups()


def _mixture_log_joint(x, weights, means, variances):
    """log p(x_n, z_n = k) of a diagonal Gaussian mixture, (N, K)."""
    comp = dist.Normal(means[None], variances.sqrt()[None]).log_prob(x[:, None]).sum(-1)
    return weights.log()[None] + comp


def test_enumerated_mixture_log_likelihood_sums_out_z_with_named_dims():
    data = make_mixture(120, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64)
    gmm = GaussianMixtureModel(3, 2, "diag").double()
    gmm.set_parameters(weights=data.weights, means=data.means, covariances=data.covariances)
    idata = to_inference_data(gmm, data.x, num_samples=200, local_latents=True, seed=0)
    log_joint = _mixture_log_joint(data.x, data.weights, data.means, data.covariances)
    expected = torch.logsumexp(log_joint, dim=1)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0], expected.numpy(), rtol=1e-10)
    assert idata.posterior[LOCS].dims == ("chain", "draw", "component", "feature")
    assert idata.posterior[WEIGHTS].dims == ("chain", "draw", "component")
    assert idata.observed_data["x"].dims == ("obs", "feature")
    # z is drawn from p(z | x, theta): its frequencies over the draws are the responsibilities
    z = idata.posterior["z"].values[0]
    assert z.shape == (200, 120)
    frequencies = np.stack([(z == k).mean(0) for k in range(3)], axis=1)
    np.testing.assert_allclose(frequencies, torch.softmax(log_joint, 1).numpy(), atol=0.15)
    assert np.abs(frequencies - torch.softmax(log_joint, 1).numpy()).mean() < 0.02


def test_two_chained_enumerated_sites_are_summed_out_and_drawn_jointly():
    """a ~ Bern(0.3), b | a ~ Bern(0.8 if a else 0.2), x ~ N(a + 2 b, 0.5): exact by listing (a, b)."""

    def model(x):
        with pyro.plate("data", len(x)):
            a = pyro.sample("a", dist.Bernoulli(x.new_tensor(0.3)), infer={"enumerate": "parallel"})
            b = pyro.sample("b", dist.Bernoulli(0.2 + 0.6 * a), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(a + 2 * b, 0.5), obs=x)

    def guide(x):
        pass

    x = torch.tensor([-0.2, 0.9, 2.1, 3.2, 1.5], dtype=torch.float64)
    idata = to_inference_data((model, guide), x, num_samples=400, seed=0)
    grid = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    prior = torch.tensor([0.7 * 0.8, 0.7 * 0.2, 0.3 * 0.2, 0.3 * 0.8], dtype=torch.float64)
    log_joint = prior.log()[None] + dist.Normal(grid[:, 0] + 2 * grid[:, 1], 0.5).log_prob(x[:, None])
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0, 0],
                               torch.logsumexp(log_joint, 1).numpy(), rtol=1e-10)
    a, b = idata.posterior["a"].values[0], idata.posterior["b"].values[0]
    frequencies = np.stack([((a == ga) & (b == gb)).mean(0) for ga, gb in grid.numpy()], axis=1)
    np.testing.assert_allclose(frequencies, torch.softmax(log_joint, 1).numpy(), atol=0.08)


def test_em_result_is_one_draw_with_the_em_trace():
    data = make_mixture(150, 2, 2, seed=2, covariance_type="full", dtype=torch.float64)
    gmm = GaussianMixtureModel(2, 2, "full").double()
    result = em(gmm, data.x, max_iter=50, seed=0, device="cpu")
    idata = to_inference_data(result, data.x)
    assert idata.posterior[LOCS].shape == (1, 1, 2, 2)
    np.testing.assert_allclose(idata.posterior[LOCS].values[0, 0], gmm.loc.detach().numpy())
    np.testing.assert_allclose(idata.sample_stats["log_likelihood"].values[0], result.log_likelihood)
    ll = idata.log_likelihood["x"].values
    assert ll.shape == (1, 1, 150)
    assert ll.mean() == pytest.approx(result.log_likelihood[-1], rel=1e-8)
    with pytest.raises(ConfigurationError, match="point estimate"):
        loo(idata)


def test_amortized_model_puts_local_latents_in_the_posterior():
    torch.manual_seed(0)
    data = torch.randn(30, 2) * math.sqrt(2.0)
    model = LocalGaussian(dim=2)
    idata = to_inference_data(model, data, num_samples=25)
    assert idata.posterior["z"].dims[:3] == ("chain", "draw", "obs")
    assert idata.posterior["z"].shape == (1, 25, 30, 2)
    assert idata.log_likelihood["x"].shape == (1, 25, 30)


def test_psis_khat_of_exact_and_too_narrow_global_guides(x):
    good = psis_khat(normal_normal_model, x, guide=exact_guide(x), num_samples=1000, seed=0)
    assert good.khat < 0.5 and good.label == "good" and good.khat_per_point is None
    slightly_wide = psis_khat(normal_normal_model, x, guide=exact_guide(x, widen=1.2), num_samples=1000,
                              seed=0)
    assert np.isfinite(slightly_wide.khat) and slightly_wide.khat < 0.5
    narrow = psis_khat(normal_normal_model, x, guide=exact_guide(x, widen=0.1), num_samples=2000, seed=0)
    assert narrow.khat > 0.7 and narrow.label == "bad"
    assert "bad" in narrow.summary() and "0.7" in narrow.summary()


def _set_local_guide(model: LocalGaussian, scale: float) -> LocalGaussian:
    with torch.no_grad():
        model.a.fill_(0.5)
        model.b.zero_()
        model.log_s.fill_(math.log(scale))
    return model


def test_psis_khat_per_data_point_for_an_amortized_guide():
    torch.manual_seed(0)
    data = torch.randn(20, 2) * math.sqrt(2.0)
    exact = psis_khat(_set_local_guide(LocalGaussian(2), math.sqrt(0.5)), data, num_samples=500, seed=0)
    assert exact.khat_per_point.shape == (20,)
    assert np.all(exact.khat_per_point < 0.5)
    assert exact.counts()["good"] == 20
    narrow = psis_khat(_set_local_guide(LocalGaussian(2), math.sqrt(0.5) / 8), data, num_samples=1000,
                       seed=0)
    assert np.median(narrow.khat_per_point) > 0.7
    assert narrow.counts()["bad"] >= 15
    assert "per data point" in narrow.summary()


def test_compare_prefers_the_exact_posterior(x):
    table = compare({"exact": (normal_normal_model, exact_guide(x)),
                     "shifted": (normal_normal_model, exact_guide(x, shift=1.0))}, x, num_samples=300)
    assert table.index[0] == "exact"
    assert table.loc["shifted", "elpd_diff"] > 5


def test_select_components_picks_the_true_k_by_loo_and_by_bic():
    x = make_mixture(300, 3, 2, seed=0, covariance_type="diag").x
    by_bic = select_components(x, (1, 2, 3, 4, 5), criterion="bic", covariance_type="diag")
    assert by_bic.best_k == 3 and min(by_bic.scores.values()) == by_bic.scores[3]
    by_loo = select_components(x, (2, 3, 4), criterion="loo", covariance_type="diag", steps=150,
                               num_samples=100)
    assert by_loo.best_k == 3
    assert by_loo.scores[3] > by_loo.scores[2] + 20  # K=2 merges two clusters: far worse
    assert all(k < 1.0 for k in by_loo.max_khat.values())
    assert "<- best" in by_loo.summary()


# --------------------------------------------------------------------------- bad input


def test_model_without_latent_sites_is_refused():
    def model(data):
        loc = pyro.param("loc", data.new_tensor(0.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=data)

    def guide(data):
        pass

    with pytest.raises(ModelContractError, match="no latent"):
        to_inference_data((model, guide), torch.randn(10))
    with pytest.raises(ModelContractError, match="no latent"):
        psis_khat(model, torch.randn(10), guide=guide)


def test_data_that_does_not_match_the_model_is_refused(x):
    with pytest.raises(DataError, match="features|shape"):
        to_inference_data(LocalGaussian(dim=2), torch.randn(10, 3))

    def model(data):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(data @ w, 1.0), obs=data[:, 0])

    def guide(data):
        pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    with pytest.raises(DataError, match="fitted on"):
        to_inference_data((model, guide), torch.randn(10, 3))


def test_bad_num_samples_wrong_result_and_missing_data(x):
    result = lvm_pyro.fit((normal_normal_model, normal_normal_guide), x, steps=5, progress=False)
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigurationError, match="num_samples"):
            to_inference_data(result, x, num_samples=bad)
        with pytest.raises(ConfigurationError, match="num_samples"):
            psis_khat(result, x, num_samples=bad)
    for wrong in ("result", {"losses": []}, torch.zeros(3)):
        with pytest.raises(ConfigurationError, match="cannot read"):
            to_inference_data(wrong, x)
    with pytest.raises(ConfigurationError, match="pass the data"):
        to_inference_data(result)
    with pytest.raises(ConfigurationError, match="local_latents"):
        to_inference_data(result, x, local_latents="yes")


def _points_model(x):
    """The Normal-Normal model with its data plate named "points" instead of "data"."""
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 2.0))
    with pyro.plate("points", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def test_a_data_plate_of_another_name_is_followed(x):
    guide = exact_guide(x)
    with pytest.raises(ModelContractError, match="data_plate="):
        to_inference_data((_points_model, guide), x, num_samples=10)
    named = to_inference_data((_points_model, guide), x, num_samples=400, seed=0, data_plate="points")
    usual = to_inference_data((normal_normal_model, guide), x, num_samples=400, seed=0)
    assert named.log_likelihood["x"].dims == ("chain", "draw", "obs")
    np.testing.assert_allclose(named.log_likelihood["x"].values, usual.log_likelihood["x"].values,
                               rtol=1e-6)
    # a fit result remembers the plate it was trained with
    result = lvm_pyro.fit((_points_model, normal_normal_guide), x, steps=50, batch_size=20,
                          data_plate="points", progress=False, seed=0)
    assert to_inference_data(result, x, num_samples=5).log_likelihood["x"].shape == (1, 5, 40)
    assert psis_khat(result, x, num_samples=50).khat_per_point is None
