"""EM for a user's Pyro mixture of multivariate normals: the compiled chain route against
lvm_pyro's GaussianMixtureModel and scikit-learn.

The user's model is a plain Pyro function (``pyro.param`` weights / locs / covs, the covs
constrained ``positive_definite``, ``pyro.plate`` over the rows, a Categorical z and
``MultivariateNormal(locs[z], covariance_matrix=covs[z])`` observations, no guide, no M-step
code). ``em`` compiles it once into a chain and runs closed-form EM (``e_step == "chain"``,
every param on the ``"closed_form"`` route; asserted). Its MAP variant writes the weights and
locs as ``pyro.sample`` sites under conjugate priors (Dirichlet(2), Normal(0, 10)), point-
estimated by ``AutoDelta`` (routes ``"closed_form_map"``; asserted). Contenders, all float64
on the CPU, from the same start (uniform weights, K distinct data points as locs, the
diagonal of the feature variances as every covariance), tol=0:

- ``chain ML`` / ``chain MAP``: ``em(model, x, max_iter=it, tol=0.0, device="cpu")`` (the MAP
  with ``guide=AutoDelta(...)``);
- ``GaussianMixtureModel``: ``GaussianMixtureModel(K, D, "full", reg_covar=0.0)`` by
  ``em(..., init="current")``, the library's hand-written closed-form route;
- ``sklearn``: ``GaussianMixture(covariance_type="full", reg_covar=0, tol=0)`` with
  ``weights_init`` / ``means_init`` / ``precisions_init``.

Timing: each contender runs ``max_iter=1`` and ``max_iter=--iters``; the difference over
``--iters - 1`` is the time per iteration without the one-off work (the chain's compilation
and certification, the validation, scikit-learn's initialization), and the longer run over
``--iters`` is the time per iteration including it. Rounds run every contender in turn (the
order reversed every other round, so a change of load on a shared machine hits all of them),
and the medians over rounds are reported, with the ratios ours / GaussianMixtureModel and
ours / scikit-learn.

Agreement (fails loudly): the chain route's log-likelihood after every iteration equals
GaussianMixtureModel's to 1e-10 relative and scikit-learn's ``lower_bounds_`` to 1e-8; the
MAP route's objective (log-likelihood + log prior, per point) equals a hand-written MAP-ECM
(weights, then locs given the old covariances, then covariances about the new locs) to 1e-10
and never decreases.

Usage:
    python benchmarks/em_chain_mvn.py                     # the two problems, 3 rounds
    python benchmarks/em_chain_mvn.py --quick             # N=500, K=3, D=2, 1 round (the tests)
    python benchmarks/em_chain_mvn.py --out benchmarks/results/em_chain_mvn.md
    python benchmarks/em_chain_mvn.py --profile           # cProfile of the chain route's iterations
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shlex
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime

import numpy as np
import pyro
import pyro.distributions as dist
import sklearn
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import init_to_value
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits
from torch.distributions import constraints

from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GaussianMixtureModel

PROBLEMS = [(20_000, 8, 16), (100_000, 16, 8)]  # (N, K, D)
QUICK = [(500, 3, 2)]
ALPHA, S0 = 2.0, 10.0  # the MAP variant's Dirichlet concentration and Normal prior scale on the locs
CONTENDERS = ("chain ML", "chain MAP", "GaussianMixtureModel", "sklearn")


def make_problem(n: int, k: int, d: int, seed: int = 0, covariance: str = "full"):
    """x from a mixture of k Gaussians with random means (spread 3) and random covariances, and
    the start every contender takes: uniform weights, k distinct data points as locs, the
    feature variances as a diagonal covariance for every component (``covariance="diag"``: the
    feature standard deviations as every component's scales)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    mixing = rng.normal(scale=0.3, size=(k, d, d)) + np.eye(d)
    z = rng.integers(k, size=n)
    x = centers[z] + np.einsum("nij,nj->ni", mixing[z], rng.normal(size=(n, d)))
    start = dict(
        weights=torch.full((k,), 1.0 / k, dtype=torch.float64),
        locs=torch.from_numpy(x[rng.choice(n, k, replace=False)].copy()),
        covs=torch.diag(torch.from_numpy(x.var(0))).expand(k, d, d).clone(),
        covariance=covariance,
    )
    if covariance == "diag":
        start["scales"] = torch.from_numpy(x.std(0)).expand(k, d).clone()
    return torch.from_numpy(x), start


def _emission(x, locs, start, z):
    """The observation site: MultivariateNormal(locs[z], covs[z]), or for ``covariance="diag"``
    Normal(locs[z], scales[z]).to_event(1), its matrix or scales a pyro.param."""
    if start["covariance"] == "diag":
        scales = pyro.param("scales", start["scales"].clone(), constraint=constraints.positive)
        return pyro.sample("obs", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)
    covs = pyro.param("covs", start["covs"].clone(), constraint=constraints.positive_definite)
    return pyro.sample("obs", dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]), obs=x)


