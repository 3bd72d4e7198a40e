"""em(): monotone log-likelihood, Pyro-enumeration E-step on user models against exact
posteriors by hand, the closed-form and enumeration routes against each other, EM against
gradient training, re-seeding, starts, callbacks and bad input."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_for_tests import BernoulliMixture
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroParam
from torch.distributions import constraints

from lvm_pyro.errors import ConfigurationError, DataError, ModelContractError
from lvm_pyro.infer.em import EMResult, em
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.base import LatentVariableModel
from lvm_pyro.models.gmm import COVARIANCE_TYPES, GaussianMixtureModel


def _blobs(n, d, k, sep, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centers = sep * torch.randn(k, d, generator=g, dtype=dtype)
    z = torch.randint(k, (n,), generator=g)
    return centers[z] + torch.randn(n, d, generator=g, dtype=dtype)


# --------------------------------------------------------------------------- monotonicity


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cov_type=st.sampled_from(COVARIANCE_TYPES),
    k=st.integers(1, 4),
    d=st.integers(1, 3),
    per_parameter=st.integers(3, 8),
    sep=st.floats(0.0, 6.0),
    seed=st.integers(0, 2**16),
    init=st.sampled_from(["kmeans++", "random", "random_from_data", "kmeans"]),
)
def test_log_likelihood_never_decreases(cov_type, k, d, per_parameter, sep, seed, init):
    """EM's M-step maximizes Q, so the log-likelihood never falls; with reg_covar added to the
    covariances it is the maximizer only up to reg_covar, which matters where a component
    collapses onto fewer points than it has covariance parameters (12 points, 3 components in
    3-d fell by 1.1e-8 per point). Hence a few points per parameter of a component."""
    n = per_parameter * k * (d + 1) * (d + 2) // 2
    x = _blobs(n, d, k, sep, seed)
    gmm = GaussianMixtureModel(k, d, cov_type, reg_covar=1e-6, min_count=0.0)
    result = em(gmm, x, max_iter=20, tol=0.0, init=init, seed=seed, device="cpu")
    ll = np.array(result.log_likelihood)
    assert len(ll) == 21 and not result.reseeded
    steps = np.diff(ll)
    assert np.all(steps >= -1e-9 * np.maximum(1.0, np.abs(ll[:-1]))), steps.min()


# --------------------------------------------------------------------------- user models


class PoissonMixture(LatentVariableModel):
    """A user's mixture of Poissons with its own closed-form m_step(x, posterior)."""

    data_support = "count"
    input_shape = (1,)

    def __init__(self, rates) -> None:
        super().__init__()
        k = len(rates)
        self.weights = PyroParam(torch.full((k,), 1.0 / k), constraints.simplex)
        self.rates = PyroParam(torch.as_tensor(rates, dtype=torch.float32), constraints.positive)

    def model(self, x):
        with self.data_plate(x):
            z = pyro.sample("z", dist.Categorical(self.weights), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Poisson(self.rates[z]), obs=x[:, 0])

    def guide(self, x):
        pass

    def m_step(self, x, posterior):
        r = posterior["z"]
        nk = r.sum(0)
        self.weights = nk / nk.sum()
        self.rates = (r * x).sum(0) / nk


class TwoLevel(LatentVariableModel):
    """Two chained discrete latents per point: z1 ~ Cat(a), z2 | z1 ~ Cat(B[z1]),
    x | z2 ~ N(mu[z2], 1): the z2 factor needs the pairwise posterior of (z1, z2)."""

    input_shape = (1,)

    def __init__(self) -> None:
        super().__init__()
        self.a = PyroParam(torch.tensor([0.5, 0.5]), constraints.simplex)
        self.B = PyroParam(torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]), constraints.simplex)
        self.mu = PyroParam(torch.tensor([-2.0, 0.5, 2.5]))

    def model(self, x):
        with self.data_plate(x):
            z1 = pyro.sample("z1", dist.Categorical(self.a), infer={"enumerate": "parallel"})
            z2 = pyro.sample("z2", dist.Categorical(self.B[z1]), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(self.mu[z2], 1.0), obs=x[:, 0])

    def guide(self, x):
        pass

    def exact_log_px(self, x):
        a, B, mu = self.a.detach(), self.B.detach(), self.mu.detach()
        terms = [torch.log(a[i]) + torch.log(B[i, j]) + dist.Normal(mu[j], 1.0).log_prob(x[:, 0])
                 for i, j in itertools.product(range(2), range(3))]
        return torch.logsumexp(torch.stack(terms, 1), 1)


