"""More families on the closed-form chain route (lvm_pyro.infer.em.chain): MultivariateNormal
emissions (full covariances or their Cholesky factors) in a mixture and in an HMM.

Every model is a plain Pyro program (pyro.param, an enumerated z, no m_step code); em must take
the closed-form route and equal EM written out here (or hmmlearn) from the same start."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import constraints

from lvm_pyro.infer.em import em

K, D = 3, 2


def _start(dtype=torch.float64):
    return dict(
        w=torch.tensor([0.4, 0.35, 0.25], dtype=dtype),
        locs=torch.tensor([[-1.0, 0.0], [1.0, 1.0], [0.0, -2.0]], dtype=dtype),
        covs=torch.tensor(
            [[[1.0, 0.2], [0.2, 1.5]], [[2.0, -0.3], [-0.3, 1.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=dtype
        ),
        init=torch.tensor([0.5, 0.3, 0.2], dtype=dtype),
        trans=torch.tensor([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.3, 0.6]], dtype=dtype),
    )


def _mixture_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.tensor([[1.0, 0.5], [0.0, 0.7]], dtype=torch.float64)
    return torch.cat(
        [
            torch.randn(100, D, generator=g, dtype=torch.float64) @ mix + torch.tensor([-3.0, 0.0]),
            torch.randn(80, D, generator=g, dtype=torch.float64) + torch.tensor([2.0, 2.0]),
            torch.randn(70, D, generator=g, dtype=torch.float64) * 0.5 + torch.tensor([0.0, -3.0]),
        ]
    )


def mvn_mixture(x):
    s = _start(x.dtype)
    w = pyro.param("w", s["w"], constraint=constraints.simplex)
    locs = pyro.param("locs", s["locs"])
    covs = pyro.param("covs", s["covs"], constraint=constraints.positive_definite)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]), obs=x)


def mvn_mixture_tril(x):
    s = _start(x.dtype)
    w = pyro.param("w", s["w"], constraint=constraints.simplex)
    locs = pyro.param("locs", s["locs"])
    trils = pyro.param("trils", torch.linalg.cholesky(s["covs"]), constraint=constraints.lower_cholesky)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=trils[z]), obs=x)


def _mvn_em(x, iters):
    """EM for a full-covariance Gaussian mixture by hand: the log-likelihood before each M-step
    and the final parameters."""
    s = _start(x.dtype)
    w, m, c = s["w"], s["locs"], s["covs"]
    lls = []
    for _ in range(iters):
        joint = w.log() + dist.MultivariateNormal(m, covariance_matrix=c).log_prob(x[:, None])
        lls.append(float(joint.logsumexp(1).mean()))
        r = joint.softmax(1)
        nk = r.sum(0)
        w, m = nk / len(x), (r.T @ x) / nk[:, None]
        d = x[:, None] - m
        c = torch.einsum("nk,nki,nkj->kij", r, d, d) / nk[:, None, None]
    return lls, w, m, c


@pytest.mark.parametrize("model", [mvn_mixture, mvn_mixture_tril])
def test_a_plain_pyro_mvn_mixture_takes_the_closed_form_route_and_equals_em_by_hand(model):
    x = _mixture_data()
    pyro.clear_param_store()
    result = em(model, x, max_iter=12, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert set(result.param_routes.values()) == {"closed_form"} and len(result.param_routes) == 3
    lls, w, m, c = _mvn_em(x, 12)
    np.testing.assert_allclose(result.log_likelihood[:-1], lls, rtol=1e-10, atol=0)
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)
    torch.testing.assert_close(pyro.param("w").detach(), w, rtol=1e-10, atol=0)
    torch.testing.assert_close(pyro.param("locs").detach(), m, rtol=1e-10, atol=1e-12)
    if model is mvn_mixture:
        torch.testing.assert_close(pyro.param("covs").detach(), c, rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(
            pyro.param("trils").detach(), torch.linalg.cholesky(c), rtol=1e-10, atol=1e-12
        )


def test_the_mvn_mixture_equals_the_librarys_gaussian_mixture_model_from_the_same_start():
    from lvm_pyro.models.gmm import GaussianMixtureModel

    x = _mixture_data(seed=1)
    s = _start()
    gmm = GaussianMixtureModel(K, D, "full", reg_covar=0.0).double()  # the start in float64
    gmm.set_parameters(weights=s["w"], means=s["locs"], covariances=s["covs"])
    ours = em(gmm, x, max_iter=10, tol=0.0, init="current", device="cpu")
    pyro.clear_param_store()
    plain = em(mvn_mixture, x, max_iter=10, tol=0.0, device="cpu")
    assert plain.e_step == "chain" and ours.e_step == "closed_form"
    np.testing.assert_allclose(plain.log_likelihood, ours.log_likelihood, rtol=1e-10)
    torch.testing.assert_close(
        pyro.param("covs").detach(), ours.model.covariances().detach(), rtol=1e-9, atol=1e-12
    )


def test_the_chain_route_of_an_mvn_mixture_equals_the_enumeration_route_on_its_first_e_step():
    x = _mixture_data(seed=2)[::5]
    runs = []
    for e_step in ("auto", "enum"):
        pyro.clear_param_store()
        runs.append(em(mvn_mixture, x, max_iter=0, device="cpu", e_step=e_step))
    assert runs[0].e_step == "chain" and runs[1].e_step == "enum"
    assert runs[0].log_likelihood[0] == pytest.approx(runs[1].log_likelihood[0], rel=1e-12)


def tied_mixture(x):
    """One covariance shared by every component: each M-step pools the scatter about the new locs."""
    s = _start(x.dtype)
    w = pyro.param("tw", s["w"], constraint=constraints.simplex)
    locs = pyro.param("tlocs", s["locs"])
    cov = pyro.param("tcov", s["covs"][0], constraint=constraints.positive_definite)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=cov), obs=x)


def test_a_tied_covariance_is_the_pooled_scatter_about_the_new_locs():
    x = _mixture_data(seed=3)
    pyro.clear_param_store()
    result = em(tied_mixture, x, max_iter=8, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    s = _start()
    w, m, c = s["w"], s["locs"], s["covs"][0]
    for _ in range(8):
        r = (w.log() + dist.MultivariateNormal(m, covariance_matrix=c).log_prob(x[:, None])).softmax(1)
        nk = r.sum(0)
        w, m = nk / len(x), (r.T @ x) / nk[:, None]
        d = x[:, None] - m
        c = torch.einsum("nk,nki,nkj->ij", r, d, d) / len(x)
    torch.testing.assert_close(pyro.param("tlocs").detach(), m, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("tcov").detach(), c, rtol=1e-10, atol=1e-12)


def fixed_covariances(x):
    """Locs that meet a different constant covariance per feature group: the precision-weighted
    mean (sum_e w_e P_e)^-1 sum_e w_e P_e y_e, not the plain weighted mean."""
    s = _start(x.dtype)
    w = pyro.param("fw", s["w"], constraint=constraints.simplex)
    locs = pyro.param("flocs", s["locs"])
    covs = torch.stack([s["covs"][0], s["covs"][1]])  # (2, D, D): rows' parity picks one
    which = torch.arange(len(x)) % 2
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=covs[which]), obs=x)


def test_a_loc_that_meets_several_constant_covariances_is_precision_weighted():
    x = _mixture_data(seed=4)
    pyro.clear_param_store()
    result = em(fixed_covariances, x, max_iter=5, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    s = _start()
    covs = torch.stack([s["covs"][0], s["covs"][1]])[torch.arange(len(x)) % 2]  # (N, D, D)
    prec = torch.linalg.inv(covs)
    w, m = s["w"], s["locs"]
    for _ in range(5):
        lp = dist.MultivariateNormal(m, covariance_matrix=covs[:, None]).log_prob(x[:, None])
        r = (w.log() + lp).softmax(1)
        w = r.mean(0)
        a = torch.einsum("nk,nij->kij", r, prec)
        b = torch.einsum("nk,nij,nj->ki", r, prec, x)
        m = torch.linalg.solve(a, b)
    torch.testing.assert_close(pyro.param("flocs").detach(), m, rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)


# --------------------------------------------------------------------------- HMM with MVN emissions


def mvn_hmm(sequences):
    s = _start(sequences.dtype)
    init = pyro.param("init", s["init"], constraint=constraints.simplex)
    trans = pyro.param("trans", s["trans"], constraint=constraints.simplex)
    locs = pyro.param("locs", s["locs"])
    covs = pyro.param("covs", s["covs"], constraint=constraints.positive_definite)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(
                f"z_{t}", dist.Categorical(init if z is None else trans[z]), infer={"enumerate": "parallel"}
            )
            pyro.sample(
                f"y_{t}",
                dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]),
                obs=sequences[batch, t].unsqueeze(-2),
            )


def _mvn_sequences(n=15, t=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    states = torch.zeros(n, t, dtype=torch.long)
    states[:, 0] = torch.randint(K, (n,), generator=g)
    for i in range(1, t):
        move = torch.rand(n, generator=g) < 0.25
        states[:, i] = torch.where(move, torch.randint(K, (n,), generator=g), states[:, i - 1])
    means = torch.tensor([[-2.0, 0.0], [1.0, 2.0], [2.0, -2.0]], dtype=torch.float64)
    return means[states] + torch.randn(n, t, D, generator=g, dtype=torch.float64)


def test_an_hmm_with_mvn_emissions_agrees_with_hmmlearns_full_gaussian_hmm():
    hmm = pytest.importorskip("hmmlearn.hmm")
    y = _mvn_sequences()
    s = _start()
    peer = hmm.GaussianHMM(K, "full", n_iter=8, tol=0.0, init_params="", params="stmc", covars_prior=0.0)
    peer.startprob_, peer.transmat_ = s["init"].numpy(), s["trans"].numpy()
    peer.means_, peer.covars_ = s["locs"].numpy(), s["covs"].numpy()
    peer.fit(y.reshape(-1, D).numpy(), lengths=[y.shape[1]] * y.shape[0])
    pyro.clear_param_store()
    result = em(mvn_hmm, y, data_plate="sequences", max_iter=8, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert set(result.param_routes.values()) == {"closed_form"} and len(result.param_routes) == 4
    history = np.array(peer.monitor_.history)
    assert len(history) == 8
    np.testing.assert_allclose(np.array(result.log_likelihood[:8]) * len(y), history, rtol=1e-9)
    # hmmlearn's parameters are after its 8th M-step, as ours
    np.testing.assert_allclose(pyro.param("trans").detach().numpy(), peer.transmat_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pyro.param("locs").detach().numpy(), peer.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pyro.param("covs").detach().numpy(), peer.covars_, rtol=1e-8, atol=1e-10)
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)


# --------------------------------------------------------------------------- MAP with conjugate priors


def _poisson_counts(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.rand(n, generator=g) < 0.4
    return torch.poisson(torch.where(z, 9.0, 2.0).double(), generator=g)


ALPHA, A0, B0 = torch.tensor([3.0, 2.0], dtype=torch.float64), 2.5, 0.5


def poisson_mixture_with_priors(x):
    """Pyro's way of writing a Bayesian mixture: the globals are sample sites with a prior."""
    weights = pyro.sample("weights", dist.Dirichlet(ALPHA.to(x)))
    rates = pyro.sample("rates", dist.Gamma(x.new_full((2,), A0), x.new_full((2,), B0)).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Poisson(rates[z]), obs=x)