def ml_model(start: dict):
    """The user's mixture, maximum likelihood: every global a pyro.param."""

    def model(x):
        weights = pyro.param("weights", start["weights"].clone(), constraint=constraints.simplex)
        locs = pyro.param("locs", start["locs"].clone())
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            _emission(x, locs, start, z)

    return model


def map_model(start: dict):
    """The same mixture written the Bayesian way: weights and locs are sample sites under
    conjugate priors (point-estimated by an AutoDelta), the covariances a pyro.param."""
    k, d = start["locs"].shape

    def model(x):
        weights = pyro.sample("weights", dist.Dirichlet(x.new_full((k,), ALPHA)))
        locs = pyro.sample("locs", dist.Normal(x.new_zeros(()), S0).expand([k, d]).to_event(2))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            _emission(x, locs, start, z)

    return model


def fit_chain_ml(x, start, iters):
    pyro.clear_param_store()
    t0 = time.perf_counter()
    result = em(ml_model(start), x, max_iter=iters, tol=0.0, device="cpu")
    return time.perf_counter() - t0, result


def fit_chain_map(x, start, iters):
    pyro.clear_param_store()
    model = map_model(start)
    init = init_to_value(values={"weights": start["weights"].clone(), "locs": start["locs"].clone()})
    t0 = time.perf_counter()
    # the guide is built inside the timing: it is part of what a user's fit costs (it is cheap)
    guide = AutoDelta(poutine.block(model, hide=["z"]), init_loc_fn=init)
    result = em(model, x, guide=guide, max_iter=iters, tol=0.0, device="cpu")
    return time.perf_counter() - t0, result


def fit_gmm(x, start, iters):
    k, d = start["locs"].shape
    diag = start["covariance"] == "diag"
    gmm = GaussianMixtureModel(k, d, start["covariance"], reg_covar=0.0).double()
    covariances = start["scales"] ** 2 if diag else start["covs"]
    gmm.set_parameters(weights=start["weights"], means=start["locs"], covariances=covariances)
    t0 = time.perf_counter()
    result = em(gmm, x, max_iter=iters, tol=0.0, init="current", device="cpu", canonical_order=False)
    return time.perf_counter() - t0, result


