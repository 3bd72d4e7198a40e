"""Baum-Welch for a user's HMM written as a Pyro program: lvm_pyro's ``em`` against hmmlearn.

The model is written the way Pyro's ``examples/hmm.py`` writes one (``pyro.markov`` over T
steps, sequences in ``pyro.plate("sequences", N, dim=-2)``, ``pyro.param`` parameters, no
guide, no M-step code); ``em`` compiles it once into a chain and runs closed-form EM
(``e_step="chain"``). hmmlearn (``CategoricalHMM`` / ``GaussianHMM`` with ``covars_prior=0``,
so that both compute the maximum-likelihood M-step) fits the same sequences from the same start.

Two measurements per problem:

- agreement: both run ``--iters`` iterations with tol=0; the log-likelihood after every
  iteration must agree to 1e-6 relative (hmmlearn's ``monitor_.history`` against
  ``EMResult.log_likelihood`` times N);
- speed: hmmlearn runs to its own convergence (its default tol=1e-2, up to 1000 iterations)
  and we time it; ``em`` runs from the same start until it reaches hmmlearn's converged
  log-likelihood (a callback stops it), its time including the compilation. Ratio = ours /
  hmmlearn (target <= 3). Rounds alternate the two, and the medians are reported.

Usage:
    python benchmarks/hmm_em.py               # the four problems, 3 rounds
    python benchmarks/hmm_em.py --quick       # small sizes, 1 round (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from lvm_pyro.infer.em import em

PROBLEMS = [(40, 25, 3), (200, 100, 5)]
QUICK = [(10, 8, 2)]
V = 6  # symbols of the categorical emissions


def make_model(kind: str, start: dict):
    """A Pyro HMM with its parameters initialized at ``start`` (as Pyro's examples/hmm.py)."""

    def model(sequences):
        init = pyro.param("init", start["init"].clone(), constraint=constraints.simplex)
        trans = pyro.param("trans", start["trans"].clone(), constraint=constraints.simplex)
        if kind == "categorical":
            emit = pyro.param("emit", start["emit"].clone(), constraint=constraints.simplex)
        else:
            loc = pyro.param("loc", start["loc"].clone())
            scale = pyro.param("scale", start["scale"].clone(), constraint=constraints.positive)
        with pyro.plate("sequences", sequences.shape[0], dim=-2) as batch:
            z = None
            for t in pyro.markov(range(sequences.shape[1])):
                z = pyro.sample(
                    f"z_{t}",
                    dist.Categorical(init if z is None else trans[z]),
                    infer={"enumerate": "parallel"},
                )
                y = sequences[batch, t].unsqueeze(-1)
                if kind == "categorical":
                    pyro.sample(f"y_{t}", dist.Categorical(emit[z]), obs=y)
                else:
                    pyro.sample(f"y_{t}", dist.Normal(loc[z], scale[z]), obs=y)

    return model


def make_problem(kind: str, n: int, t: int, k: int, seed: int = 0):
    """Sequences from a random HMM, and a random start (the same for both contenders)."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.ones(k) * 0.5, size=k) + 2 * np.eye(k)
    trans /= trans.sum(1, keepdims=True)
    init = rng.dirichlet(np.ones(k))
    means = np.linspace(-3, 3, k)
    emit = rng.dirichlet(np.ones(V) * 0.5, size=k)
    states = np.zeros((n, t), dtype=int)
    states[:, 0] = rng.choice(k, size=n, p=init)
    for i in range(1, t):
        u = rng.random(n)[:, None]
        states[:, i] = (u > np.cumsum(trans[states[:, i - 1]], 1)).sum(1)
    if kind == "categorical":
        u = rng.random((n, t))[..., None]
        y = (u > np.cumsum(emit[states], -1)).sum(-1).astype(np.float64)
    else:
        y = means[states] + rng.standard_normal((n, t))
    start = dict(
        init=torch.as_tensor(rng.dirichlet(np.ones(k) * 5)),
        trans=torch.as_tensor(rng.dirichlet(np.ones(k) * 5, size=k)),
        emit=torch.as_tensor(rng.dirichlet(np.ones(V) * 5, size=k)),
        loc=torch.as_tensor(np.sort(rng.normal(0, 2, k))),
        scale=torch.as_tensor(rng.uniform(0.8, 1.5, k)),
    )
    return torch.as_tensor(y), start


def hmmlearn_model(kind: str, start: dict, n_iter: int, tol: float):
    from hmmlearn import hmm

    k = len(start["init"])
    if kind == "categorical":
        m = hmm.CategoricalHMM(k, n_iter=n_iter, tol=tol, init_params="", params="ste", n_features=V)
        m.emissionprob_ = start["emit"].numpy()
    else:
        m = hmm.GaussianHMM(
            k, covariance_type="diag", n_iter=n_iter, tol=tol, init_params="", params="stmc", covars_prior=0.0
        )
        m.means_ = start["loc"].numpy()[:, None]
        m.covars_ = (start["scale"].numpy() ** 2)[:, None]
    m.startprob_ = start["init"].numpy()
    m.transmat_ = start["trans"].numpy()
    return m


def fit_hmmlearn(kind, y, start, n_iter, tol):
    x = y.numpy().reshape(-1, 1)
    if kind == "categorical":
        x = x.astype(int)
    m = hmmlearn_model(kind, start, n_iter, tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        m.fit(x, lengths=[y.shape[1]] * y.shape[0])
        elapsed = time.perf_counter() - t0
    return m, elapsed


def fit_ours(kind, y, start, iters, target=None):
    pyro.clear_param_store()
    n = y.shape[0]
    callbacks = []
    if target is not None:

        def stop_at_target(state):
            if state.log_likelihood[-1] * n >= target - 1e-9 * abs(target):
                state.stop = True

        callbacks.append(stop_at_target)
    t0 = time.perf_counter()
    result = em(
        make_model(kind, start),
        y,
        data_plate="sequences",
        max_iter=iters,
        tol=0.0,
        device="cpu",
        callbacks=callbacks,
    )
    return result, time.perf_counter() - t0


def run(kind, n, t, k, rounds, iters):
    y, start = make_problem(kind, n, t, k)
    # agreement after the same number of iterations
    m, _ = fit_hmmlearn(kind, y, start, iters, 0.0)
    ours, _ = fit_ours(kind, y, start, iters)
    theirs = np.array(m.monitor_.history)  # ll before each M-step
    mine = np.array(ours.log_likelihood[: len(theirs)]) * n
    rel = float(np.max(np.abs(mine - theirs) / np.abs(theirs)))
    # speed to hmmlearn's converged log-likelihood, alternating, medians
    t_h, t_o, it_h, it_o = [], [], [], []
    for _ in range(rounds):
        m, elapsed = fit_hmmlearn(kind, y, start, 1000, 1e-2)
        target = float(m.monitor_.history[-1])
        t_h.append(elapsed)
        it_h.append(m.monitor_.iter)
        result, elapsed = fit_ours(kind, y, start, 1000, target)
        t_o.append(elapsed)
        it_o.append(result.n_iter)
        reached = result.log_likelihood[-1] * n >= target - 1e-9 * abs(target)
    assert ours.e_step == "chain" and ours.m_step == "closed_form", (ours.e_step, ours.m_step)
    th, to = statistics.median(t_h), statistics.median(t_o)
    return dict(
        kind=kind,
        n=n,
        t=t,
        k=k,
        rel=rel,
        iters=len(theirs),
        t_h=th,
        t_o=to,
        ratio=to / th,
        it_h=statistics.median(it_h),
        it_o=statistics.median(it_o),
        reached=reached,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (seconds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="iterations of the agreement check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (hmmlearn is single-threaded)")
    parser.add_argument("--kinds", default="categorical,gaussian", help="emissions to run")
    parser.add_argument("--sizes", default=None, help="problems as N:T:K,N:T:K (default: the issue's two)")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(args.threads)
    problems = QUICK if args.quick else PROBLEMS
    if args.sizes:
        problems = [tuple(int(v) for v in size.split(":")) for size in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    import hmmlearn

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, hmmlearn {hmmlearn.__version__}, "
        f"float64, torch threads {args.threads}, {rounds} round(s), load average {load:.1f}"
    )
    print()
    print(
        "| emissions | N | T | K | rel. diff after same iterations | hmmlearn s (iters) | "
        "ours s (iters) | ratio | target <= 3 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for n, t, k in problems:
            r = run(kind, n, t, k, rounds, args.iters)
            ok = "ok" if r["ratio"] <= 3 else "MISSED"
            print(
                f"| {kind} | {n} | {t} | {k} | {r['rel']:.1e} ({r['iters']} it) | {r['t_h']:.3f} "
                f"({r['it_h']:.0f}) | {r['t_o']:.3f} ({r['it_o']:.0f}) | {r['ratio']:.2f} | {ok} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
