"""Where a wrapper does not apply, or the user's program breaks the contract, a clear lvm_pyro
error naming the fix; and mcmc on the small models, exported and summarized."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conformance_models import DTYPES, build, normal_normal_posterior

import lvm_pyro
from lvm_pyro.errors import LVMError, ModelContractError


def local_model(x):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1): log p(x_i) = log N(x_i; 0, 2)."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide_without_z(x):
    pyro.param("loc", x.new_tensor(0.0))
    with pyro.plate("data", len(x)):
        pass


def guide_misnamed(x):
    with pyro.plate("data", len(x)):
        pyro.sample("zz", dist.Normal(x / 2 + pyro.param("loc", x.new_tensor(0.0)), 0.5**0.5))


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 2.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def global_guide_misnamed(x):
    pyro.sample("m", dist.Normal(pyro.param("loc", x.new_tensor(0.0)), 0.3))


MISMATCHED = {
    "missing_site": (local_model, guide_without_z),
    "misnamed_site": (local_model, guide_misnamed),
    "misnamed_global": (global_model, global_guide_misnamed),
}

WRAPPERS = {
    "fit": lambda pair, x: lvm_pyro.fit(pair, x, steps=1, progress=False, device="cpu", jit=False),
    "elbo": lambda pair, x: lvm_pyro.elbo(pair, x, num_particles=4, device="cpu"),
    "log_likelihood": lambda pair, x: lvm_pyro.log_likelihood(pair, x, num_samples=10, device="cpu"),
    "to_inference_data": lambda pair, x: lvm_pyro.to_inference_data(pair, x, num_samples=4),
    "psis_khat": lambda pair, x: lvm_pyro.psis_khat(pair, x, num_samples=10),
    "gradient_variance": lambda pair, x: lvm_pyro.gradient_variance(pair, x, num_draws=4),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("case", list(MISMATCHED))
def test_a_guide_that_does_not_match_the_model_is_refused(case, wrapper):
    """A guide missing a latent site, or naming it differently, gives no number from any wrapper
    (today elbo/log_likelihood return -2.47 and -0.74 where log p(x) = -1.27): a
    ModelContractError that names the site."""
    x = torch.zeros(4)
    with pytest.raises(ModelContractError, match="z|mu"):
        WRAPPERS[wrapper](MISMATCHED[case], x)


GLOBAL = ["normal_normal", "group_regression", "linreg_lowrank", "pyromodule_regression"]


@pytest.mark.parametrize("name", GLOBAL)
def test_iwae_refuses_global_latents(name):
    """The per-point importance-weighted bound does not apply to global latents: fit says so and
    names the estimator to use, whatever the model's tensor code does with a particle dim."""
    s = build(name, torch.float32)
    with pytest.raises(ModelContractError, match="reparam"):
        lvm_pyro.fit(s.pair, s.data, estimator="iwae", num_particles=4, steps=2, progress=False, device="cpu",
                     jit=False)


@pytest.mark.parametrize("name", ["group_regression", "linreg_lowrank", "pyromodule_regression"])
def test_several_particles_for_a_model_written_for_one(name):
    """Models written as Pyro's regression tutorials write them (``alpha[group]``, ``x @ w``, a
    PyroModule nn.Linear) do not broadcast over a leading particle dim; Pyro's own Trace_ELBO
    runs them with num_particles > 1 (particles in sequence). elbo and fit must give a number
    too, or an lvm_pyro error naming vectorize_particles; not a torch shape error."""
    s = build(name, torch.float32)
    try:
        value = lvm_pyro.elbo(s.pair, s.data, num_particles=8, seed=0, device="cpu")
    except LVMError as exc:
        assert "particle" in str(exc)
    else:
        assert np.isfinite(value)
    try:
        result = lvm_pyro.fit(s.pair, s.data, num_particles=4, steps=3, progress=False, device="cpu",
                              jit=False)
    except LVMError as exc:
        assert "particle" in str(exc)
    else:
        assert np.isfinite(result.losses).all()


@pytest.mark.parametrize("name", ["normal_normal", "factor_analysis", "vae_example"])
def test_em_refuses_models_without_discrete_latents(name):
    s = build(name, torch.float32)
    with pytest.raises(ModelContractError, match="fit"):
        lvm_pyro.em(s.pair, s.data, max_iter=2, device="cpu")