def _delta_guide(model, start):
    from pyro.infer.autoguide import AutoDelta
    from pyro.infer.autoguide.initialization import init_to_value

    values = {k: v.clone() for k, v in start.items()}  # the guide's params may alias its init values
    return AutoDelta(poutine.block(model, expose=list(start)), init_loc_fn=init_to_value(values=values))


def test_point_estimated_globals_with_conjugate_priors_take_the_map_closed_form():
    x = _poisson_counts()
    start = {"weights": x.new_tensor([0.5, 0.5]), "rates": x.new_tensor([1.0, 4.0])}
    pyro.clear_param_store()
    guide = _delta_guide(poisson_mixture_with_priors, start)
    result = em(poisson_mixture_with_priors, x, guide=guide, max_iter=15, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert result.param_routes == {
        "AutoDelta.weights": "closed_form_map",
        "AutoDelta.rates": "closed_form_map",
    }
    # MAP EM by hand: counts + alpha - 1; (sum r y + a - 1) / (sum r + b)
    w, rate, n = start["weights"], start["rates"], len(x)
    lls, objs = [], []
    for _ in range(15):
        joint = w.log() + dist.Poisson(rate).log_prob(x[:, None])
        lls.append(float(joint.logsumexp(1).mean()))
        prior = (
            dist.Dirichlet(ALPHA).log_prob(w)
            + dist.Gamma(x.new_tensor(A0), x.new_tensor(B0)).log_prob(rate).sum()
        )
        objs.append(lls[-1] + float(prior) / n)
        r = joint.softmax(1)
        w = (r.sum(0) + ALPHA - 1) / (n + (ALPHA - 1).sum())
        rate = ((r * x[:, None]).sum(0) + A0 - 1) / (r.sum(0) + B0)
    np.testing.assert_allclose(result.log_likelihood[:-1], lls, rtol=1e-10, atol=0)
    np.testing.assert_allclose(result.objective[:-1], objs, rtol=1e-10, atol=0)
    assert np.all(np.diff(result.objective) >= -1e-12)
    fitted = guide.median(x)
    torch.testing.assert_close(fitted["weights"].detach(), w, rtol=1e-10, atol=0)
    torch.testing.assert_close(fitted["rates"].detach(), rate, rtol=1e-10, atol=0)


def bernoulli_mixture_with_priors(x):
    k, d = 3, x.shape[1]
    weights = pyro.sample("weights", dist.Dirichlet(x.new_full((k,), 2.0)))
    probs = pyro.sample("probs", dist.Beta(x.new_tensor(2.0), x.new_tensor(3.0)).expand([k, d]).to_event(2))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Bernoulli(probs[z]).to_event(1), obs=x)