def fit_sklearn(x, start, iters):
    xs = x.numpy()
    diag = start["covariance"] == "diag"
    gm = GaussianMixture(
        len(start["weights"]),
        covariance_type=start["covariance"],
        reg_covar=0.0,
        max_iter=iters,
        tol=0.0,
        init_params="random_from_data",  # overridden by the three inits, cheap
        random_state=0,
        weights_init=start["weights"].numpy(),
        means_init=start["locs"].numpy(),
        precisions_init=(start["scales"] ** -2 if diag else torch.linalg.inv(start["covs"])).numpy(),
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(xs)
    return time.perf_counter() - t0, gm


FITS = {
    "chain ML": fit_chain_ml,
    "chain MAP": fit_chain_map,
    "GaussianMixtureModel": fit_gmm,
    "sklearn": fit_sklearn,
}


def map_reference(x: torch.Tensor, start: dict, iters: int) -> list[float]:
    """Hand-written MAP-ECM, the objective (log-likelihood + log prior) per point after each
    M-step: weights (n_k + alpha - 1) / (N + K (alpha - 1)); then the locs given the old
    covariances (prior mean 0), then the covariances about the new locs. Full: each loc
    (n_k P_k + I / s0^2)^-1 (P_k sum_n r_nk x_n) with P_k the old precision, each covariance the
    weighted scatter over n_k. Diag: each loc entry (n_k / s^2 + 1 / s0^2)^-1 sum_n r_nk x_n / s^2
    with the old scale s, each scale the weighted deviation."""
    diag = start["covariance"] == "diag"
    w, m = start["weights"].clone(), start["locs"].clone()
    spread = start["scales"].clone() if diag else start["covs"].clone()
    n, (k, d) = len(x), m.shape
    eye = torch.eye(d, dtype=x.dtype)
    prior_w, prior_m = dist.Dirichlet(x.new_full((k,), ALPHA)), dist.Normal(x.new_zeros(()), S0)
    objective = []
    for i in range(iters + 1):
        if diag:
            logp = w.log() + dist.Normal(m, spread).log_prob(x[:, None, :]).sum(-1)
        else:
            logp = w.log() + dist.MultivariateNormal(m, covariance_matrix=spread).log_prob(x[:, None, :])
        ll = logp.logsumexp(1)
        objective.append(float(ll.sum() + prior_w.log_prob(w) + prior_m.log_prob(m).sum()) / n)
        if i == iters:
            return objective
        r = (logp - ll[:, None]).exp()
        nk = r.sum(0)
        w = (nk + ALPHA - 1) / (n + k * (ALPHA - 1))
        if diag:
            m = ((r.T @ x) / spread**2) / (nk[:, None] / spread**2 + 1 / S0**2)
            spread = ((r.T @ x**2 - 2 * m * (r.T @ x) + nk[:, None] * m**2) / nk[:, None]).sqrt()
            continue
        precision = torch.linalg.inv(spread)
        lhs = nk[:, None, None] * precision + eye / S0**2
        m = torch.linalg.solve(lhs, precision @ (r.T @ x)[..., None])[..., 0]
        spread = torch.stack([((r[:, j, None] * (x - m[j])).T @ (x - m[j])) / nk[j] for j in range(k)])
        spread = 0.5 * (spread + spread.transpose(-1, -2))
    return objective


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def check(x, start, iters: int, fits: dict) -> dict:
    """The agreement checks on one round's ``max_iter=iters`` fits; raises AssertionError."""
    ml, mapr, gmm, sk = (fits[name] for name in CONTENDERS)
    spread = "scales" if start["covariance"] == "diag" else "covs"
    closed = {"weights": "closed_form", "locs": "closed_form", spread: "closed_form"}
    assert ml.e_step == "chain" and ml.m_step == "closed_form", (ml.e_step, ml.m_step, ml.closed_form_refused)
    assert ml.param_routes == closed, ml.param_routes
    routes = {
        "AutoDelta.weights": "closed_form_map",
        "AutoDelta.locs": "closed_form_map",
        spread: "closed_form",
    }
    assert mapr.e_step == "chain" and mapr.m_step == "closed_form", (mapr.e_step, mapr.closed_form_refused)
    assert mapr.param_routes == routes, mapr.param_routes
    assert gmm.e_step == "closed_form" and not gmm.reseeded, (gmm.e_step, gmm.reseeded)
    assert len(ml.log_likelihood) == len(gmm.log_likelihood) == iters + 1
    out = {"vs GaussianMixtureModel": rel_diff(ml.log_likelihood, gmm.log_likelihood)}
    if out["vs GaussianMixtureModel"] > 1e-10:
        raise AssertionError(
            f"the chain route's log-likelihood trace differs from GaussianMixtureModel's by "
            f"{out['vs GaussianMixtureModel']:.2e} relative (> 1e-10):\n"
            f"{ml.log_likelihood}\n{gmm.log_likelihood}"
        )
    out["vs sklearn"] = rel_diff(ml.log_likelihood[:iters], sk.lower_bounds_)  # sklearn: before each M-step
    if out["vs sklearn"] > 1e-8:
        raise AssertionError(
            f"the chain route's trace differs from scikit-learn's by {out['vs sklearn']:.2e}"
        )
    out["MAP vs hand-written"] = rel_diff(mapr.objective, map_reference(x, start, iters))
    if out["MAP vs hand-written"] > 1e-10:
        raise AssertionError(
            f"the MAP route's objective differs from MAP-ECM by {out['MAP vs hand-written']:.2e}"
        )
    steps = np.diff(mapr.objective)
    if steps.min() < -1e-12 * abs(mapr.objective[-1]):
        raise AssertionError(f"the MAP objective decreased by {-steps.min():.2e}")
    if max(abs(a - b) for a, b in zip(mapr.objective, mapr.log_likelihood)) == 0:
        raise AssertionError("the MAP objective leaves out the log prior")
    return out


def warm_up(covariance: str) -> None:
    """One small fit per contender first, so one-time costs of the process (lazy imports,
    first calls into torch.linalg and Pyro) do not land in the first timed round."""
    x, start = make_problem(*QUICK[0], covariance=covariance)
    for fn in FITS.values():
        fn(x, start, 2)


def run_problem(n: int, k: int, d: int, iters: int, rounds: int, covariance: str) -> dict:
    x, start = make_problem(n, k, d, covariance=covariance)
    runs = {name: {"lo": [], "hi": []} for name in CONTENDERS}
    agreement = None
    for r in range(rounds):
        order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
        fits = {}
        for name in order:
            t_lo, _ = FITS[name](x, start, 1)
            t_hi, fits[name] = FITS[name](x, start, iters)
            runs[name]["lo"].append(t_lo)
            runs[name]["hi"].append(t_hi)
        if agreement is None:
            agreement = check(x, start, iters, fits)
        print(
            f"  N={n} K={k} D={d} round {r + 1}: "
            + ", ".join(
                f"{name} {runs[name]['lo'][-1]:.3f}/{runs[name]['hi'][-1]:.3f}s" for name in CONTENDERS
            ),
            flush=True,
        )
    out = {"n": n, "k": k, "d": d, "agreement": agreement, "ll": fits["chain ML"].log_likelihood[-1]}
    for name, t in runs.items():
        steady = [(hi - lo) / (iters - 1) for lo, hi in zip(t["lo"], t["hi"])]
        out[name] = dict(
            steady=statistics.median(steady),
            total=statistics.median(t["hi"]) / iters,
            one_off=statistics.median([lo - s for lo, s in zip(t["lo"], steady)]),
        )
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| N | K | D | contender | ms/iter | ms/iter incl. one-off | one-off s | "
        "ratio vs GMM | ratio vs sklearn | ratio incl. one-off vs GMM | vs sklearn |",
        "|" + "---|" * 11,
    ]
    for res in results:
        gmm, sk = res["GaussianMixtureModel"], res["sklearn"]
        for name in CONTENDERS:
            t = res[name]
            lines.append(
                f"| {res['n']} | {res['k']} | {res['d']} | {name} | {1000 * t['steady']:.1f} | "
                f"{1000 * t['total']:.1f} | {t['one_off']:.2f} | {t['steady'] / gmm['steady']:.2f} | "
                f"{t['steady'] / sk['steady']:.2f} | {t['total'] / gmm['total']:.2f} | "
                f"{t['total'] / sk['total']:.2f} |"
            )
    return "\n".join(lines)


