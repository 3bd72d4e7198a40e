"""Diagnostics on users' Pyro models: to_inference_data (every group, whatever the observed site
is named; the pointwise log-likelihood is the marginal log p(x_i | theta) per data-plate element),
az.summary, az.loo and lvm_pyro.loo, psis_khat, gradient_variance; in float32 and float64."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from conformance_models import CASES, DTYPES, atol, build, names, plate_kw

import lvm_pyro
from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.errors import LVMError

DRAWS = 6
ENUMERATED = names("discrete")
SAMPLED = names("sampled")
#: Both ArviZ APIs (0: arviz 0.2x InferenceData, 1: arviz-base/-stats DataTree), each where installed.
ARVIZ_APIS = [
    pytest.param(v, id=f"arviz{v}", marks=pytest.mark.skipif(v not in adapter.available_apis(),
                                                             reason=f"ArviZ API {v} not installed"))
    for v in (0, 1)
]


def pointwise(idata, n: int) -> np.ndarray:
    """The exported log p(x_i | draw) of each data-plate element, summed over observed sites
    (and any dim inside the element): (chain, draw, n)."""
    total = 0.0
    for var in adapter.group(idata, "log_likelihood").data_vars.values():
        arr = np.asarray(var.values, dtype=np.float64)
        assert arr.shape[2] == n, f"log_likelihood {var.name!r} has dims {var.dims}, not (chain, draw, data)"
        total = total + arr.reshape(arr.shape[:3] + (-1,)).sum(-1)
    return np.asarray(total)


def export(s, pair=None, draws: int = DRAWS, arviz_api: int | None = None):
    return lvm_pyro.to_inference_data(pair or s.pair, s.data, num_samples=draws, seed=0, arviz_api=arviz_api,
                                      **plate_kw(s))


@pytest.mark.parametrize("arviz_api", ARVIZ_APIS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_inference_data_has_every_group(name, dtype, arviz_api):
    """log_likelihood, observed_data and posterior_predictive hold every observed site, under its
    own name ("obs", "y", "data", "x", "a"/"b", "y_0".."y_6"), with the data-plate dim."""
    s = build(name, dtype)
    idata = export(s, arviz_api=arviz_api)
    groups = set(adapter.group_names(idata))
    assert {"log_likelihood", "observed_data", "posterior_predictive"} <= groups, sorted(groups)
    for site in s.observed:
        assert site in adapter.group(idata, "observed_data").data_vars
        assert site in adapter.group(idata, "posterior_predictive").data_vars
    ll = pointwise(idata, s.n)
    assert ll.shape == (1, DRAWS, s.n) and np.isfinite(ll).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ENUMERATED)
def test_pointwise_log_likelihood_sums_out_enumerated_latents(name, dtype):
    """Enumerated z (per point, or a Markov chain per sequence) and point-estimated globals: every
    draw's exported log p(x_i | theta) equals enumeration / the forward algorithm."""
    s = build(name, dtype)
    ll = pointwise(export(s), s.n)
    exact = s.exact_point().numpy()
    np.testing.assert_allclose(ll[0], np.broadcast_to(exact, ll[0].shape), rtol=0,
                               atol=10 * atol(dtype, float(np.abs(exact).max())))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", names("exact_pair"))