def test_beta_priors_on_bernoulli_probs_give_the_map_em_by_hand():
    g = torch.Generator().manual_seed(1)
    truth = torch.tensor([[0.9] * 3 + [0.1] * 3, [0.1] * 3 + [0.9] * 3, [0.5] * 6], dtype=torch.float64)
    x = torch.bernoulli(truth[torch.randint(3, (150,), generator=g)], generator=g)
    start = {
        "weights": x.new_ones(3) / 3,
        "probs": 0.3 + 0.4 * torch.linspace(0, 1, 18, dtype=x.dtype).reshape(3, 6),
    }
    pyro.clear_param_store()
    guide = _delta_guide(bernoulli_mixture_with_priors, start)
    result = em(bernoulli_mixture_with_priors, x, guide=guide, max_iter=10, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert set(result.param_routes.values()) == {"closed_form_map"}
    w, p, n = start["weights"], start["probs"], len(x)
    objs = []
    for _ in range(10):
        joint = w.log() + x @ p.log().T + (1 - x) @ torch.log1p(-p).T
        prior = (
            dist.Dirichlet(x.new_full((3,), 2.0)).log_prob(w)
            + dist.Beta(x.new_tensor(2.0), 3.0).log_prob(p).sum()
        )
        objs.append(float(joint.logsumexp(1).mean() + prior / n))
        r = joint.softmax(1)
        w = (r.sum(0) + 1.0) / (n + 3.0)
        p = (r.T @ x + 2.0 - 1) / (r.sum(0)[:, None] + 2.0 + 3.0 - 2)
    np.testing.assert_allclose(result.objective[:-1], objs, rtol=1e-10, atol=0)
    assert np.all(np.diff(result.objective) >= -1e-12)
    fitted = guide.median(x)
    torch.testing.assert_close(fitted["probs"].detach(), p, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fitted["weights"].detach(), w, rtol=1e-10, atol=0)


M0, S0 = 0.5, 2.0


def normal_mixture_with_loc_prior(x):
    """Normal priors on the locs (a components plate, as Pyro's GMM tutorial), a plain pyro.param
    scale beside the guide's point estimates: MAP locs, maximum-likelihood scale."""
    weights = pyro.sample("weights", dist.Dirichlet(x.new_full((2,), 1.5)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(x.new_tensor(M0), S0))
    scale = pyro.param("scale", x.new_tensor(2.0), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[z], scale), obs=x)


def test_a_normal_prior_on_the_locs_is_the_precision_weighted_map():
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.randn(30, generator=g, dtype=torch.float64) - 3, torch.randn(20, generator=g) + 2.0])
    start = {"weights": x.new_tensor([0.5, 0.5]), "locs": x.new_tensor([-1.0, 1.0])}
    pyro.clear_param_store()
    guide = _delta_guide(normal_mixture_with_loc_prior, start)
    result = em(normal_mixture_with_loc_prior, x, guide=guide, max_iter=10, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert result.param_routes == {
        "AutoDelta.weights": "closed_form_map",
        "AutoDelta.locs": "closed_form_map",
        "scale": "closed_form",
    }
    w, m, s, n = start["weights"], start["locs"], x.new_tensor(2.0), len(x)
    for _ in range(10):
        r = (w.log() + dist.Normal(m, s).log_prob(x[:, None])).softmax(1)
        w = (r.sum(0) + 0.5) / (n + 1.0)
        m = ((r * x[:, None]).sum(0) / s**2 + M0 / S0**2) / (r.sum(0) / s**2 + 1 / S0**2)
        s = ((r * (x[:, None] - m) ** 2).sum() / n).sqrt()
    torch.testing.assert_close(guide.median(x)["locs"].detach(), m, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("scale").detach(), s, rtol=1e-10, atol=0)
    assert np.all(np.diff(result.objective) >= -1e-12)


def test_pyros_gmm_tutorial_mixes_map_and_gradient_routes_and_its_objective_includes_the_prior():
    """Pyro's GMM tutorial: Dirichlet(0.5) weights (a mode on the boundary: no closed form),
    a LogNormal scale (not conjugate): gradient steps; Normal locs: the MAP closed form."""
    from pyro.infer import config_enumerate

    @config_enumerate
    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(0.5 * data.new_ones(2)))
        scale = pyro.sample("scale", dist.LogNormal(data.new_tensor(0.0), 2.0))
        with pyro.plate("components", 2):
            locs = pyro.sample("locs", dist.Normal(data.new_tensor(0.0), 10.0))
        with pyro.plate("data", len(data)):
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)

    g = torch.Generator().manual_seed(0)
    data = torch.cat(
        [
            torch.randn(30, generator=g, dtype=torch.float64) * 0.8 - 2.0,
            torch.randn(20, generator=g, dtype=torch.float64) * 0.8 + 2.5,
        ]
    )
    start = {
        "weights": data.new_tensor([0.5, 0.5]),
        "scale": data.new_tensor(1.5),
        "locs": data.new_tensor([-1.0, 1.0]),
    }
    runs = {}
    for e_step in ("auto", "enum"):
        pyro.clear_param_store()
        guide = _delta_guide(model, start)
        runs[e_step] = em(
            model,
            data,
            guide=guide,
            max_iter=30,
            tol=0.0,
            device="cpu",
            e_step=e_step,
            m_step_steps=50,
            m_step_lr=0.02,
        )
    chain = runs["auto"]
    assert (chain.e_step, chain.m_step) == ("chain", "closed_form+gradient")
    assert chain.param_routes == {
        "AutoDelta.weights": "gradient",
        "AutoDelta.scale": "gradient",
        "AutoDelta.locs": "closed_form_map",
    }
    # the same objective (log-likelihood plus log prior, per point) at the same start
    assert chain.objective[0] == pytest.approx(runs["enum"].objective[0], rel=1e-12)
    assert chain.objective[0] != pytest.approx(chain.log_likelihood[0], rel=1e-3)
    assert np.all(np.diff(chain.objective) >= -1e-12)
    assert chain.converged and runs["enum"].converged
    assert chain.objective[-1] == pytest.approx(runs["enum"].objective[-1], rel=1e-9)


