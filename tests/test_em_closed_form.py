"""Closed-form M-steps found automatically for users' models (lvm_pyro.infer.em.chain).

Models are written as plain Pyro programs (pyro.param, pyro.plate, an enumerated z, no guide,
no m_step code); em must take the closed-form route and match EM written out by hand here, or
refuse the route with its reason and fall back to gradient steps."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroParam, pyro_method
from torch.distributions import constraints

from lvm_pyro.infer.em import em
from lvm_pyro.models.base import LatentVariableModel


def _poisson_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g) < 0.35
    rates = torch.where(z, torch.tensor(9.0), torch.tensor(2.0)).double()
    return torch.poisson(rates, generator=g)


def poisson_mixture(x):
    w = pyro.param("pm_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    rate = pyro.param("pm_rate", x.new_tensor([1.0, 4.0]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Poisson(rate[z]), obs=x)


def _poisson_em(x, iters, sample_weight=None):
    """Closed-form EM for a Poisson mixture, by hand: log-likelihood after each M-step."""
    sw = torch.ones_like(x) if sample_weight is None else sample_weight
    w, rate = x.new_tensor([0.5, 0.5]), x.new_tensor([1.0, 4.0])
    lls = []
    for _ in range(iters):
        joint = w.log() + dist.Poisson(rate).log_prob(x[:, None])
        lls.append(float((sw * joint.logsumexp(1)).sum() / sw.sum()))
        r = joint.softmax(1) * sw[:, None]
        w, rate = r.sum(0) / r.sum(), (r * x[:, None]).sum(0) / r.sum(0)
    joint = w.log() + dist.Poisson(rate).log_prob(x[:, None])
    lls.append(float((sw * joint.logsumexp(1)).sum() / sw.sum()))
    return lls, w, rate


def test_a_plain_pyro_poisson_mixture_takes_the_closed_form_route_and_equals_em_by_hand():
    x = _poisson_data()
    pyro.clear_param_store()
    result = em(poisson_mixture, x, max_iter=15, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert result.param_routes == {"pm_w": "closed_form", "pm_rate": "closed_form"}
    assert result.closed_form_refused is None
    lls, w, rate = _poisson_em(x, 15)
    np.testing.assert_allclose(result.log_likelihood, lls, rtol=1e-10, atol=0)
    torch.testing.assert_close(pyro.param("pm_w").detach(), w, rtol=1e-10, atol=0)
    torch.testing.assert_close(pyro.param("pm_rate").detach(), rate, rtol=1e-10, atol=0)



class PoissonMixtureModule(LatentVariableModel):
    """The same Poisson mixture as a LatentVariableModel whose parameters are PyroParam
    attributes (no pyro.param call, no m_step)."""

    data_support = "count"
    input_shape = ()

    def __init__(self) -> None:
        super().__init__()
        self.w = PyroParam(torch.tensor([0.5, 0.5], dtype=torch.float64), constraints.simplex)
        self.rate = PyroParam(torch.tensor([1.0, 4.0], dtype=torch.float64), constraints.positive)

    @pyro_method
    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(self.w), infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Poisson(self.rate[z]), obs=x)

    @pyro_method
    def guide(self, x):
        pass


def test_pyro_param_attributes_of_a_model_class_take_the_closed_form_route():
    x = _poisson_data()
    model = PoissonMixtureModule()
    result = em(model, x, max_iter=15, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert result.param_routes == {"w": "closed_form", "rate": "closed_form"}
    lls, w, rate = _poisson_em(x, 15)
    np.testing.assert_allclose(result.log_likelihood, lls, rtol=1e-10, atol=0)
    torch.testing.assert_close(model.w.detach(), w, rtol=1e-10, atol=0)
    torch.testing.assert_close(model.rate.detach(), rate, rtol=1e-10, atol=0)

def bernoulli_mixture(x):
    k, d = 3, x.shape[1]
    w = pyro.param("bm_w", x.new_ones(k) / k, constraint=constraints.simplex)
    probs = pyro.param(
        "bm_probs",
        0.3 + 0.4 * torch.linspace(0, 1, k * d, dtype=x.dtype).reshape(k, d),
        constraint=constraints.unit_interval,
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))  # left unmarked: em enumerates it
        pyro.sample("x", dist.Bernoulli(probs[z]).to_event(1), obs=x)


def _bernoulli_data(n=250, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([[0.9] * 3 + [0.1] * 3, [0.1] * 3 + [0.9] * 3, [0.5] * 6], dtype=torch.float64)[
        :, :d
    ]
    z = torch.randint(3, (n,), generator=g)
    return torch.bernoulli(truth[z], generator=g)


def test_a_plain_pyro_bernoulli_mixture_takes_the_closed_form_route_and_equals_em_by_hand():
    x = _bernoulli_data()
    pyro.clear_param_store()
    result = em(bernoulli_mixture, x, max_iter=12, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    k, d = 3, x.shape[1]
    w = x.new_ones(k) / k
    p = 0.3 + 0.4 * torch.linspace(0, 1, k * d, dtype=x.dtype).reshape(k, d)
    lls = []
    for _ in range(12):
        joint = w.log() + x @ p.log().T + (1 - x) @ torch.log1p(-p).T
        lls.append(float(joint.logsumexp(1).mean()))
        r = joint.softmax(1)
        w, p = r.mean(0), (r.T @ x) / r.sum(0)[:, None]
    np.testing.assert_allclose(result.log_likelihood[:-1], lls, rtol=1e-10, atol=0)
    torch.testing.assert_close(pyro.param("bm_probs").detach(), p, rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)


def gaussian_mixture_shared_scale(x):
    w = pyro.param("gs_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("gs_loc", x.new_tensor([-1.0, 1.0]))
    scale = pyro.param("gs_scale", x.new_tensor(2.0), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], scale), obs=x)


def test_a_normal_mixture_with_one_shared_scale_is_exact_ecm():
    g = torch.Generator().manual_seed(2)
    x = torch.cat(
        [
            torch.randn(120, generator=g, dtype=torch.float64) - 3,
            torch.randn(80, generator=g, dtype=torch.float64) * 1.5 + 2,
        ]
    )
    pyro.clear_param_store()
    result = em(gaussian_mixture_shared_scale, x, max_iter=10, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    w, loc, s = x.new_tensor([0.5, 0.5]), x.new_tensor([-1.0, 1.0]), x.new_tensor(2.0)
    for _ in range(10):
        r = (w.log() + dist.Normal(loc, s).log_prob(x[:, None])).softmax(1)
        w, loc = r.mean(0), (r * x[:, None]).sum(0) / r.sum(0)
        s = ((r * (x[:, None] - loc) ** 2).sum() / len(x)).sqrt()  # the pooled variance at the new locs
    torch.testing.assert_close(pyro.param("gs_loc").detach(), loc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("gs_scale").detach(), s, rtol=1e-10, atol=0)


def mixed_routes(x):
    """The weights and scale have closed forms; a loc constrained positive does not (its
    weighted mean could leave the constraint), so it takes gradient steps."""
    w = pyro.param("mr_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("mr_loc", x.new_tensor([0.5, 3.0]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=x)


def test_a_model_mixes_closed_form_and_gradient_m_steps_and_stays_monotone():
    g = torch.Generator().manual_seed(3)
    x = torch.cat(
        [
            torch.randn(100, generator=g, dtype=torch.float64) + 1,
            torch.randn(100, generator=g, dtype=torch.float64) + 5,
        ]
    )
    pyro.clear_param_store()
    result = em(mixed_routes, x, max_iter=60, tol=1e-9, m_step_steps=30, m_step_lr=0.1, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form+gradient")
    assert result.param_routes == {"mr_w": "closed_form", "mr_loc": "gradient"}
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)
    # the fixed point is the closed-form optimum (the locs' weighted means are positive here)
    w, loc = pyro.param("mr_w").detach(), pyro.param("mr_loc").detach()
    r = (w.log() + dist.Normal(loc, 1.0).log_prob(x[:, None])).softmax(1)
    torch.testing.assert_close(loc, (r * x[:, None]).sum(0) / r.sum(0), atol=1e-3, rtol=0)


def not_a_gather(x):
    w = pyro.param("ng_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("ng_loc", x.new_tensor([-1.0, 1.0]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(2 * loc[z] + 1, 1.0), obs=x)


def test_a_model_outside_the_closed_form_falls_back_with_its_reason():
    x = torch.randn(50, dtype=torch.float64)
    pyro.clear_param_store()
    result = em(not_a_gather, x, max_iter=3, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("enum", "gradient")
    assert "other than by indexing" in result.closed_form_refused
    assert result.param_routes == {}


def test_the_chain_route_equals_the_enumeration_route_on_its_first_e_step():
    x = _poisson_data(n=40)
    runs = []
    for e_step in ("auto", "enum"):
        pyro.clear_param_store()
        runs.append(em(poisson_mixture, x, max_iter=0, device="cpu", e_step=e_step))
    assert runs[0].e_step == "chain" and runs[1].e_step == "enum"
    assert runs[0].log_likelihood[0] == pytest.approx(runs[1].log_likelihood[0], rel=1e-12)


@pytest.mark.parametrize("route", ["auto", "enum"])
def test_integer_sample_weights_equal_replicated_rows(route):
    x = _poisson_data(n=60)
    weights = torch.arange(60) % 3  # 0, 1 and 2 copies
    replicated = x.repeat_interleave(weights)
    fits = []
    for data, sw in ((x, weights.double()), (replicated, None)):
        pyro.clear_param_store()
        result = em(
            poisson_mixture,
            data,
            max_iter=6,
            tol=0.0,
            device="cpu",
            e_step=route,
            sample_weight=sw,
            m_step_steps=5,
        )
        fits.append((result.log_likelihood, pyro.param("pm_w").detach(), pyro.param("pm_rate").detach()))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-10)
    torch.testing.assert_close(fits[0][1], fits[1][1], rtol=1e-10, atol=0)
    torch.testing.assert_close(fits[0][2], fits[1][2], rtol=1e-10, atol=0)


def test_fractional_sample_weights_match_the_weighted_closed_form():
    x = _poisson_data(n=80)
    sw = torch.linspace(0.1, 2.0, 80, dtype=torch.float64)
    pyro.clear_param_store()
    result = em(poisson_mixture, x, max_iter=8, tol=0.0, device="cpu", sample_weight=sw)
    lls, w, rate = _poisson_em(x, 8, sw)
    np.testing.assert_allclose(result.log_likelihood, lls, rtol=1e-10)
    torch.testing.assert_close(pyro.param("pm_rate").detach(), rate, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------- missing values


def missing_mixture(x, observed):
    """A diagonal Gaussian mixture over D features with missing entries (Pyro's obs_mask)."""
    k, d = 2, x.shape[1]
    w = pyro.param("mm_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("mm_loc", torch.linspace(-1, 1, k * d, dtype=x.dtype).reshape(k, d))
    scale = pyro.param("mm_scale", x.new_ones(k, d), constraint=constraints.positive)
    with pyro.plate("data", len(x), dim=-2):
        z = pyro.sample("z", dist.Categorical(w)).squeeze(-1)
        with pyro.plate("features", d, dim=-1):
            pyro.sample("x", dist.Normal(loc[z], scale[z]), obs=x, obs_mask=observed)


def _missing_data(n=150, d=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(2, (n,), generator=g)
    x = torch.tensor([[-2.0, 0.0, 2.0], [2.0, 1.0, -1.0]], dtype=torch.float64)[z] + torch.randn(
        n, d, generator=g, dtype=torch.float64
    )
    observed = torch.rand(n, d, generator=g) > 0.2  # 20% of the entries missing at random
    observed[:, 0] |= ~observed.any(1)  # every row keeps one entry
    return torch.where(observed, x, torch.zeros(())), observed


def _missing_brute_force(x, observed, w, loc, scale):
    """log p(x_obs) per row: sum over z of w_z prod over observed entries N(x_d | loc_zd, scale_zd)."""
    lp = dist.Normal(loc, scale).log_prob(x[:, None, :]) * observed[:, None, :]
    return (w.log() + lp.sum(-1)).logsumexp(1)


def test_missing_values_through_obs_mask_are_summed_out_exactly_on_both_routes():
    x, observed = _missing_data()
    runs = {}
    for route in ("auto", "enum"):
        pyro.clear_param_store()
        runs[route] = em(
            missing_mixture, (x, observed), max_iter=8, tol=0.0, device="cpu", e_step=route, m_step_steps=3
        )
    assert (runs["auto"].e_step, runs["auto"].m_step) == ("chain", "closed_form")
    assert runs["enum"].log_likelihood[0] == pytest.approx(runs["auto"].log_likelihood[0], rel=1e-12)
    # EM by hand on the observed entries: the E-step conditions on them, the M-step counts them
    w = x.new_tensor([0.5, 0.5])
    loc = torch.linspace(-1, 1, 6, dtype=x.dtype).reshape(2, 3)
    scale = x.new_ones(2, 3)
    lls = []
    for _ in range(8):
        lls.append(float(_missing_brute_force(x, observed, w, loc, scale).mean()))
        lp = (dist.Normal(loc, scale).log_prob(x[:, None, :]) * observed[:, None, :]).sum(-1)
        r = (w.log() + lp).softmax(1)
        ro = r[:, :, None] * observed[:, None, :]  # (n, k, d): responsibility of each observed entry
        w = r.mean(0)
        loc = (ro * x[:, None, :]).sum(0) / ro.sum(0)
        scale = ((ro * (x[:, None, :] - loc) ** 2).sum(0) / ro.sum(0)).sqrt()
    np.testing.assert_allclose(runs["auto"].log_likelihood[:-1], lls, rtol=1e-10)
    pyro.clear_param_store()
    em(missing_mixture, (x, observed), max_iter=8, tol=0.0, device="cpu")
    torch.testing.assert_close(pyro.param("mm_loc").detach(), loc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("mm_scale").detach(), scale, rtol=1e-10, atol=1e-12)


def test_log_likelihood_and_the_arviz_export_of_an_obs_mask_model_are_the_observed_marginal():
    from lvm_pyro.infer.evaluate import log_likelihood
    from lvm_pyro.models.base import empty_guide

    x, observed = _missing_data(n=40)
    pyro.clear_param_store()
    result = em(missing_mixture, (x, observed), max_iter=3, tol=0.0, device="cpu")
    p = {n: pyro.param(f"mm_{n}").detach() for n in ("w", "loc", "scale")}
    exact = _missing_brute_force(x, observed, p["w"], p["loc"], p["scale"])
    ll = log_likelihood(missing_mixture, (x, observed), guide=empty_guide, num_samples=1, device="cpu")
    torch.testing.assert_close(ll.per_example.double(), exact, rtol=1e-10, atol=1e-10)
    assert result.log_likelihood[-1] == pytest.approx(float(exact.mean()), rel=1e-12)
    az = pytest.importorskip("arviz")
    from lvm_pyro.diagnostics.arviz import to_inference_data

    with pytest.warns(Warning):  # one point estimate: the export says LOO is in-sample
        idata = to_inference_data(result, (x, observed))
    pointwise = sum(np.asarray(v).reshape(-1, len(x)) for v in idata.log_likelihood.data_vars.values())
    assert az is not None
    np.testing.assert_allclose(pointwise[0], exact.numpy(), rtol=1e-9)


# --------------------------------------------------------------------------- online EM


def test_em_with_batch_size_runs_online_em_close_to_batch_em():
    from lvm_pyro.models.gmm import GaussianMixtureModel

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3000, 2, generator=g) - 3, torch.randn(3000, 2, generator=g) + 3]).double()
    online = em(GaussianMixtureModel(2, 2, "diag"), x, seed=0, device="cpu", batch_size=500, max_iter=3)
    batch = em(GaussianMixtureModel(2, 2, "diag"), x, seed=0, device="cpu")
    assert (online.e_step, online.m_step, online.n_iter) == ("closed_form", "online", 3)
    assert len(online.log_likelihood) == 3
    ll_online = float(online.model.log_prob(x.to(online.model.loc.dtype)).double().mean())
    ll_batch = float(batch.model.log_prob(x).mean())
    assert abs(ll_online - ll_batch) <= 1e-2 * abs(ll_batch)  # online EM's accuracy: tests/test_online_em.py


def test_em_with_batch_size_runs_online_em_on_a_plain_pyro_mixture():
    """(tests/test_em_online_chain.py checks online EM on users' models against batch EM)"""
    pyro.clear_param_store()
    result = em(poisson_mixture, _poisson_data(n=20), batch_size=5, device="cpu", seed=0)
    assert (result.e_step, result.m_step) == ("chain", "online")
    assert result.config["n_steps"] == 4 * result.n_iter  # batches of 5 of 20 rows, per pass
    assert result.param_routes == {"pm_w": "closed_form", "pm_rate": "closed_form"}