def agreement_lines(results: list[dict]) -> str:
    return "\n".join(
        f"- N={r['n']} K={r['k']} D={r['d']}: chain ML log-likelihood trace vs GaussianMixtureModel "
        f"{r['agreement']['vs GaussianMixtureModel']:.1e}, vs scikit-learn's lower_bounds_ "
        f"{r['agreement']['vs sklearn']:.1e}; chain MAP objective vs hand-written MAP-ECM "
        f"{r['agreement']['MAP vs hand-written']:.1e} (max relative differences; final log-likelihood "
        f"{r['ll']:.6f} per point)"
        for r in results
    )


def profile(n: int, k: int, d: int, iters: int, covariance: str, top: int = 25) -> str:
    """cProfile of one chain-ML fit of ``iters`` iterations: the functions of lvm_pyro's em
    package and the torch calls with the most time (each per-iteration function has ncalls
    iters + 1: the last E-step evaluates the returned parameters)."""
    x, start = make_problem(n, k, d, covariance=covariance)
    fit_chain_ml(x, start, 1)
    prof = cProfile.Profile()
    prof.enable()
    fit_chain_ml(x, start, iters)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"lvm_pyro[/\\]infer[/\\]em", top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=500, K=3, D=2, one round (seconds)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="EM iterations of the long runs (>= 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads and numpy's BLAS threads")
    parser.add_argument("--sizes", default=None, help="problems as N:K:D,N:K:D (default: the two above)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of the chain route")
    parser.add_argument("--out", default=None, help="write the results as markdown here")
    parser.add_argument(
        "--covariance",
        choices=("full", "diag"),
        default="full",
        help="full: MultivariateNormal emissions (default); diag: Normal(locs[z], scales[z]).to_event(1)",
    )
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error("--iters must be at least 2 (the time per iteration is a difference with max_iter=1)")
    torch.set_num_threads(args.threads)
    problems = QUICK if args.quick else PROBLEMS
    if args.sizes:
        problems = [tuple(int(v) for v in size.split(":")) for size in args.sizes.split(",")]
    rounds = 1 if args.quick else args.rounds
    with threadpool_limits(args.threads):
        return run(args, problems, rounds)