def _bernoulli_data(seed=0, n=300):
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([[0.9, 0.9, 0.8, 0.1, 0.2, 0.1], [0.1, 0.2, 0.1, 0.8, 0.9, 0.9]])
    z = torch.randint(2, (n,), generator=g)
    return torch.bernoulli(truth[z], generator=g)


def test_enumeration_e_step_on_a_user_bernoulli_mixture_is_the_exact_posterior():
    from lvm_pyro.infer.em import _EnumRoute
    from lvm_pyro.models.base import as_program

    x = _bernoulli_data()
    model = BernoulliMixture(2, 6)
    route = _EnumRoute(as_program(model), (x,), chunk_size=64, steps=1, lr=0.1)
    total, posts = route.e_step((x,))
    exact = model.exact_log_joint(x)
    posterior = torch.cat([p.marginals["z"] for p in posts])
    torch.testing.assert_close(posterior, torch.softmax(exact, 1), rtol=1e-5, atol=1e-6)
    assert float(total) == pytest.approx(float(torch.logsumexp(exact, 1).sum()), rel=1e-6)


def test_generalized_em_on_a_user_bernoulli_mixture_is_monotone_and_recovers_it():
    x = _bernoulli_data(n=200)
    model = BernoulliMixture(2, 6)
    result = em(model, x, max_iter=12, tol=1e-6, seed=0, device="cpu", chunk_size=100,
                m_step_steps=10, m_step_lr=0.1)
    assert (result.e_step, result.m_step) == ("enum", "gradient")
    ll = np.array(result.log_likelihood)
    assert np.all(np.diff(ll) >= -1e-6), np.diff(ll).min()
    exact = float(torch.logsumexp(model.exact_log_joint(x), 1).mean())
    assert ll[-1] == pytest.approx(exact, rel=1e-5)
    assert ll[-1] > ll[0] + 0.3
    # a fixed point of EM: the gradient M-step found the closed-form maximizer of Q
    resp = torch.softmax(model.exact_log_joint(x), 1)
    torch.testing.assert_close(model.probs.detach(), resp.T @ x / resp.sum(0)[:, None],
                               atol=2e-3, rtol=0)
    torch.testing.assert_close(model.weights.detach(), resp.mean(0), atol=2e-3, rtol=0)
    probs = model.probs.detach()
    first = probs[probs[:, 0].argmax()]
    np.testing.assert_allclose(first.numpy(), [0.9, 0.9, 0.8, 0.1, 0.2, 0.1], atol=0.12)


def test_user_m_step_is_used_for_a_poisson_mixture():
    g = torch.Generator().manual_seed(0)
    z = torch.randint(2, (400,), generator=g)
    x = torch.poisson(torch.tensor([2.0, 12.0])[z], generator=g)[:, None]
    model = PoissonMixture([1.0, 5.0])
    result = em(model, x, max_iter=200, tol=1e-8, device="cpu")
    assert (result.e_step, result.m_step) == ("enum", "model")
    assert result.converged
    assert np.all(np.diff(result.log_likelihood) >= -1e-6)
    assert sorted(model.rates.tolist()) == pytest.approx([2.0, 12.0], abs=0.5)
    # the fixed point of EM is a stationary point of log p(x): compare with a tiny grid
    rates = model.rates.detach().clone()
    best = result.log_likelihood[-1]
    for dr in (-0.05, 0.05):
        model.rates = rates + dr
        worse = dist.Poisson(model.rates.detach()).log_prob(x).add(torch.log(model.weights.detach()))
        assert float(torch.logsumexp(worse, 1).mean()) <= best + 1e-6


