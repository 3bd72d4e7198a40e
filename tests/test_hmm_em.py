"""HMMs written like Pyro's examples/hmm.py, fitted by em at Baum-Welch speed (the compiled
chain route): the log-likelihood is the forward algorithm's, the M-step is Baum-Welch's (written
out here), and hmmlearn agrees iteration for iteration where it is installed."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

from lvm_pyro.infer.em import em

K, V = 3, 4


def _start(dtype=torch.float64):
    return dict(
        init=torch.tensor([0.5, 0.3, 0.2], dtype=dtype),
        trans=torch.tensor([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.1, 0.3, 0.6]], dtype=dtype),
        emit=torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.3, 0.2]], dtype=dtype),
        loc=torch.tensor([-1.0, 0.0, 1.5], dtype=dtype),
        scale=torch.tensor([1.0, 1.2, 0.8], dtype=dtype),
    )


def categorical_hmm(sequences):
    s = _start(sequences.dtype)
    init = pyro.param("init", s["init"], constraint=constraints.simplex)
    trans = pyro.param("trans", s["trans"], constraint=constraints.simplex)
    emit = pyro.param("emit", s["emit"], constraint=constraints.simplex)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(
                f"z_{t}", dist.Categorical(init if z is None else trans[z]), infer={"enumerate": "parallel"}
            )
            pyro.sample(f"y_{t}", dist.Categorical(emit[z]), obs=sequences[batch, t].unsqueeze(-1))


def gaussian_hmm(sequences):
    s = _start(sequences.dtype)
    init = pyro.param("init", s["init"], constraint=constraints.simplex)
    trans = pyro.param("trans", s["trans"], constraint=constraints.simplex)
    loc = pyro.param("loc", s["loc"])
    scale = pyro.param("scale", s["scale"], constraint=constraints.positive)
    with pyro.plate("sequences", len(sequences), dim=-2) as batch:
        z = None
        for t in pyro.markov(range(sequences.shape[1])):
            z = pyro.sample(
                f"z_{t}", dist.Categorical(init if z is None else trans[z]), infer={"enumerate": "parallel"}
            )
            pyro.sample(f"y_{t}", dist.Normal(loc[z], scale[z]), obs=sequences[batch, t].unsqueeze(-1))


def _sequences(kind, n=12, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.zeros(n, t, dtype=torch.long)
    states[:, 0] = torch.randint(K, (n,), generator=g)
    for i in range(1, t):
        move = torch.rand(n, generator=g) < 0.25
        states[:, i] = torch.where(move, torch.randint(K, (n,), generator=g), states[:, i - 1])
    if kind == "categorical":
        noise = torch.randint(V, (n, t), generator=g)
        return torch.where(torch.rand(n, t, generator=g) < 0.7, states, noise).double()
    return torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)[states] + torch.randn(
        n, t, generator=g, dtype=torch.float64
    )


def _log_emission(kind, p, y):
    if kind == "categorical":
        return p["emit"].log().T[y.long()]
    return dist.Normal(p["loc"], p["scale"]).log_prob(y[..., None])


def forward_algorithm(log_init, log_trans, log_emission):
    """log p(y_1..T) per sequence; log_emission is (N, T, K)."""
    alpha = log_init + log_emission[:, 0]
    for t in range(1, log_emission.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + log_trans, 1) + log_emission[:, t]
    return torch.logsumexp(alpha, 1)


def baum_welch(kind, p, y):
    """One Baum-Welch iteration written out (forward-backward in log space, then the M-step)."""
    le = _log_emission(kind, p, y)
    n, t, _ = le.shape
    lt = p["trans"].log()
    alpha = torch.empty(n, t, K, dtype=y.dtype)
    beta = torch.zeros(n, t, K, dtype=y.dtype)
    alpha[:, 0] = p["init"].log() + le[:, 0]
    for i in range(1, t):
        alpha[:, i] = torch.logsumexp(alpha[:, i - 1, :, None] + lt, 1) + le[:, i]
    for i in range(t - 2, -1, -1):
        beta[:, i] = torch.logsumexp(lt + (le[:, i + 1] + beta[:, i + 1])[:, None, :], 2)
    log_z = torch.logsumexp(alpha[:, -1], 1)
    gamma = (alpha + beta - log_z[:, None, None]).exp()
    xi = (
        alpha[:, :-1, :, None] + lt + (le[:, 1:] + beta[:, 1:])[:, :, None, :] - log_z[:, None, None, None]
    ).exp()
    new = dict(init=gamma[:, 0].mean(0), trans=xi.sum((0, 1)) / xi.sum((0, 1, 3))[:, None])
    w = gamma.reshape(-1, K)
    if kind == "categorical":
        new["emit"] = (
            torch.nn.functional.one_hot(y.long().reshape(-1), V).double().T.matmul(w).T / w.sum(0)[:, None]
        )
    else:
        yy = y.reshape(-1, 1)
        new["loc"] = (w * yy).sum(0) / w.sum(0)
        new["scale"] = ((w * (yy - new["loc"]) ** 2).sum(0) / w.sum(0)).sqrt()
    return log_z, new


@pytest.mark.parametrize("kind, model", [("categorical", categorical_hmm), ("gaussian", gaussian_hmm)])
def test_em_on_a_pyro_hmm_is_baum_welch_and_its_log_likelihood_the_forward_algorithm(kind, model):
    y = _sequences(kind)
    pyro.clear_param_store()
    result = em(model, y, data_plate="sequences", max_iter=6, tol=0.0, device="cpu")
    assert (result.e_step, result.m_step) == ("chain", "closed_form")
    assert set(result.param_routes.values()) == {"closed_form"}
    p = {k: v for k, v in _start().items()}
    for i in range(6):
        log_z, p_next = baum_welch(kind, p, y)
        assert result.log_likelihood[i] == pytest.approx(float(log_z.mean()), rel=1e-12)
        p = {**p, **p_next}
    for name, value in p.items():
        if name in pyro.get_param_store():
            torch.testing.assert_close(pyro.param(name).detach(), value, rtol=1e-10, atol=1e-12)
    final = forward_algorithm(p["init"].log(), p["trans"].log(), _log_emission(kind, p, y))
    assert result.log_likelihood[-1] == pytest.approx(float(final.mean()), rel=1e-12)
    assert np.all(np.diff(result.log_likelihood) >= -1e-12)


@pytest.mark.parametrize("kind, model", [("categorical", categorical_hmm), ("gaussian", gaussian_hmm)])
def test_em_on_a_pyro_hmm_agrees_with_hmmlearn_iteration_for_iteration(kind, model):
    hmm = pytest.importorskip("hmmlearn.hmm")
    y = _sequences(kind, n=15, t=12, seed=1)
    s = _start()
    if kind == "categorical":
        peer = hmm.CategoricalHMM(K, n_iter=8, tol=0.0, init_params="", params="ste", n_features=V)
        peer.emissionprob_ = s["emit"].numpy()
        x = y.long().numpy().reshape(-1, 1)
    else:
        peer = hmm.GaussianHMM(K, "diag", n_iter=8, tol=0.0, init_params="", params="stmc", covars_prior=0.0)
        peer.means_, peer.covars_ = s["loc"].numpy()[:, None], (s["scale"].numpy() ** 2)[:, None]
        x = y.numpy().reshape(-1, 1)
    peer.startprob_, peer.transmat_ = s["init"].numpy(), s["trans"].numpy()
    peer.fit(x, lengths=[y.shape[1]] * y.shape[0])
    pyro.clear_param_store()
    result = em(model, y, data_plate="sequences", max_iter=8, tol=0.0, device="cpu")
    history = np.array(peer.monitor_.history)
    ours = np.array(result.log_likelihood[: len(history)]) * len(y)
    np.testing.assert_allclose(ours, history, rtol=1e-9)
    np.testing.assert_allclose(pyro.param("trans").detach().numpy(), peer.transmat_, rtol=1e-8, atol=1e-10)


def test_padded_sequences_are_masked_on_the_chain_route():
    """Pyro's padding (poutine.mask on steps past a sequence's length): the masked steps drop out
    of the M-step; the log-likelihood counts log K per masked step, as the enumeration route does."""
    y = _sequences("gaussian", n=6, t=7)
    lengths = torch.tensor([7, 3, 5, 7, 2, 6])

    def padded(sequences, lengths):
        s = _start(sequences.dtype)
        init = pyro.param("init", s["init"], constraint=constraints.simplex)
        trans = pyro.param("trans", s["trans"], constraint=constraints.simplex)
        loc = pyro.param("loc", s["loc"])
        with pyro.plate("sequences", len(sequences), dim=-2) as batch:
            z = None
            for t in pyro.markov(range(sequences.shape[1])):
                with pyro.poutine.mask(mask=(t < lengths[batch]).unsqueeze(-1)):
                    z = pyro.sample(
                        f"z_{t}",
                        dist.Categorical(init if z is None else trans[z]),
                        infer={"enumerate": "parallel"},
                    )
                    pyro.sample(f"y_{t}", dist.Normal(loc[z], 1.0), obs=sequences[batch, t].unsqueeze(-1))

    runs = []
    for e_step in ("auto", "enum"):
        pyro.clear_param_store()
        with pytest.warns(UserWarning, match="masked"):
            runs.append(
                em(
                    padded,
                    (y, lengths),
                    data_plate="sequences",
                    max_iter=1,
                    tol=0.0,
                    device="cpu",
                    e_step=e_step,
                )
            )
    assert runs[0].e_step == "chain"
    assert runs[0].log_likelihood[0] == pytest.approx(runs[1].log_likelihood[0], rel=1e-12)
    # the M-step of the chain route: Baum-Welch on the unpadded sequences
    p = {k: v for k, v in _start().items() if k in ("init", "trans", "loc")}
    gammas, xis = [], []
    for i, n in enumerate(lengths.tolist()):
        seq = y[i : i + 1, :n]
        le = dist.Normal(p["loc"], 1.0).log_prob(seq[..., None])
        alpha = [p["init"].log() + le[:, 0]]
        for t in range(1, n):
            alpha.append(torch.logsumexp(alpha[-1][:, :, None] + p["trans"].log(), 1) + le[:, t])
        beta = [torch.zeros(1, K, dtype=y.dtype)]
        for t in range(n - 2, -1, -1):
            beta.insert(0, torch.logsumexp(p["trans"].log() + (le[:, t + 1] + beta[0])[:, None, :], 2))
        log_z = torch.logsumexp(alpha[-1], 1)
        gammas.append(torch.cat([(a + b - log_z).exp() for a, b in zip(alpha, beta)]))
        xis += [
            (alpha[t - 1][0, :, None] + p["trans"].log() + (le[0, t] + beta[t][0])[None, :] - log_z).exp()
            for t in range(1, n)
        ]
    loc = sum((g * y[i, : len(g), None]).sum(0) for i, g in enumerate(gammas)) / sum(g.sum(0) for g in gammas)
    trans = sum(xis) / sum(xis).sum(1, keepdim=True)
    pyro.clear_param_store()
    with pytest.warns(UserWarning, match="masked"):
        em(padded, (y, lengths), data_plate="sequences", max_iter=1, tol=0.0, device="cpu")
    torch.testing.assert_close(pyro.param("loc").detach(), loc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pyro.param("trans").detach(), trans, rtol=1e-10, atol=1e-12)
    assert math.isfinite(runs[0].log_likelihood[-1])


def test_a_second_order_chain_is_refused_with_its_reason():
    y = _sequences("gaussian", n=5, t=6)

    def second_order(sequences):
        trans = pyro.param(
            "so_trans", torch.full((K, K, K), 1.0 / K, dtype=sequences.dtype), constraint=constraints.simplex
        )
        loc = pyro.param("so_loc", torch.linspace(-1, 1, K, dtype=sequences.dtype))
        with pyro.plate("sequences", len(sequences), dim=-2) as batch:
            a = b = 0
            for t in pyro.markov(range(sequences.shape[1]), history=2):
                c = pyro.sample(f"z_{t}", dist.Categorical(trans[a, b]), infer={"enumerate": "parallel"})
                pyro.sample(f"y_{t}", dist.Normal(loc[c], 1.0), obs=sequences[batch, t].unsqueeze(-1))
                a, b = b, c

    pyro.clear_param_store()
    result = em(second_order, y, data_plate="sequences", max_iter=1, tol=0.0, device="cpu", m_step_steps=2)
    assert result.e_step == "enum"
    assert "previous site of the chain" in result.closed_form_refused


def test_benchmark_runs_in_quick_mode():
    pytest.importorskip("hmmlearn")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "hmm_em.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--iters", "4"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [
        line
        for line in done.stdout.splitlines()
        if line.startswith("| categorical") or line.startswith("| gaussian")
    ]
    assert len(rows) == 2
    for row in rows:
        assert float(row.split("|")[5].split()[0]) < 1e-9  # the same log-likelihoods as hmmlearn


class HMMWithItsOwnMStep:
    """A user's HMM (model, guide) object whose m_step is Baum-Welch from the posteriors em
    passes: per-site marginals and the pairwise (z_{t-1}, z_t) marginals."""

    def __init__(self):
        self.max_plate_nesting = 2

    def model(self, sequences):
        gaussian_hmm(sequences)

    def guide(self, sequences):
        pass

    def m_step(self, sequences, posterior):
        t = sequences.shape[1]
        gamma = torch.stack([posterior[f"z_{i}"].reshape(len(sequences), K) for i in range(t)], 1)
        xi = torch.stack(
            [posterior[(f"z_{i - 1}", f"z_{i}")].reshape(len(sequences), K, K) for i in range(1, t)], 1
        )
        w, y = gamma.reshape(-1, K), sequences.reshape(-1, 1)
        loc = (w * y).sum(0) / w.sum(0)
        new = dict(
            init=gamma[:, 0].mean(0),
            trans=xi.sum((0, 1)) / xi.sum((0, 1, 3))[:, None],
            loc=loc,
            scale=((w * (y - loc) ** 2).sum(0) / w.sum(0)).sqrt(),
        )
        with torch.no_grad():
            for name, value in new.items():
                constraint = pyro.get_param_store().get_state()["constraints"][name]
                pyro.param(name).unconstrained().copy_(
                    torch.distributions.transform_to(constraint).inv(value)
                )


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_a_models_own_m_step_receives_pairwise_marginals_and_equals_the_closed_form(chunk_size):
    y = _sequences("gaussian", n=12, t=6, seed=3)
    pyro.clear_param_store()
    own = em(
        HMMWithItsOwnMStep(),
        y,
        data_plate="sequences",
        max_iter=4,
        tol=0.0,
        device="cpu",
        chunk_size=chunk_size,
    )
    assert (own.e_step, own.m_step) == ("enum", "model")
    ours = {n: pyro.param(n).detach().clone() for n in ("init", "trans", "loc", "scale")}
    pyro.clear_param_store()
    auto = em(gaussian_hmm, y, data_plate="sequences", max_iter=4, tol=0.0, device="cpu")
    assert auto.e_step == "chain"
    np.testing.assert_allclose(own.log_likelihood, auto.log_likelihood, rtol=1e-10)
    for name, value in ours.items():
        torch.testing.assert_close(value, pyro.param(name).detach(), rtol=1e-8, atol=1e-10)