def categorical_hmm_with_priors(sequences):
    k, v = 3, 4
    init = pyro.sample("init", dist.Dirichlet(sequences.new_full((k,), 2.0)))
    trans = pyro.sample("trans", dist.Dirichlet(sequences.new_full((k, k), 3.0)).to_event(1))
    emit = pyro.sample("emit", dist.Dirichlet(sequences.new_full((k, v), 1.5)).to_event(1))
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(
                f"z_{t}", dist.Categorical(init if z is None else trans[z]), infer={"enumerate": "parallel"}
            )
            pyro.sample(f"y_{t}", dist.Categorical(emit[z]), obs=sequences[batch, t].unsqueeze(-1))


def test_dirichlet_priors_on_an_hmm_are_hmmlearns_map_baum_welch():
    hmm = pytest.importorskip("hmmlearn.hmm")
    g = torch.Generator().manual_seed(5)
    y = torch.randint(4, (15, 12), generator=g).double()
    y[:, 1::2] = (y[:, ::2] + 1) % 4  # some structure to learn
    s = _start()
    start = {
        "init": s["init"],
        "trans": s["trans"],
        "emit": torch.tensor(
            [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.3, 0.2]], dtype=y.dtype
        ),
    }
    peer = hmm.CategoricalHMM(
        K,
        n_iter=8,
        tol=0.0,
        init_params="",
        params="ste",
        n_features=4,
        startprob_prior=2.0,
        transmat_prior=3.0,
        emissionprob_prior=1.5,
    )
    peer.startprob_, peer.transmat_ = start["init"].numpy(), start["trans"].numpy()
    peer.emissionprob_ = start["emit"].numpy()
    peer.fit(y.long().numpy().reshape(-1, 1), lengths=[y.shape[1]] * y.shape[0])
    pyro.clear_param_store()
    guide = _delta_guide(categorical_hmm_with_priors, start)
    result = em(
        categorical_hmm_with_priors, y, guide=guide, data_plate="sequences", max_iter=8, tol=0.0, device="cpu"
    )
    assert (result.e_step, result.m_step) == ("chain", "closed_form"), result.closed_form_refused
    assert set(result.param_routes.values()) == {"closed_form_map"}
    history = np.array(peer.monitor_.history)
    np.testing.assert_allclose(np.array(result.log_likelihood[:8]) * len(y), history, rtol=1e-9)
    fitted = guide.median(y)
    np.testing.assert_allclose(fitted["trans"].detach().numpy(), peer.transmat_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fitted["emit"].detach().numpy(), peer.emissionprob_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fitted["init"].detach().numpy(), peer.startprob_, rtol=1e-8, atol=1e-12)
    assert np.all(np.diff(result.objective) >= -1e-12)