def test_two_chained_discrete_sites_use_the_pairwise_posterior():
    x = torch.cat([torch.randn(150, 1) - 2.0, torch.randn(150, 1) + 2.5])
    model = TwoLevel()
    result = em(model, x, max_iter=15, tol=0.0, device="cpu", m_step_steps=10)
    ll = np.array(result.log_likelihood)
    assert np.all(np.diff(ll) >= -1e-6)
    assert ll[-1] == pytest.approx(float(model.exact_log_px(x).mean()), rel=1e-5)
    assert ll[-1] > ll[0]


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_closed_form_route_equals_pyro_enumeration_route(cov_type):
    x = _blobs(120, 2, 3, 4.0, 1)
    runs = []
    for e_step in ("closed_form", "enum"):
        gmm = GaussianMixtureModel(3, 2, cov_type).double()
        runs.append(em(gmm, x, max_iter=8, tol=0.0, seed=3, e_step=e_step, device="cpu"))
    assert runs[0].m_step == "closed_form" and runs[1].m_step == "model"
    np.testing.assert_allclose(runs[0].log_likelihood, runs[1].log_likelihood, rtol=1e-10)
    torch.testing.assert_close(runs[0].model.loc, runs[1].model.loc, rtol=1e-8, atol=1e-10)


def test_em_and_enum_svi_reach_the_same_optimum():
    x = _blobs(300, 2, 2, 6.0, 5, dtype=torch.float32)
    em_model = GaussianMixtureModel(2, 2, "diag")
    em_model.initialize_(x, "kmeans", torch.Generator().manual_seed(0))
    sgd_model = GaussianMixtureModel(2, 2, "diag")
    sgd_model.load_state_dict(em_model.state_dict())
    result = em(em_model, x, init="current", tol=1e-9, max_iter=500, device="cpu")
    em_model.canonicalize_()
    trained = fit(sgd_model, x, estimator="enum", steps=400, lr=0.05, batch_size=len(x),
                  progress=False, seed=0, device="cpu")
    sgd_model.canonicalize_()
    sgd_ll = float(sgd_model.log_prob(x).mean())
    assert -trained.losses[-1] == pytest.approx(sgd_ll, abs=1e-3)
    assert sgd_ll == pytest.approx(result.log_likelihood[-1], abs=2e-4)
    torch.testing.assert_close(sgd_model.loc, em_model.loc, atol=0.02, rtol=0)
    torch.testing.assert_close(sgd_model.scale, em_model.scale, atol=0.02, rtol=0)


# --------------------------------------------------------------------------- em's machinery


def test_result_history_starts_and_reproducibility():
    x = _blobs(200, 2, 3, 3.0, 2)
    runs = [em(GaussianMixtureModel(3, 2, "full").double(), x, n_init=3, seed=11, tol=1e-6,
               device="cpu") for _ in range(2)]
    a, b = runs
    assert isinstance(a, EMResult)
    assert a.log_likelihood == b.log_likelihood and a.best_init == b.best_init
    assert len(a.init_objectives) == 3
    assert a.objective[-1] == pytest.approx(max(a.init_objectives))
    assert len(a.log_likelihood) == a.n_iter + 1
    assert a.lower_bound == a.objective[a.n_iter - 1]
    # the kept model is the winning start's, in canonical order
    assert float(a.model.log_prob(x).mean()) == pytest.approx(a.log_likelihood[-1], rel=1e-12)
    w = a.model.weights.tolist()
    assert w == sorted(w, reverse=True)


def test_empty_component_is_reseeded_and_reported():
    x = _blobs(200, 2, 2, 5.0, 3)
    gmm = GaussianMixtureModel(3, 2, "diag").double()

    def far_away(model, data, gen):
        model.set_parameters(weights=[0.45, 0.45, 0.1],
                             means=[[float(data[0, 0]), float(data[0, 1])],
                                    [float(data[1, 0]), float(data[1, 1])], [1e3, 1e3]],
                             covariances=torch.ones(3, 2, dtype=torch.float64))

    result = em(gmm, x, init=far_away, max_iter=50, seed=0, device="cpu")
    assert result.reseeded and result.reseeded[0].iteration == 1
    assert result.reseeded[0].count < 1e-6
    assert math.isfinite(result.log_likelihood[-1])
    assert float(gmm.weights.detach().min()) > 0.01


