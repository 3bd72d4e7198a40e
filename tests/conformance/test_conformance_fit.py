"""fit on users' Pyro models with every estimator that applies, in float32 and float64: it runs,
the losses are finite, and the ELBO (measured independently with Pyro's own ELBO, common random
numbers before and after) improves; user modules follow the data's dtype."""

from __future__ import annotations

import math

import arviz as az
import pyro
import pytest
import torch
from conformance_models import CASES, DTYPES, build, plate_kw
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import lvm_pyro

FIT_CASES = [(name, est) for name, make in CASES.items() for est in make(torch.float32).estimators]


def _module(s):
    return s.extra.get("vae") or s.extra.get("module")


@torch.no_grad()
def reference_elbo(s, particles: int = 12, seed: int = 123) -> float:
    """ELBO per data point by Pyro's Trace_ELBO (TraceEnum_ELBO for enumerated models), sequential
    particles, a fixed seed. A user module stays in its own dtype: the data is cast to it."""
    args = s.data if isinstance(s.data, tuple) else (s.data,)
    module = _module(s)
    if module is not None:
        ref = next(module.parameters())
        args = tuple(a.to(ref.dtype) if a.is_floating_point() else a for a in args)
    model, guide = s.pair
    enum = "enum" in s.estimators
    objective = TraceEnum_ELBO(max_plate_nesting=2) if enum else Trace_ELBO(num_particles=particles)
    state = torch.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        return -objective.loss(model, guide, *args) / s.n
    finally:
        torch.set_rng_state(state)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,estimator", FIT_CASES, ids=[f"{n}-{e}" for n, e in FIT_CASES])
def test_fit_improves_the_elbo(name, estimator, dtype):
    s = build(name, dtype)
    before = reference_elbo(s)
    result = lvm_pyro.fit(s.pair, s.data, estimator=estimator, steps=12, lr=0.05, seed=0, progress=False,
                          device="cpu", jit=False, **plate_kw(s))
    assert len(result.losses) == 12 and all(math.isfinite(v) for v in result.losses)
    module = _module(s)
    if module is not None:
        assert {p.dtype for p in module.parameters()} == {dtype}, "the user's module follows the data's dtype"
    after = reference_elbo(s)
    assert after > before, f"ELBO per point {before:.4f} -> {after:.4f}"
    if s.exact_point is not None and not s.sampled_latents:  # the ELBO is the exact log-likelihood
        assert after == pytest.approx(float(s.exact_point().mean()), abs=1e-3 * (1 + abs(after)))
    if estimator == "enum":  # at the trained parameters too, log_likelihood is enumeration exactly
        ll = lvm_pyro.log_likelihood(s.pair, s.data, num_samples=2, device="cpu", seed=0, **plate_kw(s))
        exact = s.exact_point()
        tol = 10 * (1e-6 if dtype == torch.float64 else 2e-4 * (1 + float(exact.abs().max())))
        torch.testing.assert_close(ll.per_example.double(), exact, rtol=0, atol=tol)


EXPORTED = ["gmm_tutorial", "hmm_gaussian", "vae_example", "group_regression", "two_observed"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", EXPORTED)
def test_export_of_a_fit_result(name, dtype):
    """to_inference_data of what fit returns (its data plate remembered, not passed again): every
    group with every observed site, a pointwise log-likelihood per data-plate element, az.summary."""
    s = build(name, dtype)
    estimator = s.estimators[0]
    result = lvm_pyro.fit(s.pair, s.data, estimator=estimator, steps=5, lr=0.05, seed=0, progress=False,
                          device="cpu", jit=False, **plate_kw(s))
    idata = lvm_pyro.to_inference_data(result, s.data, num_samples=5, seed=0)
    assert {"posterior", "log_likelihood", "observed_data", "posterior_predictive"} <= set(idata.groups())
    for site in s.observed:
        assert site in idata.observed_data.data_vars and site in idata.posterior_predictive.data_vars
    for var in idata.log_likelihood.data_vars.values():
        assert var.shape[:3] == (1, 5, s.n)
    assert len(az.summary(idata, kind="stats")) > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fit_with_default_settings_on_the_vae_example(dtype):
    """Pyro's VAE example as the pair of bound methods, fit with the defaults (the compiled path
    included): float64 data trains a float32-built module without a dtype error, and the result's
    ELBO is below the exact log-likelihood (quadrature)."""
    s = build("vae_example", dtype)
    vae = s.extra["vae"]
    result = lvm_pyro.fit(s.pair, s.data, epochs=10, lr=0.02, seed=0, progress=False, device="cpu")
    assert all(math.isfinite(v) for v in result.losses)
    assert vae.decoder.fc1.weight.dtype == dtype
    exact = float(s.exact_point().mean())
    value = lvm_pyro.elbo(s.pair, s.data, num_particles=200, seed=0, device="cpu")
    assert value <= exact + 0.02
    ll = lvm_pyro.log_likelihood(s.pair, s.data, num_samples=500, seed=0, device="cpu")
    assert value - 0.02 <= ll.mean <= exact + 0.02


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fit_reaches_the_conjugate_posterior(dtype):
    """Normal-normal: a Gaussian guide trained by reparam reaches the exact posterior loosely, and
    the ELBO then nears log p(x) / N."""
    from conformance_models import normal_normal_posterior

    s = build("normal_normal", dtype)
    lvm_pyro.fit(s.pair, s.data, steps=150, lr=0.1, num_particles=4, seed=0, progress=False, device="cpu",
                 jit=False)
    loc, scale = normal_normal_posterior(s.data.double())
    assert float(pyro.param("loc")) == pytest.approx(float(loc), abs=0.1)
    assert float(pyro.param("scale")) == pytest.approx(float(scale), abs=0.1)
    assert pyro.param("loc").dtype == dtype
    assert reference_elbo(s, particles=200) == pytest.approx(s.exact_total() / s.n, abs=0.02)
