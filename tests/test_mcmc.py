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