def test_chunking_bounds_nothing_but_memory():
    x = _blobs(1000, 3, 4, 3.0, 4)
    a = em(GaussianMixtureModel(4, 3, "full").double(), x, chunk_size=37, seed=1, tol=0,
           max_iter=5, device="cpu")
    b = em(GaussianMixtureModel(4, 3, "full").double(), x, seed=1, tol=0, max_iter=5, device="cpu")
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-11)


def test_callbacks_see_the_state_and_can_stop():
    seen = []

    def stop_at_three(state):
        seen.append((state.iteration, len(state.log_likelihood)))
        state.stop = state.iteration == 3

    x = _blobs(100, 2, 2, 4.0, 0)
    result = em(GaussianMixtureModel(2, 2), x, tol=0, max_iter=50, callbacks=[stop_at_three],
                device="cpu")
    assert seen == [(1, 1), (2, 2), (3, 3)] and result.n_iter == 3 and not result.converged


def test_constant_feature_is_regularized_with_a_warning():
    x = _blobs(100, 2, 2, 4.0, 0)
    x[:, 1] = 7.0
    with pytest.warns(UserWarning, match=r"feature\(s\) \[1\] are constant"):
        result = em(GaussianMixtureModel(2, 2, "full").double(), x, seed=0, device="cpu")
    assert math.isfinite(result.log_likelihood[-1])
    cov = result.model.covariances()
    assert cov[:, 1, 1].tolist() == pytest.approx([1e-6, 1e-6], rel=1e-3)


# --------------------------------------------------------------------------- bad input


def test_more_components_than_points_names_the_fix():
    with pytest.raises(DataError, match="n_components=5 is larger than the number of points"):
        em(GaussianMixtureModel(5, 2), torch.randn(4, 2), device="cpu")


@pytest.mark.parametrize("bad", [math.inf, -math.inf])  # NaN is a missing value (tests/test_gmm_missing.py)
def test_non_finite_data_names_the_fix(bad):
    x = torch.randn(20, 2)
    x[3, 1] = bad
    with pytest.raises(DataError, match="non-finite.*first at index \\[3, 1\\]"):
        em(GaussianMixtureModel(2, 2), x, device="cpu")


def test_wrong_feature_count_names_the_fix():
    with pytest.raises(DataError, match="expects \\(3,\\)"):
        em(GaussianMixtureModel(2, 3), torch.randn(20, 2), device="cpu")


def test_model_without_an_enumerable_site_is_refused():
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x[:, 0])

    def guide(x):
        pass

    with pytest.raises(ModelContractError, match="needs a discrete latent site to enumerate"):
        em((model, guide), torch.randn(10, 1), device="cpu")


def test_continuous_latent_outside_the_guide_is_refused():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(u + z, 1.0), obs=x[:, 0])

    with pytest.raises(ModelContractError, match="'u' .* neither enumerable nor sampled by the guide"):
        em((model, lambda x: None), torch.randn(10, 1), device="cpu")