def mvn_mixture_with_loc_prior(x):
    """Independent Normal priors on the MVN locs (a point estimate each), covariances a plain
    pyro.param: MAP locs (sum_n r_nk P_k + I / s0^2)^-1 (P_k sum_n r_nk x_n + m0 / s0^2), then
    the weighted covariances about them."""
    s = _start(x.dtype)
    weights = pyro.sample("weights", dist.Dirichlet(x.new_full((K,), 2.0)))
    locs = pyro.sample("locs", dist.Normal(x.new_tensor(M0), S0).expand([K, D]).to_event(2))
    covs = pyro.param("covs", s["covs"], constraint=constraints.positive_definite)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]), obs=x)


def test_normal_priors_on_mvn_locs_give_the_precision_weighted_map():
    x = _mixture_data(seed=6)[::4]  # few points, so the prior matters
    s = _start()
    start = {"weights": s["w"], "locs": s["locs"]}
    pyro.clear_param_store()
    guide = _delta_guide(mvn_mixture_with_loc_prior, start)
    result = em(mvn_mixture_with_loc_prior, x, guide=guide, max_iter=8, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert result.param_routes == {
        "AutoDelta.weights": "closed_form_map",
        "AutoDelta.locs": "closed_form_map",
        "covs": "closed_form",
    }
    w, m, c = s["w"], s["locs"], s["covs"]
    for _ in range(8):
        r = (w.log() + dist.MultivariateNormal(m, covariance_matrix=c).log_prob(x[:, None])).softmax(1)
        nk = r.sum(0)
        w = (nk + 1.0) / (len(x) + K)
        p = torch.linalg.inv(c)
        a = nk[:, None, None] * p + torch.eye(D, dtype=x.dtype) / S0**2
        b = (p @ (r.T @ x).unsqueeze(-1)).squeeze(-1) + M0 / S0**2
        m = torch.linalg.solve(a, b)
        d = x[:, None] - m
        c = torch.einsum("nk,nki,nkj->kij", r, d, d) / nk[:, None, None]
    torch.testing.assert_close(guide.median(x)["locs"].detach(), m, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("covs").detach(), c, rtol=1e-10, atol=1e-12)
    assert np.all(np.diff(result.objective) >= -1e-12)


def hierarchical_rates(x):
    """A prior whose rate is itself a pyro.param: not a fixed prior, so no MAP closed form."""
    weights = pyro.sample("weights", dist.Dirichlet(x.new_full((2,), 2.0)))
    b = pyro.param("b", x.new_tensor(0.5), constraint=constraints.positive)
    rates = pyro.sample("rates", dist.Gamma(x.new_full((2,), A0), b).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Poisson(rates[z]), obs=x)


def test_a_prior_that_depends_on_a_param_falls_back_with_its_reason():
    x = _poisson_counts(n=60)
    start = {"weights": x.new_tensor([0.5, 0.5]), "rates": x.new_tensor([1.0, 4.0])}
    pyro.clear_param_store()
    guide = _delta_guide(hierarchical_rates, start)
    result = em(hierarchical_rates, x, guide=guide, max_iter=5, tol=0.0, device="cpu", m_step_steps=5)
    assert (result.e_step, result.m_step) == ("enum", "gradient")
    assert "priors' log-density" in result.closed_form_refused
    assert np.all(np.diff(result.objective) >= -1e-12)


def test_an_mvn_given_its_precision_matrix_falls_back_with_its_reason():
    def precision_mixture(x):
        s = _start(x.dtype)
        w = pyro.param("pw", s["w"], constraint=constraints.simplex)
        locs = pyro.param("plocs", s["locs"])
        precisions = pyro.param("pprec", s["covs"], constraint=constraints.positive_definite)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.MultivariateNormal(locs[z], precision_matrix=precisions[z]), obs=x)

    pyro.clear_param_store()
    result = em(precision_mixture, _mixture_data()[::10], max_iter=2, tol=0.0, device="cpu", m_step_steps=2)
    assert result.e_step == "enum"
    assert "precision_matrix" in result.closed_form_refused


