"""Missing values in a Gaussian mixture: exact marginalization against imputation + scikit-learn.

scikit-learn's GaussianMixture refuses NaN, so its users impute first. Mean imputation puts the
imputed entries at the column mean with no spread: the fitted variances shrink and the
correlations fade. This benchmark draws data from a known mixture, removes a fraction of the
entries completely at random, and fits:

- ``ours (NaN marginalized)``: EM from :mod:`lvm_pyro.models.gmm.missing` (the E-step
  conditions on the observed entries of each row; exact EM for the observed-data likelihood);
- ``mean imputation + sklearn``: SimpleImputer(strategy="mean"), then GaussianMixture;
- ``iterative imputation + sklearn``: IterativeImputer (regression on the other columns, the
  stronger imputer scikit-learn offers), then GaussianMixture;
- ``complete data + sklearn``: the same rows before any entry was removed (the reference: the
  best any method can do with this N).

All fits start from the same parameters (k-means, best of 10, on the mean-imputed data), reg_covar=1e-6,
tol=1e-6 per point, at most 1000 iterations, float64. Components are matched to the truth by
their means (Hungarian assignment). Reported, as medians over the replicates: RMS error of the
means, relative Frobenius error of the covariances ||S_hat - S|| / ||S|| (mean over
components), max error of the weights, the average fitted variance over the true one, and the
held-out log-likelihood per point on complete test data, minus that of the true mixture.

Usage:
    python benchmarks/missing_values.py                 # the table in results/missing_values.md
    python benchmarks/missing_values.py --quick         # small sizes, 2 replicates
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from functools import partial

import numpy as np
import sklearn
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, SimpleImputer
from sklearn.mixture import GaussianMixture

from lvm_pyro.models.gmm.missing import (
    check_missing_data,
    expand_covariances,
    expected_statistics_missing,
    log_prob_missing,
    m_step_missing,
)

F64 = torch.float64
TOL, MAX_ITER, REG = 1e-6, 1000, 1e-6


def truth(K: int, D: int, cov_type: str, rng: np.random.Generator):
    """A mixture with overlapping, correlated components (sklearn shapes)."""
    w = rng.uniform(0.5, 1.5, K)
    w /= w.sum()
    mu = rng.normal(0, 2.5, (K, D))
    if cov_type == "full":
        covs = []
        for _ in range(K):
            A = rng.normal(0, 1, (D, D))
            C = A @ A.T / D + 0.2 * np.eye(D)
            covs.append(C)
        cov = np.stack(covs)
    else:  # diag
        cov = rng.uniform(0.3, 1.5, (K, D))
    return w, mu, cov


def full_covs(cov, cov_type, K, D):
    if cov_type == "full":
        return cov
    if cov_type == "tied":
        return np.broadcast_to(cov, (K, D, D))
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(D) for c in cov])


def sample(w, mu, cov_full, n, rng):
    z = rng.choice(len(w), size=n, p=w)
    L = np.linalg.cholesky(cov_full)
    x = mu[z] + np.einsum("nij,nj->ni", L[z], rng.normal(size=(n, mu.shape[1])))
    return x


def true_log_prob(x, w, mu, cov_full):
    t = torch.as_tensor
    return log_prob_missing(t(x), t(np.log(w)), t(mu), t(cov_full)).log_prob.numpy()


def initial_parameters(x_imputed, K, cov_type, seed):
    """k-means on the mean-imputed data: weights, means, precisions (sklearn shapes)."""
    labels = KMeans(K, n_init=10, random_state=seed).fit(x_imputed).labels_
    D = x_imputed.shape[1]
    w = np.bincount(labels, minlength=K) / len(labels)
    mu = np.stack([x_imputed[labels == k].mean(0) for k in range(K)])
    if cov_type == "full":
        prec = np.stack(
            [np.linalg.inv(np.cov(x_imputed[labels == k].T) + 1e-3 * np.eye(D)) for k in range(K)]
        )
    else:
        prec = np.stack([1.0 / (x_imputed[labels == k].var(0) + 1e-3) for k in range(K)])
    return w, mu, prec


def fit_ours(x_nan, init, cov_type):
    w0, mu0, prec0 = init
    K, D = mu0.shape
    t = torch.as_tensor
    x = t(x_nan)
    check_missing_data(x, fit=True)
    cov = np.linalg.inv(prec0) if cov_type == "full" else 1.0 / prec0
    w, mu, cov = t(w0), t(mu0), expand_covariances(t(cov), cov_type, K, D)
    shift = torch.nanmean(x, 0)
    prev, n_iter = -math.inf, 0
    while n_iter < MAX_ITER:
        n_iter += 1
        st = expected_statistics_missing(x, w.log(), mu, cov, shift=shift)
        ll = float(st.log_likelihood) / len(x)
        w, mu, c = m_step_missing(st, cov_type, REG)
        cov = expand_covariances(c, cov_type, K, D)
        if ll - prev < TOL:
            break
        prev = ll
    return w.numpy(), mu.numpy(), c.numpy(), n_iter


def fit_sklearn(x, init, cov_type):
    w0, mu0, prec0 = init
    gm = GaussianMixture(
        len(w0),
        covariance_type=cov_type,
        tol=TOL,
        max_iter=MAX_ITER,
        reg_covar=REG,
        weights_init=w0,
        means_init=mu0,
        precisions_init=prec0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(x)
    return gm.weights_, gm.means_, gm.covariances_, gm.n_iter_


def errors(fit, w, mu, cov_full, cov_type, x_test, ll_true):
    wh, muh, ch, _ = fit
    K, D = mu.shape
    ch_full = full_covs(ch, cov_type, K, D)
    cost = ((mu[:, None, :] - muh[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    perm = cols[np.argsort(rows)]
    wh, muh, ch_full = wh[perm], muh[perm], ch_full[perm]
    mean_rms = float(np.sqrt(((muh - mu) ** 2).mean()))
    cov_rel = float(
        np.mean([np.linalg.norm(ch_full[k] - cov_full[k]) / np.linalg.norm(cov_full[k]) for k in range(K)])
    )
    var_ratio = float(
        np.mean(np.diagonal(ch_full, axis1=1, axis2=2) / np.diagonal(cov_full, axis1=1, axis2=2))
    )
    w_err = float(np.abs(wh - w).max())
    ll = float(true_log_prob(x_test, wh, muh, ch_full).mean())
    return {
        "mean_rms": mean_rms,
        "cov_rel": cov_rel,
        "var_ratio": var_ratio,
        "w_err": w_err,
        "dll": ll - ll_true,
    }


def _iterative(x_nan, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return IterativeImputer(max_iter=10, random_state=seed).fit_transform(x_nan)


METHODS = (
    "ours (NaN marginalized)",
    "mean imputation + sklearn",
    "iterative imputation + sklearn",
    "complete data + sklearn",
)


def run(N, D, K, cov_type, missing, seeds, n_test):
    per = {m: [] for m in METHODS}
    times = {m: [] for m in METHODS}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        w, mu, cov = truth(K, D, cov_type, rng)
        cov_full = full_covs(cov, cov_type, K, D)
        x = sample(w, mu, cov_full, N, rng)
        x_test = sample(w, mu, cov_full, n_test, rng)
        ll_true = float(true_log_prob(x_test, w, mu, cov_full).mean())
        x_nan = np.where(rng.uniform(size=x.shape) < missing, np.nan, x)
        x_nan[np.isnan(x_nan).all(1), 0] = x[np.isnan(x_nan).all(1), 0]  # keep one entry per row
        x_mean = SimpleImputer(strategy="mean").fit_transform(x_nan)
        init = initial_parameters(x_mean, K, cov_type, seed)
        jobs = {
            METHODS[0]: (fit_ours, partial(np.asarray, x_nan)),
            METHODS[1]: (fit_sklearn, partial(SimpleImputer(strategy="mean").fit_transform, x_nan)),
            METHODS[2]: (fit_sklearn, partial(_iterative, x_nan, seed)),
            METHODS[3]: (fit_sklearn, partial(np.asarray, x)),
        }
        for name, (fit_function, prepare) in jobs.items():
            t0 = time.perf_counter()  # imputation included
            fit = fit_function(prepare(), init, cov_type)
            times[name].append(time.perf_counter() - t0)
            e = errors(fit, w, mu, cov_full, cov_type, x_test, ll_true)
            e["n_iter"] = fit[3]
            per[name].append(e)
    out = {}
    for name in METHODS:
        keys = per[name][0].keys()
        out[name] = {k: statistics.median(r[k] for r in per[name]) for k in keys}
        out[name]["time"] = statistics.median(times[name])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 replicates")
    parser.add_argument("--replicates", type=int, default=5)
    args = parser.parse_args(argv)
    seeds = range(2 if args.quick else args.replicates)
    N = 1000 if args.quick else 2000
    n_test = 5000 if args.quick else 20000
    D, K = 6, 3
    configs = [("full", 0.2), ("full", 0.4), ("diag", 0.2)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"Command: `python benchmarks/{os.path.basename(__file__)}{' --quick' if args.quick else ''}` "
        f"(torch {torch.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores, load average {load:.1f} at the "
        f"start). N={N} training rows, D={D}, K={K}, {len(seeds)} replicates (medians), "
        f"held-out log-likelihood on {n_test} complete rows; entries removed completely at random.\n"
    )
    print(
        "| cov | missing | method | mean RMS err | cov rel. err | fitted var / true var | max weight err "
        "| held-out ll - true ll (per point) | iterations | time s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cov_type, missing in configs:
        res = run(N, D, K, cov_type, missing, seeds, n_test)
        for name, r in res.items():
            print(
                f"| {cov_type} | {missing:.0%} | {name} | {r['mean_rms']:.3f} | {r['cov_rel']:.3f} | "
                f"{r['var_ratio']:.3f} | {r['w_err']:.3f} | {r['dll']:.4f} | {r['n_iter']:.0f} | "
                f"{r['time']:.2f} |"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