def test_non_point_estimate_guide_is_refused():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(loc + z, 1.0), obs=x[:, 0])

    with pytest.raises(ModelContractError, match="point estimates.*from a Normal.*AutoDelta"):
        em(model, torch.randn(10, 1), guide=AutoNormal(pyro.poutine.block(model, expose=["loc"])),
           device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_iter=-1), "max_iter"),
        (dict(n_init=0), "n_init"),
        (dict(tol=-1.0), "tol"),
        (dict(init="zeros"), "init must be one of"),
        (dict(e_step="exact"), "e_step must be one of"),
        (dict(n_init=2, init="current"), "n_init > 1 with init='current'"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        em(GaussianMixtureModel(2, 1), torch.randn(10, 1), device="cpu", **kwargs)


def test_data_based_init_on_a_model_without_initialize_is_refused():
    with pytest.raises(ConfigurationError, match="init='kmeans' needs a model with an initialize_"):
        em(BernoulliMixture(2, 6), _bernoulli_data(), init="kmeans", device="cpu")


def test_benchmark_runs_in_quick_mode():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gmm_em.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--no-scale", "--dtypes", "float64",
         "--svi-budget", "1", "--iters", "3"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| P")]
    assert len(table) == 5  # four covariance types on P1, diag on P2
    for line in table:
        rel_diff = float(line.rstrip(" |").rsplit("|", 1)[1])
        assert rel_diff < 1e-9  # the same final log-likelihood as scikit-learn
    assert "Pyro enumeration E-step" in done.stdout


# --------------------------------------------------------------------------- conditions


def test_em_passes_conditions_to_the_model_and_its_m_step():
    from models_for_tests import RegressionMixture, RegressionMixtureWithMStep, regression_mixture_data

    y, u = regression_mixture_data()
    runs = {}
    for cls in (RegressionMixture, RegressionMixtureWithMStep):
        model = cls(2, seed=3)
        result = em(model, (y, u), max_iter=60, tol=1e-9, device="cpu", m_step_steps=20, m_step_lr=0.05)
        ll = np.array(result.log_likelihood)
        assert np.diff(ll).min() >= -1e-8, np.diff(ll).min()
        exact = float(torch.logsumexp(model.exact_log_joint(y, u), 1).mean())
        assert ll[-1] == pytest.approx(exact, rel=1e-9)
        assert model.weights.dtype == torch.float64
        runs[cls.__name__] = (result, model)
    result, model = runs["RegressionMixtureWithMStep"]
    assert result.m_step == "model" and runs["RegressionMixture"][0].m_step == "gradient"
    order = model.b.detach().argsort()
    np.testing.assert_allclose(model.b.detach()[order].numpy(), [-1.5, 0.8], atol=0.1)
    np.testing.assert_allclose(model.a.detach()[order].numpy(), [1.0, -1.0], atol=0.15)
    # the exact M-step reaches a higher likelihood than 20 Adam steps per iteration
    assert result.log_likelihood[-1] >= runs["RegressionMixture"][0].log_likelihood[-1] - 1e-6


def test_a_closed_form_mixture_refuses_a_tuple_of_data():
    x = torch.randn(50, 2)
    with pytest.raises(ConfigurationError, match="takes the data x alone"):
        em(GaussianMixtureModel(2, 2, "diag"), (x, torch.zeros(50)), device="cpu")


def test_a_condition_with_the_wrong_length_names_the_fix():
    from models_for_tests import RegressionMixture, regression_mixture_data

    y, u = regression_mixture_data(n=40)
    with pytest.raises(DataError, match="one condition per example"):
        em(RegressionMixture(2), (y, u[:30]), device="cpu")


# --------------------------------------------------------------------------- Pyro-style models
#
# Written the way Pyro's examples/hmm.py writes them: pyro.markov over time, the plate
# "sequences" at dim -2 (its indices used to pick rows), parameters as pyro.param with
# constraints, every latent discrete, and no guide at all.

HMM_K, HMM_V = 3, 4


def hmm_categorical(sequences):
    init = pyro.param("hmm_init", torch.tensor([0.5, 0.3, 0.2], dtype=sequences.dtype),
                      constraint=constraints.simplex)
    trans = pyro.param("hmm_trans", 0.6 * torch.eye(HMM_K, dtype=sequences.dtype) + 0.4 / HMM_K,
                       constraint=constraints.simplex)
    emit = pyro.param("hmm_emit", torch.linspace(1.0, 2.0, HMM_K * HMM_V, dtype=sequences.dtype)
                      .reshape(HMM_K, HMM_V) ** torch.arange(1.0, HMM_K + 1, dtype=sequences.dtype)[:, None],
                      constraint=constraints.simplex)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Categorical(init if z is None else trans[z]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Categorical(emit[z]), obs=sequences[batch, t].unsqueeze(-1))


def hmm_gaussian(sequences):
    init = pyro.param("ghmm_init", torch.tensor([0.6, 0.4], dtype=sequences.dtype),
                      constraint=constraints.simplex)
    trans = pyro.param("ghmm_trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=sequences.dtype),
                       constraint=constraints.simplex)
    loc = pyro.param("ghmm_loc", torch.tensor([-0.5, 0.5], dtype=sequences.dtype))
    scale = pyro.param("ghmm_scale", torch.tensor([1.5, 1.5], dtype=sequences.dtype),
                       constraint=constraints.positive)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Categorical(init if z is None else trans[z]),
                            infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(loc[z], scale[z]), obs=sequences[batch, t].unsqueeze(-1))