@pytest.mark.parametrize("wrapper", ["log_likelihood", "to_inference_data", "psis_khat", "fit"])
def test_a_data_plate_with_another_name_is_named_in_the_error(wrapper):
    """The HMM's plate is "sequences": without data_plate= the error says which argument to pass
    (fit: with minibatches, whose scaling needs the plate)."""
    s = build("hmm_categorical", torch.float32)
    calls = {
        "log_likelihood": lambda: lvm_pyro.log_likelihood(s.pair, s.data, num_samples=2, device="cpu"),
        "to_inference_data": lambda: lvm_pyro.to_inference_data(s.pair, s.data, num_samples=2),
        "psis_khat": lambda: lvm_pyro.psis_khat(s.pair, s.data, num_samples=10),
        # minibatches: the plate must be known to scale it by N / B
        "fit": lambda: lvm_pyro.fit(s.pair, s.data, estimator="enum", steps=1, batch_size=2, progress=False,
                                    device="cpu", jit=False),
    }
    with pytest.raises(LVMError, match="data_plate"):
        calls[wrapper]()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mcmc_on_the_conjugate_model(dtype):
    """NUTS on normal-normal: the posterior mean and sd match the closed form (loosely), and the
    export has every group, az.summary and az.loo work."""
    s = build("normal_normal", dtype)
    result = lvm_pyro.mcmc(s.pair[0], s.data, num_samples=60, warmup_steps=30, num_chains=1, seed=0,
                           max_tree_depth=4)
    assert result.samples["mu"].dtype == dtype
    mu = result.samples["mu"].double()
    loc, scale = normal_normal_posterior(s.data.double())
    assert float(mu.mean()) == pytest.approx(float(loc), abs=3 * float(scale) / 5)
    assert float(mu.std()) == pytest.approx(float(scale), rel=0.35)
    idata = lvm_pyro.to_inference_data(result)
    assert {"posterior", "log_likelihood", "observed_data", "posterior_predictive"} <= set(idata.groups())
    draws = torch.as_tensor(np.asarray(idata.posterior["mu"].values[0], dtype=np.float64))
    exact = torch.distributions.Normal(draws[:, None], 1.0).log_prob(s.data.double()[None]).numpy()
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], exact, rtol=0,
                               atol=1e-5 if dtype == torch.float64 else 1e-4)
    assert np.isfinite(az.summary(idata, kind="stats")["mean"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert np.isfinite(az.loo(idata).elpd_loo)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mcmc_on_the_pyromodule_regression(dtype):
    """NUTS on a PyroModule (PyroSample priors, PyroParam noise) with Pyro-style (x, y) data and an
    observed site named "obs": it runs in the data's dtype and exports every group."""
    s = build("pyromodule_regression", dtype)
    result = lvm_pyro.mcmc(s.pair[0], s.data, num_samples=20, warmup_steps=20, num_chains=1, seed=0,
                           max_tree_depth=4)
    idata = lvm_pyro.to_inference_data(result)
    assert {"posterior", "log_likelihood", "observed_data", "posterior_predictive"} <= set(idata.groups())
    assert idata.log_likelihood["obs"].shape == (1, 20, s.n)
    assert np.isfinite(az.summary(idata, kind="stats")["mean"]).all()
    assert np.isfinite(lvm_pyro.loo(idata).elpd_loo)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mcmc_on_the_gmm_tutorial_sums_out_the_assignment(dtype):
    """NUTS on Pyro's GMM tutorial model (assignment enumerated): each draw's pointwise
    log-likelihood is log sum_k w_k N(x_i; loc_k, scale) at that draw."""
    s = build("gmm_tutorial", dtype)
    result = lvm_pyro.mcmc(s.pair[0], s.data, num_samples=10, warmup_steps=10, num_chains=1, seed=0,
                           max_plate_nesting=1, max_tree_depth=3)
    idata = lvm_pyro.to_inference_data(result)
    assert "log_likelihood" in idata.groups()
    post = {k: torch.as_tensor(np.asarray(idata.posterior[k].values[0], dtype=np.float64))
            for k in ("weights", "scale", "locs")}
    x = s.data.double()[None, :, None]
    components = dist.Normal(post["locs"][:, None], post["scale"][:, None, None])
    terms = post["weights"].log()[:, None] + components.log_prob(x)
    exact = terms.logsumexp(-1).numpy()
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[0], exact, rtol=0,
                               atol=1e-5 if dtype == torch.float64 else 2e-4)


def test_mcmc_refuses_a_model_with_nothing_to_sample():
    """The HMM's parameters are pyro.params and its latents enumerated: NUTS has nothing to draw."""
    s = build("hmm_categorical", torch.float32)
    with pytest.raises(LVMError):
        lvm_pyro.mcmc(s.pair[0], s.data, num_samples=5, num_chains=1, max_plate_nesting=2)
