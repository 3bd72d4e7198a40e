"""mcmc(): NUTS against the closed form and against SVI, R-hat/ESS through ArviZ, the mixture
with z enumerated, a raw Pyro MCMC run, and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import (
    LocalGaussian,
    normal_normal_guide,
    normal_normal_model,
    normal_normal_posterior,
)
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import init_to_median, init_to_value

import lvm_pyro
from lvm_pyro.diagnostics.arviz import psis_khat, to_inference_data
from lvm_pyro.errors import ConfigurationError, DataError, ModelContractError
from lvm_pyro.infer.mcmc import MCMCResult, mcmc
from lvm_pyro.models.gmm import GLOBAL_SITES, GaussianMixtureModel, GMMPrior

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


@pytest.fixture
def x():
    torch.manual_seed(1)
    return 1.5 + torch.randn(40)


def test_nuts_and_svi_agree_with_the_closed_form(x):
    mean, sd = normal_normal_posterior(x)
    run = mcmc(normal_normal_model, x, num_samples=250, warmup_steps=150, num_chains=2, seed=0)
    assert isinstance(run, MCMCResult)
    assert run.samples["mu"].shape == (2, 250)
    assert run.sample_stats["diverging"].shape == (2, 250) and run.num_divergences == 0
    assert 0.5 < run.sample_stats["acceptance_rate"].mean() <= 1.0
    idata = to_inference_data(run)
    assert idata.log_likelihood["x"].shape == (2, 250, 40)
    assert idata.sample_stats["diverging"].shape == (2, 250)
    summary = az.summary(idata, var_names=["mu"])
    assert summary.loc["mu", "r_hat"] < 1.05
    assert summary.loc["mu", "ess_bulk"] > 100
    assert abs(summary.loc["mu", "mean"] - mean) < 0.05
    assert abs(summary.loc["mu", "sd"] - sd) / sd < 0.2

    result = lvm_pyro.fit((normal_normal_model, normal_normal_guide), x, steps=600, lr=0.05,
                          batch_size=len(x), progress=False, seed=0)
    svi = az.summary(to_inference_data(result, x, num_samples=400, seed=0), var_names=["mu"])
    assert abs(svi.loc["mu", "mean"] - summary.loc["mu", "mean"]) < 0.06
    assert abs(svi.loc["mu", "sd"] - summary.loc["mu", "sd"]) / sd < 0.25


def test_mixture_with_z_enumerated_samples_the_parameters_and_marginal_likelihood():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(12, 1) - 3, torch.randn(12, 1) + 3]).double()
    gmm = GaussianMixtureModel(2, 1, "diag", prior=GMMPrior(2.0, 0.0, 10.0, 3.0)).double()
    run = mcmc(gmm, data, num_samples=15, warmup_steps=15, num_chains=1, seed=0)
    weights, locs, precisions = GLOBAL_SITES
    assert set(run.samples) == {weights, locs, precisions}  # z is summed out, not sampled
    text = repr(run)  # one line: counts and site shapes, never the draws
    assert "\n" not in text and len(text) < 300 and "num_chains=1" in text and "divergences=" in text
    assert f"{locs}(2, 1)" in text
    idata = to_inference_data(run, local_latents=False, posterior_predictive=False)
    ll = idata.log_likelihood["x"].values[0]
    for d in (0, 7, 14):
        w = run.samples[weights][0, d]
        comp = dist.Normal(run.samples[locs][0, d, :, 0], run.samples[precisions][0, d, :, 0].rsqrt())
        expected = torch.logsumexp(w.log() + comp.log_prob(data), dim=1)
        np.testing.assert_allclose(ll[d], expected.numpy(), rtol=1e-8)


def test_a_raw_pyro_mcmc_run_is_accepted(x):
    pyro.set_rng_seed(0)
    run = MCMC(NUTS(normal_normal_model), num_samples=40, warmup_steps=40, disable_progbar=True)
    run.run(x)
    idata = to_inference_data(run)
    assert idata.posterior["mu"].shape == (1, 40)
    assert idata.log_likelihood["x"].shape == (1, 40, 40)
    assert idata.sample_stats["diverging"].dtype == bool


def _two_modes(data):
    """x_i ~ N(mu^2, 0.5^2): with x near 4 the posterior has modes at mu = +2 and -2, split by a
    barrier NUTS never crosses, so the chain stays in the mode it starts in."""
    mu = pyro.sample("mu", dist.Normal(data.new_tensor(1.0), 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(mu**2, 0.5), obs=data)


def test_init_strategy_decides_the_mode_a_chain_starts_in():
    torch.manual_seed(0)
    data = 4.0 + 0.5 * torch.randn(30)
    options = dict(num_samples=20, warmup_steps=20, num_chains=2, seed=0)
    starts = {
        "median": ("median", 1),  # the prior's median, about 1: the positive mode
        "dict": ({"mu": -1.5}, -1),
        "function": (init_to_value(values={"mu": torch.tensor(1.5)}), 1),
        "configured": (init_to_median(num_samples=40), 1),
    }
    for label, (init, sign) in starts.items():
        run = mcmc(_two_modes, data, init_strategy=init, **options)
        draws = run.samples["mu"]
        assert bool((sign * draws > 1.5).all()), (label, draws)
        assert abs(float(draws.mean()) - sign * 2) < 0.1, label
    assert run.config["init_strategy"] == "init_to_median"
    assert mcmc(_two_modes, data, init_strategy={"mu": -1.5}, **options).config["init_strategy"] == (
        "values for ['mu']"
    )


def test_init_strategy_is_validated(x):
    def positive(data):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(0.0, sigma), obs=data)

    with pytest.raises(ConfigurationError, match="unknown init_strategy 'middle'; valid: uniform, median"):
        mcmc(normal_normal_model, x, num_samples=5, init_strategy="middle")
    with pytest.raises(ConfigurationError, match=r"'sigma', which is not a latent site.*\['mu'\]"):
        mcmc(normal_normal_model, x, num_samples=5, init_strategy={"sigma": 1.0})
    with pytest.raises(ConfigurationError, match=r"shape \(3,\), but site 'mu' has shape \(\)"):
        mcmc(normal_normal_model, x, num_samples=5, init_strategy={"mu": torch.zeros(3)})
    with pytest.raises(ConfigurationError, match="outside the support of site 'sigma'"):
        mcmc(positive, x, num_samples=5, init_strategy={"sigma": -1.0})
    with pytest.raises(ConfigurationError, match="must be a name"):
        mcmc(normal_normal_model, x, num_samples=5, init_strategy=3)
    gmm = GaussianMixtureModel(2, 1, "diag", prior=GMMPrior(2.0, 0.0, 10.0, 3.0))
    with pytest.raises(ConfigurationError, match="'z', which is not a latent site"):  # enumerated
        mcmc(gmm, torch.randn(6, 1), num_samples=5, init_strategy={"z": torch.zeros(6)})


def test_bad_input_names_the_fix(x):
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigurationError, match="num_samples"):
            mcmc(normal_normal_model, x, num_samples=bad)
    with pytest.raises(ConfigurationError, match="num_chains"):
        mcmc(normal_normal_model, x, num_samples=5, num_chains=0)

    def no_latent(data):
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=data)

    with pytest.raises(ModelContractError, match="no continuous latent"):
        mcmc(no_latent, x, num_samples=5)

    def discrete(data):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(k, 1.0), obs=data)

    with pytest.raises(ModelContractError, match="enumerate"):
        mcmc(discrete, x, num_samples=5)
    with pytest.raises(DataError, match="features|shape"):
        mcmc(LocalGaussian(dim=2), torch.randn(10, 3), num_samples=5)
    with pytest.raises(ConfigurationError, match="Pyro model"):
        mcmc("model", x, num_samples=5)
    run = mcmc(normal_normal_model, x, num_samples=5, warmup_steps=5, num_chains=1)
    with pytest.raises(ConfigurationError, match="no such guide"):
        psis_khat(run, x)


def test_flat_priors_are_refused_with_the_fix():
    gmm = GaussianMixtureModel(2, 2, "diag").double()  # no prior: flat (improper) on every global
    with pytest.raises(ModelContractError, match=r"flat improper priors.*GMMPrior"):
        lvm_pyro.mcmc(gmm, torch.randn(20, 2, dtype=torch.float64), num_samples=4, warmup_steps=4)