def forward_algorithm(log_init, log_trans, log_emission):
    """log p(y_1..T) per sequence by the forward recursion; log_emission is (N, T, K)."""
    alpha = log_init + log_emission[:, 0]
    for t in range(1, log_emission.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + log_trans, 1) + log_emission[:, t]
    return torch.logsumexp(alpha, 1)


def _hmm_sequences(kind, n=6, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.zeros(n, t, dtype=torch.long)
    states[:, 0] = torch.randint(2, (n,), generator=g)
    for i in range(1, t):
        stay = torch.rand(n, generator=g) < 0.8
        states[:, i] = torch.where(stay, states[:, i - 1], 1 - states[:, i - 1])
    if kind == "categorical":
        flip = torch.randint(HMM_V, (n, t), generator=g)
        keep = torch.rand(n, t, generator=g) < 0.7
        return torch.where(keep, 3 * states, flip).double()
    return (torch.tensor([-2.0, 2.0], dtype=torch.float64)[states]
            + torch.randn(n, t, generator=g, dtype=torch.float64))


def _hmm_exact(kind, sequences):
    p = {name: pyro.param(name).detach() for name in pyro.get_param_store().keys()}
    if kind == "categorical":
        init, trans, emit = p["hmm_init"], p["hmm_trans"], p["hmm_emit"]
        log_emission = emit.log().T[sequences.long()]
    else:
        init, trans = p["ghmm_init"], p["ghmm_trans"]
        log_emission = dist.Normal(p["ghmm_loc"], p["ghmm_scale"]).log_prob(sequences[..., None])
    return forward_algorithm(init.log(), trans.log(), log_emission)


@pytest.mark.parametrize("e_step, routes",
                         [("enum", ("enum", "gradient")), ("auto", ("chain", "closed_form"))])
@pytest.mark.parametrize("kind, model", [("categorical", hmm_categorical), ("gaussian", hmm_gaussian)])
def test_em_on_a_pyro_style_hmm_without_a_guide_equals_the_forward_algorithm(kind, model, e_step, routes):
    sequences = _hmm_sequences(kind)
    pyro.clear_param_store()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no stall: every M-step moved
        result = em(model, sequences, data_plate="sequences", max_iter=4, tol=0.0, m_step_steps=8,
                    m_step_lr=0.05, device="cpu", e_step=e_step)
    assert (result.e_step, result.m_step, result.stop_reason) == (*routes, "max_iter")
    ll = np.array(result.log_likelihood)
    assert len(ll) == 5
    assert np.all(np.diff(ll) >= -1e-10), np.diff(ll)
    assert ll[-1] > ll[0] + 1e-3
    # the returned parameters: em's log-likelihood is the forward algorithm's, per sequence
    exact = _hmm_exact(kind, sequences)
    assert exact.dtype == torch.float64
    assert ll[-1] == pytest.approx(float(exact.mean()), abs=1e-6)


def test_em_chunks_split_the_users_plate_and_change_nothing_but_memory():
    sequences = _hmm_sequences("categorical", n=6)
    runs = []
    for chunk_size in (None, 4):
        pyro.clear_param_store()
        result = em(hmm_categorical, sequences, data_plate="sequences", chunk_size=chunk_size,
                    max_iter=2, tol=0.0, m_step_steps=5, device="cpu", e_step="enum")
        runs.append((result.log_likelihood, float(_hmm_exact("categorical", sequences).mean())))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-10)
    assert runs[1][0][-1] == pytest.approx(runs[1][1], abs=1e-9)


