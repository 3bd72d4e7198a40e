"""Exact values: log_likelihood, elbo and em against closed forms, a hand-written forward
algorithm, brute-force enumeration and quadrature, for users' Pyro models in float32 and float64."""

from __future__ import annotations

import math

import pytest
import torch
from conformance_models import DTYPES, atol, build, names, plate_kw

import lvm_pyro
from lvm_pyro.errors import LVMError

ENUMERATED = names("discrete")  # gmm_tutorial, the HMMs, the Poisson and Bernoulli mixtures
PARAM_ONLY = [n for n in ENUMERATED if not build(n, torch.float32).sampled_latents]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ENUMERATED)
def test_log_likelihood_equals_enumeration(name, dtype):
    """Every latent is enumerated or point-estimated: the importance-sampled log p(x_i | theta)
    has no Monte Carlo error and equals the forward algorithm / brute-force enumeration, per
    data-plate element (per sequence for the HMMs)."""
    s = build(name, dtype)
    ll = lvm_pyro.log_likelihood(s.pair, s.data, num_samples=4, device="cpu", seed=0, **plate_kw(s))
    exact = s.exact_point()
    assert ll.per_example.shape == (s.n,)
    tol = atol(dtype, float(exact.abs().max()))
    torch.testing.assert_close(ll.per_example.double(), exact, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", PARAM_ONLY)
def test_enum_elbo_equals_exact(name, dtype):
    """With every latent summed out and no guide sites, the ELBO is log p(x | theta) exactly."""
    s = build(name, dtype)
    value = lvm_pyro.elbo(s.pair, s.data, estimator="enum", device="cpu", seed=0, **plate_kw(s))
    exact = float(s.exact_point().mean())
    assert value == pytest.approx(exact, abs=atol(dtype, exact))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", names("exact_pair"))
def test_exact_posterior_guide_makes_elbo_tight(name, dtype):
    """q(z | x) = p(z | x): every importance weight equals p(x), so ELBO == log_likelihood ==
    log p(x) exactly (per data point), whatever the number of particles."""
    s = build(name, dtype)
    pair = s.exact_pair
    if s.exact_point is not None:
        ll = lvm_pyro.log_likelihood(pair, s.data, num_samples=3, device="cpu", seed=0, **plate_kw(s))
        exact = s.exact_point()
        torch.testing.assert_close(ll.per_example.double(), exact, rtol=0, atol=10 * atol(dtype, 10.0))
        exact_mean = float(exact.mean())
    else:
        exact_mean = s.exact_total() / s.n
    value = lvm_pyro.elbo(pair, s.data, num_particles=3, device="cpu", seed=0, **plate_kw(s))
    assert value == pytest.approx(exact_mean, abs=10 * atol(dtype, 10.0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [n for n in names("sampled") if n not in ENUMERATED])
def test_bounds_are_ordered(name, dtype):
    """ELBO <= IWAE(k) <= log p(x), within Monte Carlo error, for the (untrained) learnable guide.

    For global latents (no per-point log p(x_i)) log_likelihood either returns the same
    ordering for the joint log p(x) / N or refuses with an lvm_pyro error naming the fix, never
    a torch traceback."""
    s = build(name, dtype)
    bound = lvm_pyro.elbo(s.pair, s.data, num_particles=400, device="cpu", seed=1, **plate_kw(s))
    if s.exact_point is not None:
        exact = float(s.exact_point().mean())
        slack = 0.02 * (1 + abs(exact))
        ll = lvm_pyro.log_likelihood(s.pair, s.data, num_samples=400, device="cpu", seed=2, **plate_kw(s))
        assert bound <= ll.mean + slack
        assert ll.mean <= exact + slack
        assert bound <= exact + slack
        return
    exact = s.exact_total() / s.n
    slack = 0.02 * (1 + abs(exact))
    assert bound <= exact + slack
    try:
        ll = lvm_pyro.log_likelihood(s.pair, s.data, num_samples=400, device="cpu", seed=2, **plate_kw(s))
    except LVMError as exc:
        assert "plate" in str(exc) or "global" in str(exc)
        return
    assert bound - slack <= ll.mean <= exact + slack


def test_hmm_forward_algorithm_value_of_the_report():
    """The reported bug in one number: a longer HMM at fixed parameters (float64) against the
    hand-written forward algorithm, to 1e-6."""
    from conformance_models import hmm_categorical_model

    s = build("hmm_categorical", torch.float64)
    g = torch.Generator().manual_seed(21)
    sequences = torch.randint(0, 3, (40, 25), generator=g).double()
    ll = lvm_pyro.log_likelihood((hmm_categorical_model, s.pair[1]), sequences, num_samples=2, device="cpu",
                                 data_plate="sequences")
    s.data = sequences
    from conformance_models import _hmm_exact

    exact = _hmm_exact("categorical", sequences)()
    assert float(ll.per_example.sum()) == pytest.approx(float(exact.sum()), abs=1e-6 * len(exact))
    torch.testing.assert_close(ll.per_example.double(), exact, rtol=0, atol=1e-6)


def _em(s, **kw):
    model = s.pair[0] if not s.sampled_latents else s.pair
    return lvm_pyro.em(model, s.data, max_iter=3, tol=0, m_step_steps=10, device="cpu", seed=0, **plate_kw(s),
                       **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ENUMERATED)
def test_em_is_monotone_and_exact(name, dtype):
    """em on a discrete-latent model (param-only models passed without a guide, as Pyro's HMM
    example has none): the objective never decreases, and the reported log-likelihood of the
    returned parameters equals the exact one."""
    s = build(name, dtype)
    result = _em(s)
    obj = result.objective
    assert len(obj) >= 2 and all(math.isfinite(v) for v in obj)
    for before, after in zip(obj, obj[1:]):
        assert after >= before - 10 * atol(dtype, abs(before))
    assert obj[-1] > obj[0]
    exact = float(s.exact_point().mean())
    assert result.log_likelihood[-1] == pytest.approx(exact, abs=10 * atol(dtype, exact))


@pytest.mark.parametrize("name", PARAM_ONLY)
def test_em_takes_the_empty_guide_pair_too(name):
    """The same model as a (model, empty guide) pair, the form fit takes, runs through em."""
    s = build(name, torch.float64)
    result = lvm_pyro.em(s.pair, s.data, max_iter=2, tol=0, m_step_steps=10, device="cpu", seed=0,
                         **plate_kw(s))
    assert result.log_likelihood[-1] == pytest.approx(float(s.exact_point().mean()), abs=1e-6)