def run(args, problems, rounds: int) -> int:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    header = (
        f"torch {torch.__version__}, pyro {pyro.__version__}, scikit-learn {sklearn.__version__}, float64, "
        f"cpu, {args.threads} thread(s) (torch and BLAS), {args.covariance} covariances, "
        f"{args.iters} iterations (tol=0), "
        f"{rounds} round(s), load average {load[0]:.2f} at the start"
    )
    print(header, flush=True)
    warm_up(args.covariance)
    results = [run_problem(n, k, d, args.iters, rounds, args.covariance) for n, k, d in problems]
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = f"{table(results)}\n\nAgreement (asserted):\n\n{agreement_lines(results)}\n"
    print()
    print(body)
    print(f"load average {load_end:.2f} at the end")
    prof = profile(*problems[0], args.iters, args.covariance) if args.profile else ""
    if prof:
        print(prof)
    if args.out:
        command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/em_chain_mvn.py", *sys.argv[1:]])
        text = (
            f"# EM on a user's Pyro mixture ({args.covariance} covariances, the chain route)\n\n"
            f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)\n\n"
            f"{header}, {load_end:.2f} at the end.\n\n"
            "ms/iter: median over rounds of (time of max_iter=iters - time of max_iter=1) / (iters - 1), "
            "without the one-off work; incl. one-off: median time of max_iter=iters / iters; one-off: "
            "the time of max_iter=1 less one iteration (the chain's compilation and certification, "
            "validation, scikit-learn's initialization). Ratios: contender / peer.\n\n" + body
        )
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