def test_a_chunk_of_one_row_and_data_of_one_row_are_right():
    # the plate of a one-row chunk is packed away by Pyro; em's E-step and M-steps still run
    sequences = _hmm_sequences("categorical", n=5)
    lls = []
    for chunk_size in (None, 2):  # chunks of 2, 2, 1
        pyro.clear_param_store()
        lls.append(em(hmm_categorical, sequences, data_plate="sequences", chunk_size=chunk_size,
                      max_iter=2, tol=0.0, m_step_steps=3, device="cpu", e_step="enum").log_likelihood)
    np.testing.assert_allclose(lls[0], lls[1], rtol=1e-10)
    pyro.clear_param_store()
    one = em(hmm_categorical, sequences[:1], data_plate="sequences", max_iter=2, tol=0.0, m_step_steps=3,
             device="cpu", e_step="enum")
    assert one.log_likelihood[-1] == pytest.approx(float(_hmm_exact("categorical", sequences[:1])), abs=1e-9)
    # a model's own m_step receives (rows, values) marginals whatever the chunking
    x = torch.tensor([[2.0], [12.0], [3.0], [11.0], [5.0]])
    runs = [em(PoissonMixture([1.0, 5.0]), x, max_iter=3, tol=0.0, chunk_size=c, device="cpu")
            for c in (None, 2)]
    np.testing.assert_allclose(runs[0].log_likelihood, runs[1].log_likelihood, rtol=1e-6)
    assert runs[1].m_step == "model"


def padded_hmm(sequences, lengths):
    """Pyro's examples/hmm.py padding: steps past a sequence's length masked."""
    init = pyro.param("phmm_init", torch.tensor([0.6, 0.4], dtype=sequences.dtype),
                      constraint=constraints.simplex)
    trans = pyro.param("phmm_trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=sequences.dtype),
                       constraint=constraints.simplex)
    loc = pyro.param("phmm_loc", torch.tensor([-0.5, 0.5], dtype=sequences.dtype))
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        lengths = lengths[batch]
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            with pyro.poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                z = pyro.sample(f"z_{t}", dist.Categorical(init if z is None else trans[z]),
                                infer={"enumerate": "parallel"})
                pyro.sample(f"y_{t}", dist.Normal(loc[z], 1.0), obs=sequences[batch, t].unsqueeze(-1))


def test_padded_sequences_warn_and_differ_from_the_forward_algorithm_by_log_k_per_padded_step():
    sequences = _hmm_sequences("gaussian", n=5)
    lengths = torch.tensor([5, 3, 4, 5, 2])
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match=r"masked.*log K per masked value"):
        result = em(padded_hmm, (sequences, lengths), data_plate="sequences", chunk_size=2, max_iter=2,
                    tol=0.0, m_step_steps=3, device="cpu")
    p = {name: pyro.param(name).detach() for name in ("phmm_init", "phmm_trans", "phmm_loc")}
    exact = sum(
        float(forward_algorithm(p["phmm_init"].log(), p["phmm_trans"].log(),
                                dist.Normal(p["phmm_loc"], 1.0).log_prob(sequences[i, :n, None])[None]))
        for i, n in enumerate(lengths.tolist())
    ) / 5
    padded_steps = int((5 - lengths).sum())
    assert result.log_likelihood[-1] - exact == pytest.approx(padded_steps * math.log(2) / 5, abs=1e-9)


def test_chunks_of_a_plate_em_cannot_find_name_data_plate():
    pyro.clear_param_store()
    with pytest.raises(ModelContractError, match=r"no plate named 'data'.*\['sequences'\].*data_plate="):
        em(hmm_categorical, _hmm_sequences("categorical"), chunk_size=3, device="cpu")
    with pytest.raises(ModelContractError, match=r"no plate named 'seqs'"):
        em(hmm_categorical, _hmm_sequences("categorical"), data_plate="seqs", device="cpu")


# --------------------------------------------------------------------------- stalls


