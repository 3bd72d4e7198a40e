"""Bad inputs to diagnostics (to_inference_data, psis_khat, loo, compare, plot_ppc,
gradient_variance, select_components, the plots) and to ``mcmc``."""

from __future__ import annotations

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from harness import Case, run_case

from lvm_pyro import VAE, GaussianMixtureModel, em, errors, fit, mcmc
from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.arviz import compare, loo, plot_ppc, psis_khat, to_inference_data
from lvm_pyro.diagnostics.gradients import gradient_variance
from lvm_pyro.diagnostics.selection import select_components

CE, DE, DTE, MCE = (
    errors.ConfigurationError,
    errors.DataError,
    errors.DataTypeError,
    errors.ModelContractError,
)
torch.manual_seed(0)
X = torch.randn(12) + 1.0
X2 = torch.cat([torch.randn(10, 2) - 3, torch.randn(10, 2) + 3])


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(x):
    loc = pyro.param("e_mu_loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 0.3))


def empty_guide(x):
    pass


def renamed_guide(x):
    pyro.sample("nu", dist.Normal(0.0, 1.0))


def discrete_model(x):
    c = pyro.sample("c", dist.Bernoulli(0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(c, 1.0), obs=x)


def no_latent_model(x):
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def positive_model(x):
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(0.0, s), obs=x)


def cond_model(x, scale):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, scale), obs=x)


@functools.cache
def mcmc_result():
    return mcmc(model, X, num_samples=3, warmup_steps=3, num_chains=1)


def with_nan(x: torch.Tensor = X) -> torch.Tensor:
    x = x.clone()
    x.view(-1)[3] = float("nan")
    return x


@functools.cache
def svi_result():
    return fit(model, X, guide=guide, steps=2, progress=False, jit=False, device="cpu", seed=0)


@functools.cache
def em_result():
    return em(GaussianMixtureModel(2, 2, "diag"), X2, max_iter=5, seed=0, device="cpu")


@functools.cache
def idata():
    return to_inference_data((model, guide), X, num_samples=20, seed=0)


@functools.cache
def idata_without_pp():
    return to_inference_data((model, guide), X, num_samples=20, seed=0, posterior_predictive=False)


def mc(**kwargs):
    return lambda: mcmc(
        **{"model": model, "data": X, "num_samples": 5, "warmup_steps": 5, "num_chains": 1, **kwargs}
    )


def gv(**kwargs):
    return lambda: gradient_variance(**{"model": model, "data": X, "guide": guide, "num_draws": 3, **kwargs})


def sel(**kwargs):
    return lambda: select_components(**{"data": X2, "ks": (1, 2), "criterion": "bic", **kwargs})