@pytest.mark.parametrize("which", ["mvn", "map"])
def test_integer_sample_weights_equal_replicated_rows_for_mvn_and_map_fits(which):
    x = _mixture_data(seed=7)[::3] if which == "mvn" else _poisson_counts(n=60)
    weights = torch.arange(len(x)) % 3  # 0, 1 and 2 copies
    fits = []
    for data, sw in ((x, weights.double()), (x.repeat_interleave(weights, dim=0), None)):
        pyro.clear_param_store()
        if which == "mvn":
            result = em(mvn_mixture, data, max_iter=6, tol=0.0, device="cpu", sample_weight=sw)
            fitted = {n: pyro.param(n).detach() for n in ("w", "locs", "covs")}
        else:
            start = {"weights": x.new_tensor([0.5, 0.5]), "rates": x.new_tensor([1.0, 4.0])}
            guide = _delta_guide(poisson_mixture_with_priors, start)
            result = em(
                poisson_mixture_with_priors,
                data,
                guide=guide,
                max_iter=6,
                tol=0.0,
                device="cpu",
                sample_weight=sw,
            )
            fitted = {n: v.detach() for n, v in guide.median(data).items()}
        assert result.e_step == "chain"
        fits.append((result.objective, fitted))
    np.testing.assert_allclose(fits[0][0], fits[1][0], rtol=1e-10)
    for name, value in fits[0][1].items():
        torch.testing.assert_close(value, fits[1][1][name], rtol=1e-10, atol=1e-12)