def test_pointwise_log_likelihood_integrates_local_latents(name, dtype):
    """Per-point latents z_i are integrated out: log p(x_i | theta), not log p(x_i | z_i, theta).
    With the exact posterior as the guide every importance weight is p(x_i), so each draw's value
    is exact; for global latents it is log p(x_i | theta_s) at the draw theta_s."""
    s = build(name, dtype)
    idata = export(s, s.exact_pair)
    ll = pointwise(idata, s.n)
    if s.exact_point is not None:
        exact = np.broadcast_to(s.exact_point().numpy(), ll[0].shape)
    else:  # normal-normal: x_i | mu_s ~ N(mu_s, 1)
        mu = torch.as_tensor(np.asarray(idata.posterior["mu"].values[0], dtype=np.float64))
        exact = torch.distributions.Normal(mu[:, None], 1.0).log_prob(s.data.double()[None]).numpy()
    np.testing.assert_allclose(ll[0], exact, rtol=0, atol=20 * atol(dtype, 10.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pointwise_log_likelihood_of_the_vae_is_marginal(dtype):
    """Pyro's VAE example, untrained, encoder as proposal: the exported log p(x_i) is close to the
    quadrature value (conditioning on z_i instead would be off by about KL(q || p) per point)."""
    s = build("vae_example", dtype)
    ll = pointwise(export(s), s.n).mean(axis=(0, 1))
    exact = s.exact_point().numpy()
    assert abs(ll.mean() - exact.mean()) < 0.1
    assert np.abs(ll - exact).max() < 0.5


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pointwise_log_likelihood_of_a_grouped_regression(dtype):
    """Global per-group latents (AutoNormal): log_likelihood[s, i] = log N(y_i; alpha_s[g_i] +
    beta_s u_i, 0.5^2) at each posterior draw."""
    from conformance_models import REG_NOISE

    s = build("group_regression", dtype)
    idata = export(s)
    y, u, group = s.data
    alpha = torch.as_tensor(np.asarray(idata.posterior["alpha"].values[0], dtype=np.float64))  # (S, G)
    beta = torch.as_tensor(np.asarray(idata.posterior["beta"].values[0], dtype=np.float64))  # (S,)
    mean = alpha[:, group] + beta[:, None] * u.double()
    exact = torch.distributions.Normal(mean, REG_NOISE).log_prob(y.double()).numpy()
    np.testing.assert_allclose(pointwise(idata, s.n)[0], exact, rtol=0, atol=20 * atol(dtype, 10.0))


@pytest.mark.parametrize("arviz_api", ARVIZ_APIS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SAMPLED)
def test_summary_and_loo(name, dtype, arviz_api):
    """az.summary on the posterior; lvm_pyro.loo on the export (all observed sites of a data
    point together); az.loo directly where there is one observed site: finite, no exception."""
    s = build(name, dtype)
    idata = export(s, draws=12 if arviz_api == 0 else 25, arviz_api=arviz_api)  # arviz-stats: >= 25 draws
    table = adapter.summary(idata, kind="stats")
    assert len(table) > 0 and np.isfinite(table["mean"].to_numpy()).all()
    result = lvm_pyro.loo(idata)
    assert np.isfinite(result.elpd_loo)
    if len(s.observed) == 1 and arviz_api == 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            direct = az.loo(idata)
        assert np.isfinite(direct.elpd_loo)
        assert direct.elpd_loo == pytest.approx(result.elpd_loo, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [n for n in names("exact_pair") if build(n, torch.float32).exact_point])
def test_loo_of_a_local_latent_model_is_its_log_likelihood(name, dtype):
    """No global latent: every draw shares theta, so elpd_loo = sum_i log p(x_i | theta)."""
    s = build(name, dtype)
    idata = export(s, s.exact_pair, draws=12)
    result = lvm_pyro.loo(idata)
    assert float(result.elpd_loo) == pytest.approx(float(s.exact_point().sum()), abs=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["bernoulli_mixture", "hmm_categorical", "gmm_tutorial"])
def test_em_export_holds_the_fit_and_refuses_loo(name, dtype):
    """An EM result exports its fitted global parameters (pyro.params or point-estimated sites) and
    the pointwise log-likelihood at them; LOO from one point estimate is refused by lvm_pyro
    with its own error, not an IndexError or a NaN."""
    s = build(name, dtype)
    model = s.pair if s.sampled_latents else s.pair[0]
    result = lvm_pyro.em(model, s.data, max_iter=2, tol=0, m_step_steps=10, device="cpu", seed=0,
                         **plate_kw(s))
    idata = lvm_pyro.to_inference_data(result, s.data, **plate_kw(s))
    fitted = {"bernoulli_mixture": ("weights", "probs"), "hmm_categorical": ("init", "trans", "emit"),
              "gmm_tutorial": ("weights", "scale", "locs")}[name]
    exported = {v for g in idata.groups() for v in idata[g].data_vars}
    assert set(fitted) <= exported, sorted(exported)
    exact = s.exact_point().numpy()
    np.testing.assert_allclose(pointwise(idata, s.n)[0, 0], exact, rtol=0,
                               atol=10 * atol(dtype, float(np.abs(exact).max())))
    with pytest.raises(LVMError):
        lvm_pyro.loo(idata)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_psis_khat(name, dtype):
    """Finite k-hats for a guide that samples latents (joint, and per point for local latents);
    for a model whose guide samples nothing there is nothing to diagnose: an lvm_pyro error, or
    finite values, never an unexplained -inf or NaN."""
    s = build(name, dtype)
    point_only = name == "gmm_tutorial"  # AutoDelta: its "samples" are point masses, every weight equal
    try:
        result = lvm_pyro.psis_khat(s.pair, s.data, num_samples=40, seed=0, **plate_kw(s))
    except LVMError as exc:
        assert not s.sampled_latents or point_only, f"psis_khat refused a sampled guide: {exc}"
        assert "samples nothing" in str(exc)
        return
    assert not point_only, "a guide of point masses has nothing to diagnose"
    # -inf only where the largest weights are tied (a masked point, a discrete guide), and said so
    assert np.isfinite(result.khat) or (result.khat == -np.inf and "tied" in result.summary())
    if result.khat_per_point is not None:
        ks = result.khat_per_point
        assert (np.isfinite(ks) | (ks == -np.inf)).all()
    assert result.label in ("good", "ok", "bad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [n for n in SAMPLED if n not in ENUMERATED])
def test_gradient_variance(name, dtype):
    """Finite, positive gradient variances for reparam; score-function gradients are noisier
    for a reparameterizable continuous guide."""
    s = build(name, dtype)
    rep = lvm_pyro.gradient_variance(s.pair, s.data, objective="reparam", num_draws=8, seed=0)
    assert np.isfinite(rep.total) and rep.total > 0
    assert all(np.isfinite(v) for v in rep.per_parameter.values())
    if name in ("normal_normal", "factor_analysis", "vae_example"):
        pyro.set_rng_seed(0)
        score = lvm_pyro.gradient_variance(s.pair, s.data, objective="score", num_draws=8, seed=0)
        assert score.total > rep.total