def _two_gaussians(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(2, (n,), generator=g)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    return (torch.tensor([-2.0, 3.0], dtype=torch.float64)[z] + noise)[:, None]


def unit_variance_mixture(x):
    w = pyro.param("uvm_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("uvm_loc", x.new_tensor([-0.5, 0.5]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=x[:, 0])


def _closed_form_optimum(x):
    """EM with the exact M-step from the same start, run to its fixed point."""
    w, loc = x.new_tensor([0.5, 0.5]), x.new_tensor([-0.5, 0.5])
    for _ in range(500):
        r = (w.log() + dist.Normal(loc, 1.0).log_prob(x)).softmax(1)
        w, loc = r.mean(0), (r * x).sum(0) / r.sum(0)
    return float((w.log() + dist.Normal(loc, 1.0).log_prob(x)).logsumexp(1).mean())


def test_a_generalized_m_step_without_progress_is_a_stall_not_convergence():
    x = _two_gaussians()
    optimum = _closed_form_optimum(x)
    pyro.clear_param_store()
    with pytest.warns(RuntimeWarning, match=r"stopped without converging.*Raise m_step_steps.*m_step_lr"):
        stalled = em(unit_variance_mixture, x, max_iter=300, tol=1e-6, m_step_steps=5, m_step_lr=0.5,
                     device="cpu", e_step="enum")
    assert (stalled.converged, stalled.stop_reason) == (False, "stalled")
    # short of the optimum by more than tol: calling this convergence would be wrong
    assert optimum - stalled.log_likelihood[-1] > 1e-5
    assert np.all(np.diff(stalled.log_likelihood) >= -1e-12)
    pyro.clear_param_store()
    good = em(unit_variance_mixture, x, max_iter=300, tol=1e-6, m_step_steps=20, m_step_lr=1.0, device="cpu",
              e_step="enum")
    assert (good.converged, good.stop_reason) == (True, "converged")
    assert good.log_likelihood[-1] == pytest.approx(optimum, abs=1e-6)
    # restarted at that fixed point, an M-step without progress is convergence, not a stall
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = em(unit_variance_mixture, x, max_iter=50, tol=1e-6, m_step_steps=20, m_step_lr=1.0,
                   device="cpu", e_step="enum")
    assert (again.converged, again.stop_reason, again.n_iter) == (True, "converged", 1)
    assert again.log_likelihood[-1] == pytest.approx(optimum, abs=1e-6)


# --------------------------------------------------------------------------- starts


def mixture_with_globals(x):
    """pyro.params (weights, scale) in the model, the locations a global site point-estimated by
    an AutoDelta guide (its parameters live in the guide module)."""
    w = pyro.param("mg_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    scale = pyro.param("mg_scale", x.new_tensor(1.0), constraint=constraints.positive)
    loc = pyro.sample("loc", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], scale), obs=x[:, 0])


def _mixture_objective(x, guide):
    w, scale = pyro.param("mg_w").detach(), pyro.param("mg_scale").detach()
    loc = guide.median(x)["loc"].detach()
    log_px = (w.log() + dist.Normal(loc, scale).log_prob(x)).logsumexp(1).sum()
    return float((log_px + dist.Normal(x.new_zeros(()), 10.0).log_prob(loc).sum()) / len(x))


def _scattered_start(source, x, generator):
    """A start far from the others: locations at two random data points, random weights and scale."""
    _, guide = source
    rows = torch.randperm(len(x), generator=generator)[:2]
    u = torch.rand(2, generator=generator, dtype=x.dtype)
    with torch.no_grad():
        guide.loc.copy_(x[rows, 0])
        pyro.param("mg_w").unconstrained().copy_(u.log())
        pyro.param("mg_scale").unconstrained().copy_((0.3 + 2 * u[0]).log())


@pytest.mark.filterwarnings("ignore:em stopped without converging")
def test_the_best_of_n_init_starts_is_returned_whole_module_and_param_store():
    from pyro.infer.autoguide import AutoDelta

    x = _two_gaussians(n=120, seed=1)
    pyro.clear_param_store()
    guide = AutoDelta(pyro.poutine.block(mixture_with_globals, expose=["loc"]))
    guide(x)  # its parameters exist before the starts set them
    result = em(mixture_with_globals, x, guide=guide, n_init=3, init=_scattered_start, seed=4, max_iter=3,
                tol=0.0, m_step_steps=5, m_step_lr=0.1, device="cpu")
    assert len(result.init_objectives) == 3
    assert max(result.init_objectives) - min(result.init_objectives) > 1e-3  # the starts differ
    assert result.objective[-1] == pytest.approx(max(result.init_objectives), abs=1e-12)
    # recomputed at the returned parameters: by hand, and by em itself (no iteration)
    assert _mixture_objective(x, guide) == pytest.approx(result.objective[-1], abs=1e-10)
    again = em(mixture_with_globals, x, guide=guide, max_iter=0, init="current", device="cpu")
    assert again.objective[0] == pytest.approx(result.objective[-1], abs=1e-10)