CASES = [
    # --- to_inference_data --------------------------------------------------------------------
    Case("idata-result-string", lambda: to_inference_data("fit", X), CE, r"fit|result|model"),
    Case("idata-result-none", lambda: to_inference_data(None, X), CE, r"fit|result|model"),
    Case(
        "idata-num-samples-0", lambda: to_inference_data((model, guide), X, num_samples=0), CE, r"num_samples"
    ),
    Case(
        "idata-num-samples-float",
        lambda: to_inference_data((model, guide), X, num_samples=2.5),
        CE,
        r"num_samples",
    ),
    Case(
        "idata-num-samples-bool",
        lambda: to_inference_data((model, guide), X, num_samples=True),
        CE,
        r"num_samples",
    ),
    Case("idata-nan-data", lambda: to_inference_data((model, guide), with_nan(), num_samples=5), DE, r"nan"),
    Case(
        "idata-strings",
        lambda: to_inference_data((model, guide), np.array(["a"] * 4), num_samples=5),
        DTE,
        r"numeric|number|str",
    ),
    Case("idata-no-data", lambda: to_inference_data((model, guide), num_samples=5), CE, r"data"),
    Case(
        "idata-local-latents-word",
        lambda: to_inference_data((model, guide), X, num_samples=5, local_latents="some"),
        CE,
        r"local_latents",
    ),
    Case(
        "idata-unknown-plate",
        lambda: to_inference_data((model, guide), X, num_samples=5, data_plate="rows"),
        MCE,
        r"rows",
    ),
    Case(
        "idata-guide-missing-site",
        lambda: to_inference_data((model, empty_guide), X, num_samples=5),
        MCE,
        r"mu",
    ),
    Case(
        "idata-guide-renamed-site",
        lambda: to_inference_data((model, renamed_guide), X, num_samples=5),
        MCE,
        r"mu|nu",
    ),
    Case(
        "idata-fit-result-other-features",
        lambda: to_inference_data(em_result(), torch.randn(6, 3)),
        DE,
        r"shape|feature|\(2,\)",
    ),
    Case(
        "idata-seed-string",
        lambda: to_inference_data((model, guide), X, num_samples=5, seed="s"),
        CE,
        r"seed",
    ),
    # --- psis_khat ----------------------------------------------------------------------------
    Case("khat-num-samples-0", lambda: psis_khat(model, X, guide=guide, num_samples=0), CE, r"num_samples"),
    Case("khat-num-samples-1", lambda: psis_khat(model, X, guide=guide, num_samples=1), CE, r"num_samples"),
    Case("khat-nan-data", lambda: psis_khat(model, with_nan(), guide=guide, num_samples=20), DE, r"nan"),
    Case("khat-no-guide", lambda: psis_khat(model, X, num_samples=20), CE, r"guide"),
    Case(
        "khat-guide-missing-site", lambda: psis_khat(model, X, guide=empty_guide, num_samples=20), MCE, r"mu"
    ),
    Case("khat-model-string", lambda: psis_khat("model", X, num_samples=20), CE, r"model|guide"),
    # --- loo / compare ------------------------------------------------------------------------
    Case("loo-em-single-draw", lambda: loo(em_result(), X2), CE, r"draw|point estimate"),
    Case(
        "loo-idata-without-log-likelihood",
        lambda: loo(_without_log_likelihood()),
        CE,
        r"log_likelihood|log-likelihood",
    ),
    Case("loo-number", lambda: loo(42), CE, r"result|InferenceData"),
    Case("compare-empty", lambda: compare({}), CE, r"dict"),
    Case("compare-list", lambda: compare([idata()]), CE, r"dict"),
    Case("compare-unknown-ic", lambda: compare({"a": idata(), "b": idata()}, ic="aic"), CE, r"ic|loo|waic"),
    Case(
        "compare-em-single-draw",
        lambda: compare({"a": em_result(), "b": em_result()}, X2),
        CE,
        r"draw|point estimate",
    ),
    # --- plot_ppc -----------------------------------------------------------------------------
    Case("ppc-no-group", lambda: plot_ppc(idata_without_pp()), CE, r"posterior_predictive"),
    Case("ppc-not-idata", lambda: plot_ppc({"x": 1}), CE, r"InferenceData"),
    Case("ppc-unknown-kind", lambda: plot_ppc(idata(), kind="histogram"), CE, r"kind"),
    Case("ppc-unknown-var", lambda: plot_ppc(idata(), var_names=["y"]), CE, r"'y'|var_names"),
    Case("ppc-num-pp-samples-0", lambda: plot_ppc(idata(), num_pp_samples=0), CE, r"num_pp_samples"),
    # --- gradient_variance ----------------------------------------------------------------------
    Case("gv-unknown-objective", gv(objective="enum"), CE, r"unknown objective .enum."),
    Case("gv-num-draws-1", gv(num_draws=1), CE, r"num_draws"),
    Case("gv-num-draws-bool", gv(num_draws=True), CE, r"num_draws"),
    Case("gv-num-particles-0", gv(num_particles=0), CE, r"num_particles"),
    Case("gv-warmup-negative", gv(warmup_draws=-1), CE, r"warmup_draws"),
    Case("gv-unknown-baseline", gv(estimator="score", score_baseline="mean"), CE, r"score_baseline"),
    Case("gv-nan-data", gv(data=with_nan()), DE, r"nan"),
    Case("gv-empty-data", gv(data=X[:0]), DE, r"empty|rows|at least"),
    Case("gv-guide-without-latents", gv(guide=empty_guide), MCE, r"latent"),
    Case(
        "gv-fit-result-and-guide",
        lambda: gradient_variance(svi_result(), X, guide=guide, num_draws=3),
        CE,
        r"guide",
    ),
    Case(
        "gv-vae-wrong-features",
        lambda: gradient_variance(VAE((6,), latent_dim=2, hidden=(4,)), torch.ones(4, 5), num_draws=2),
        DE,
        r"shape|feature",
    ),
    Case(
        "mcmc-vae-nonbinary",
        lambda: mcmc(VAE((6,), latent_dim=2, hidden=(4,)), torch.full((4, 6), 0.5), num_samples=2),
        DE,
        r"binary|0 or 1",
    ),
    Case("gv-seed-string", gv(seed="s"), CE, r"seed"),
    # --- select_components ------------------------------------------------------------------------
    Case("sel-empty-ks", sel(ks=()), CE, r"ks"),
    Case("sel-zero-k", sel(ks=(0, 1)), CE, r"ks"),
    Case("sel-bool-k", sel(ks=(True, 2)), CE, r"ks"),
    Case("sel-repeated-k", sel(ks=(2, 2)), CE, r"repeated"),
    Case("sel-k-int", sel(ks=3), CE, r"ks"),
    Case("sel-more-components-than-points", sel(data=X2[:3], ks=(1, 4)), DE, r"data points|more"),
    Case("sel-unknown-criterion", sel(criterion="aic"), CE, r"criterion"),
    Case("sel-unknown-rule", sel(rule="two_se"), CE, r"rule"),
    Case("sel-unknown-covariance", sel(covariance_type="diagonal"), CE, r"covariance_type"),
    Case("sel-nan-data", sel(data=with_nan(X2)), DE, r"nan"),
    Case("sel-1d-data", sel(data=X), DE, r"shape|reshape"),
    Case("sel-n-init-0", sel(n_init=0), CE, r"n_init"),
    Case("sel-steps-0", sel(criterion="loo", steps=0), CE, r"steps"),
    Case("sel-lr-negative", sel(criterion="loo", lr=-0.1), CE, r"lr"),
    Case("sel-num-samples-1", sel(criterion="loo", num_samples=1), CE, r"num_samples"),
    Case("sel-seed-string", sel(seed="s"), CE, r"seed"),
    Case("sel-prior-wrong-type", sel(criterion="loo", prior={"mean_scale": 1.0}), CE, r"prior"),
    # --- plots ----------------------------------------------------------------------------------
    Case("plot-loss-empty", lambda: plots.plot_loss(train=[]), DE, r"non-empty|empty"),
    Case("plot-loss-smooth-0", lambda: plots.plot_loss(train=[1.0, 2.0], smooth=0), CE, r"smooth"),
    Case("plot-loss-strings", lambda: plots.plot_loss(train=["a", "b"]), DTE, r"numeric|number"),
    Case("plot-loss-not-a-result", lambda: plots.plot_loss("result"), CE, r"result|train"),
    Case("plot-mixture-1d-points", lambda: plots.plot_mixture(np.zeros(5)), DE, r"2-D|shape|\(N, 2\)"),
    Case("plot-mixture-nothing", lambda: plots.plot_mixture(np.zeros((5, 2))), CE, r"means|fitted"),
    Case(
        "plot-mixture-responsibilities-shape",
        lambda: plots.plot_mixture(
            np.zeros((5, 2)), np.zeros((2, 2)), np.ones((2, 2)), responsibilities=np.ones((4, 2))
        ),
        DE,
        r"responsibilities",
    ),
    Case(
        "ellipse-negative-n-std",
        lambda: plots.covariance_ellipse(np.zeros(2), np.eye(2), n_std=-1.0),
        CE,
        r"n_std",
    ),
    Case(
        "ellipse-not-psd",
        lambda: plots.covariance_ellipse(np.zeros(2), -np.eye(2)),
        DE,
        r"positive|covariance",
    ),
    Case(
        "ellipse-wrong-shape",
        lambda: plots.covariance_ellipse(np.zeros(3), np.eye(3)),
        DE,
        r"2-D|2 x 2|shape",
    ),
    Case(
        "plot-samples-wrong-image-shape",
        lambda: plots.plot_samples(np.zeros((4, 10)), (3, 3)),
        DE,
        r"image_shape|values",
    ),
    Case("plot-samples-1d", lambda: plots.plot_samples(np.zeros(10)), DE, r"shape"),
    Case("plot-samples-ncols-0", lambda: plots.plot_samples(np.zeros((4, 2, 2)), ncols=0), CE, r"ncols"),
    Case(
        "plot-samples-empty", lambda: plots.plot_samples(np.zeros((0, 2, 2))), DE, r"empty|no images|at least"
    ),
    Case("plot-samples-nan", lambda: plots.plot_samples(np.full((2, 2, 2), np.nan)), DE, r"nan"),
    Case(
        "plot-reconstructions-mismatch",
        lambda: plots.plot_reconstructions(np.zeros((4, 2, 2)), np.zeros((3, 2, 2))),
        DE,
        r"differ",
    ),
    Case(
        "plot-reconstructions-n-0",
        lambda: plots.plot_reconstructions(np.zeros((4, 2, 2)), np.zeros((4, 2, 2)), n=0),
        CE,
        r"\bn\b",
    ),
    Case("traversal-latent-dim-0", lambda: plots.plot_latent_traversal(lambda z: z, 0), CE, r"latent_dim"),
    Case(
        "traversal-dims-out-of-range",
        lambda: plots.plot_latent_traversal(lambda z: z, 2, dims=[5]),
        CE,
        r"dims",
    ),
    Case(
        "traversal-z0-wrong-size",
        lambda: plots.plot_latent_traversal(lambda z: z, 2, z0=np.zeros(3)),
        DE,
        r"z0",
    ),
    Case("traversal-decoder-not-callable", lambda: plots.plot_latent_traversal("decoder", 2), CE, r"decoder"),
    Case("plot-latent-1d", lambda: plots.plot_latent(np.zeros(5)), DE, r"latent codes|shape"),
    Case(
        "plot-latent-labels-mismatch",
        lambda: plots.plot_latent(np.zeros((5, 2)), labels=[0, 1]),
        DE,
        r"labels",
    ),
    Case(
        "plot-latent-max-points-0",
        lambda: plots.plot_latent(np.zeros((5, 2)), max_points=0),
        CE,
        r"max_points",
    ),
    Case("plot-khat-strings", lambda: plots.plot_khat(["a", "b"]), DTE, r"numeric|number"),
    Case("plot-khat-2d", lambda: plots.plot_khat(np.zeros((2, 2))), DE, r"khat|shape|1-D"),
    Case(
        "plot-mixture-weights-wrong-count",
        lambda: plots.plot_mixture(np.zeros((5, 2)), np.zeros((2, 2)), np.ones((2, 2)), weights=[1.0]),
        DE,
        r"weights",
    ),
    Case(
        "plot-mixture-means-3-features",
        lambda: plots.plot_mixture(np.zeros((5, 2)), np.zeros((2, 3)), np.ones((2, 3))),
        DE,
        r"means",
    ),
    Case(
        "plot-mixture-nan-points",
        lambda: plots.plot_mixture(np.full((5, 2), np.nan), np.zeros((1, 2)), np.ones((1, 2))),
        DE,
        r"nan",
    ),
    Case("sel-strings", sel(data=np.array([["a", "b"]] * 5)), DTE, r"numeric|number|str"),
    Case(
        "plot-completions-mismatch",
        lambda: plots.plot_completions(np.zeros((3, 4)), np.zeros((2, 1, 4)), (4, 2)),
        DE,
        r"completions|tops",
    ),
    # --- mcmc -----------------------------------------------------------------------------------
    Case("mcmc-num-samples-0", mc(num_samples=0), CE, r"num_samples"),
    Case("mcmc-num-samples-bool", mc(num_samples=True), CE, r"num_samples"),
    Case("mcmc-warmup-negative", mc(warmup_steps=-1), CE, r"warmup_steps"),
    Case("mcmc-num-chains-0", mc(num_chains=0), CE, r"num_chains"),
    Case("mcmc-num-chains-float", mc(num_chains=1.5), CE, r"num_chains"),
    Case("mcmc-model-string", mc(model="model"), CE, r"model"),
    Case("mcmc-nan-data", mc(data=with_nan()), DE, r"nan"),
    Case("mcmc-strings", mc(data=np.array(["a", "b"])), DTE, r"numeric|number|str"),
    Case("mcmc-empty-data", mc(data=X[:0]), DE, r"empty|rows|at least"),
    Case("mcmc-discrete-latent", mc(model=discrete_model), MCE, r"enumerate"),
    Case("mcmc-no-latent", mc(model=no_latent_model), MCE, r"no continuous latent"),
    Case("mcmc-unknown-init", mc(init_strategy="zeros"), CE, r"init_strategy"),
    Case("mcmc-init-unknown-site", mc(init_strategy={"sigma": 1.0}), CE, r"sigma"),
    Case("mcmc-init-wrong-shape", mc(init_strategy={"mu": [1.0, 2.0]}), CE, r"shape"),
    Case("mcmc-init-outside-support", mc(model=positive_model, init_strategy={"s": -1.0}), CE, r"support"),
    Case("mcmc-init-string-value", mc(init_strategy={"mu": "one"}), CE, r"number|tensor"),
    Case("mcmc-init-wrong-type", mc(init_strategy=3), CE, r"init_strategy"),
    Case("mcmc-target-accept-above-1", mc(target_accept_prob=1.5), CE, r"target_accept_prob"),
    Case("mcmc-target-accept-0", mc(target_accept_prob=0.0), CE, r"target_accept_prob"),
    Case("mcmc-target-accept-nan", mc(target_accept_prob=float("nan")), CE, r"target_accept_prob"),
    Case("mcmc-max-tree-depth-0", mc(max_tree_depth=0), CE, r"max_tree_depth"),
    Case("mcmc-max-tree-depth-float", mc(max_tree_depth=2.5), CE, r"max_tree_depth"),
    Case("mcmc-seed-string", mc(seed="s"), CE, r"seed"),
    Case("mcmc-seed-negative", mc(seed=-3), CE, r"seed"),
    Case("mcmc-max-plate-nesting-negative", mc(max_plate_nesting=-1), CE, r"max_plate_nesting"),
    Case("mcmc-jit-compile-string", mc(jit_compile="yes"), CE, r"jit_compile"),
    Case(
        "mcmc-condition-rows-differ",
        mc(model=cond_model, data=(X, torch.ones(5))),
        DE,
        r"rows|12|5",
    ),
    Case(
        "mcmc-result-validate-wrong-shape",
        lambda: mcmc_result().validate(torch.zeros(4, 3)),
        DE,
        r"shape",
    ),
    Case(
        "mcmc-loo-single-draw",
        lambda: loo(mcmc(model, X, num_samples=1, warmup_steps=2, num_chains=1)),
        CE,
        r"draw",
    ),
]


def _without_log_likelihood():
    data = idata()
    return type(data)(posterior=data.posterior)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_diagnostics(case: Case) -> None:
    run_case(case)
