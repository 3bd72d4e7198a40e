"""Gaussian mixture on data with NaN entries: exact marginal likelihood, E-step, M-step, EM."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.models.gmm import missing as gm
from lvm_pyro.models.gmm.missing import (
    MissingStatistics,
    check_missing_data,
    expand_covariances,
    expected_statistics_missing,
    fill_missing_with_means,
    log_prob_missing,
    m_step_missing,
    to_gmm_statistics,
)

TYPES = ("full", "tied", "diag", "spherical")
F64 = torch.float64


def _mixture(cov_type: str, K: int = 3, D: int = 4, seed: int = 0, spread: float = 4.0):
    """(weights, means, covariances (K, D, D)) of a random mixture of the given type."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(K, generator=g, dtype=F64) + 0.5
    w = w / w.sum()
    mu = spread * torch.randn(K, D, generator=g, dtype=F64)
    if cov_type == "full":
        A = torch.randn(K, D, D, generator=g, dtype=F64)
        cov = A @ A.mT / D + 0.5 * torch.eye(D, dtype=F64)
    elif cov_type == "tied":
        A = torch.randn(D, D, generator=g, dtype=F64)
        cov = (A @ A.T / D + 0.5 * torch.eye(D, dtype=F64)).expand(K, D, D).clone()
    elif cov_type == "diag":
        cov = torch.diag_embed(torch.rand(K, D, generator=g, dtype=F64) + 0.3)
    else:
        cov = (torch.rand(K, generator=g, dtype=F64) + 0.3)[:, None, None] * torch.eye(D, dtype=F64)
    return w, mu, cov


def _sample(w, mu, cov, n: int, seed: int = 1, missing: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    z = torch.multinomial(w, n, replacement=True, generator=g)
    L = torch.linalg.cholesky(cov)
    eps = torch.randn(n, mu.shape[1], generator=g, dtype=F64)
    x = mu[z] + (L[z] @ eps[..., None]).squeeze(-1)
    holes = torch.rand(x.shape, generator=g, dtype=F64) < missing
    return x, torch.where(holes, torch.nan, x), z


def _brute_log_prob(x, w, mu, cov):
    """Per row: the observed sub-vector and sub-covariance by hand, MultivariateNormal, logsumexp."""
    K = len(w)
    lps, resps = [], []
    for row in x:
        o = ~torch.isnan(row)
        if not o.any():
            lps.append(torch.zeros((), dtype=F64))
            resps.append(w.clone())
            continue
        lj = torch.stack(
            [w[k].log() + MultivariateNormal(mu[k][o], cov[k][o][:, o]).log_prob(row[o]) for k in range(K)]
        )
        lp = torch.logsumexp(lj, 0)
        lps.append(lp)
        resps.append(torch.exp(lj - lp))
    return torch.stack(lps), torch.stack(resps)


def _brute_statistics(x, w, mu, cov, sample_weight=None, shift=None):
    K, D = mu.shape
    shift = torch.zeros(D, dtype=F64) if shift is None else shift
    lp, resp = _brute_log_prob(x, w, mu, cov)
    nk, sx, sxx = torch.zeros(K, dtype=F64), torch.zeros(K, D, dtype=F64), torch.zeros(K, D, D, dtype=F64)
    total = torch.zeros((), dtype=F64)
    for i, row in enumerate(x):
        o = ~torch.isnan(row)
        if not o.any():
            continue
        m = ~o
        wi = 1.0 if sample_weight is None else float(sample_weight[i])
        total += wi * lp[i]
        for k in range(K):
            C = cov[k]
            e = row.clone()
            ccov = torch.zeros(D, D, dtype=F64)
            if m.any():
                Coo, Cmo = C[o][:, o], C[m][:, o]
                e[m] = mu[k][m] + Cmo @ torch.linalg.solve(Coo, row[o] - mu[k][o])
                ccov[torch.outer(m, m)] = (C[m][:, m] - Cmo @ torch.linalg.solve(Coo, Cmo.T)).flatten()
            e = e - shift
            r = wi * resp[i, k]
            nk[k] += r
            sx[k] += r * e
            sxx[k] += r * (torch.outer(e, e) + ccov)
    return nk, sx, sxx, total


def _args(w, mu, cov):
    return w.log(), mu, cov


# ----------------------------------------------------------------------------- exactness


ROUTES = {"per_row": 2**62, "per_pattern": -1}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cov_type", TYPES)
def test_log_prob_equals_brute_force_marginal(cov_type, route, monkeypatch):
    """Both routes of the full-covariance E-step: a batched factorization per pattern, or per
    row for rare patterns (diag and spherical take the diagonal fast path either way)."""
    monkeypatch.setattr(gm, "_PATTERN_FLOPS", ROUTES[route])
    w, mu, cov = _mixture(cov_type)
    _, x, _ = _sample(w, mu, cov, 150)
    assert torch.isnan(x).float().mean() > 0.1  # about 20% removed
    out = log_prob_missing(x, *_args(w, mu, cov))
    lp, resp = _brute_log_prob(x, w, mu, cov)
    torch.testing.assert_close(out.log_prob, lp, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.responsibilities, resp, rtol=0, atol=1e-10)
    torch.testing.assert_close(out.responsibilities.sum(1), torch.ones(len(x), dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cov_type", ["diag", "spherical"])
def test_diagonal_fast_path_equals_pattern_path(cov_type, monkeypatch):
    w, mu, cov = _mixture(cov_type)
    _, x, _ = _sample(w, mu, cov, 120)
    variances = torch.diagonal(cov, dim1=-2, dim2=-1)
    fast = log_prob_missing(x, w.log(), mu, variances)
    fast_stats = expected_statistics_missing(x, w.log(), mu, variances)
    monkeypatch.setattr(gm, "_is_diagonal", lambda c: False)
    for flops in ROUTES.values():
        monkeypatch.setattr(gm, "_PATTERN_FLOPS", flops)
        slow = log_prob_missing(x, w.log(), mu, cov)
        slow_stats = expected_statistics_missing(x, w.log(), mu, cov)
        torch.testing.assert_close(fast.log_prob, slow.log_prob, rtol=0, atol=1e-11)
        torch.testing.assert_close(fast_stats.sxx, slow_stats.sxx, rtol=0, atol=1e-10)
        torch.testing.assert_close(fast_stats.sx, slow_stats.sx, rtol=0, atol=1e-10)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("cov_type", TYPES)
def test_expected_statistics_equal_brute_force(cov_type, route, monkeypatch):
    monkeypatch.setattr(gm, "_PATTERN_FLOPS", ROUTES[route])
    w, mu, cov = _mixture(cov_type, seed=3)
    _, x, _ = _sample(w, mu, cov, 100, seed=4)
    g = torch.Generator().manual_seed(5)
    sw = torch.rand(len(x), generator=g, dtype=F64) * 2
    shift = torch.nanmean(x, 0)
    st = expected_statistics_missing(x, *_args(w, mu, cov), sample_weight=sw, shift=shift)
    nk, sx, sxx, total = _brute_statistics(x, w, mu, cov, sw, shift)
    torch.testing.assert_close(st.nk, nk, rtol=0, atol=1e-10)
    torch.testing.assert_close(st.sx, sx, rtol=0, atol=1e-10)
    torch.testing.assert_close(st.sxx, sxx, rtol=0, atol=1e-10)
    torch.testing.assert_close(st.log_likelihood, total, rtol=0, atol=1e-9)
    assert st.n_empty == 0


def test_statistics_are_additive_over_chunks_and_blocks(monkeypatch):
    w, mu, cov = _mixture("full", seed=6)
    _, x, _ = _sample(w, mu, cov, 200, seed=7)
    whole = expected_statistics_missing(x, *_args(w, mu, cov))
    parts = expected_statistics_missing(x[:70], *_args(w, mu, cov)) + expected_statistics_missing(
        x[70:], *_args(w, mu, cov)
    )
    monkeypatch.setattr(gm, "_BLOCK_ELEMENTS", 7)  # rows of one pattern split into many blocks
    blocked = expected_statistics_missing(x, *_args(w, mu, cov))
    for other in (parts, blocked):
        torch.testing.assert_close(other.sxx, whole.sxx, rtol=0, atol=1e-10)
        torch.testing.assert_close(other.sx, whole.sx, rtol=0, atol=1e-10)
        torch.testing.assert_close(other.log_likelihood, whole.log_likelihood, rtol=0, atol=1e-9)
    half = 0.5 * whole
    torch.testing.assert_close(half.nk, whole.nk / 2)


def test_integer_weights_equal_replicated_rows():
    w, mu, cov = _mixture("full", seed=8)
    _, x, _ = _sample(w, mu, cov, 60, seed=9)
    reps = torch.arange(60) % 3
    weighted = expected_statistics_missing(x, *_args(w, mu, cov), sample_weight=reps.to(F64))
    replicated = expected_statistics_missing(x.repeat_interleave(reps, 0), *_args(w, mu, cov))
    torch.testing.assert_close(weighted.sxx, replicated.sxx, rtol=0, atol=1e-10)
    torch.testing.assert_close(weighted.log_likelihood, replicated.log_likelihood, rtol=0, atol=1e-9)


def _true_model(w, mu, cov, cov_type):
    """The library's mixture set to the true parameters, and its covariances in scikit-learn's
    layout for ``cov_type`` (from the full (K, D, D) ``cov``)."""
    from lvm_pyro.models.gmm import GaussianMixtureModel

    model = GaussianMixtureModel(3, 4, cov_type).to(F64)
    sk_cov = {
        "full": cov,
        "tied": cov[0],
        "diag": torch.diagonal(cov, dim1=-2, dim2=-1),
        "spherical": cov[:, 0, 0],
    }[cov_type]
    model.set_parameters(weights=w, means=mu, covariances=sk_cov)
    return model, sk_cov


def test_complete_rows_match_the_mixture_model():
    """No NaN: the statistics and M-step are those of GaussianMixtureModel (every type)."""
    for cov_type in TYPES:
        w, mu, cov = _mixture(cov_type, seed=10)
        x, _, _ = _sample(w, mu, cov, 300, seed=11)
        model, sk_cov = _true_model(w, mu, cov, cov_type)
        ll, ref = model.expected_statistics(x, shift=x.mean(0))
        st = expected_statistics_missing(
            x, w.log(), mu, expand_covariances(sk_cov, cov_type, 3, 4), shift=x.mean(0)
        )
        torch.testing.assert_close(st.log_likelihood, ll.to(F64), rtol=1e-12, atol=1e-9)
        conv = to_gmm_statistics(st, cov_type)
        for a, b in ((conv.nk, ref.nk), (conv.sx, ref.sx), (conv.sxx, ref.sxx)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
        model.m_step_from_statistics(conv)
        weights, means, covs = m_step_missing(st, cov_type, model.reg_covar)
        torch.testing.assert_close(model.weights.detach(), weights, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.loc.detach(), means, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(model.covariances().detach(), covs, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- EM


def _em(x, w, mu, cov, cov_type, iters=200, tol=1e-10):
    K, D = mu.shape
    lls = []
    for _ in range(iters):
        st = expected_statistics_missing(x, w.log(), mu, cov, shift=torch.nanmean(x, 0))
        lls.append(float(st.log_likelihood))
        if len(lls) > 1 and abs(lls[-1] - lls[-2]) < tol * abs(lls[-1]):
            break
        w, mu, c = m_step_missing(st, cov_type, 1e-6)
        cov = expand_covariances(c, cov_type, K, D)
        if cov.dim() == 2:
            cov = torch.diag_embed(cov)
    return w, mu, cov, lls


@pytest.mark.parametrize("cov_type", TYPES)
def test_em_with_missing_values_recovers_the_parameters(cov_type):
    """EM on 20% missing entries recovers the truth within sampling error, about as well as
    EM on the complete data; the observed-data log-likelihood never decreases."""
    K, D, N = 3, 3, 4000
    w, mu, cov = _mixture(cov_type, K, D, seed=12, spread=3.0)
    full, x, _ = _sample(w, mu, cov, N, seed=13)
    g = torch.Generator().manual_seed(14)
    mu0 = mu + 0.7 * torch.randn(K, D, generator=g, dtype=F64)
    cov0 = torch.eye(D, dtype=F64).expand(K, D, D)
    w0 = torch.full((K,), 1.0 / K, dtype=F64)
    fits = {}
    for name, data in (("missing", x), ("complete", full)):
        wh, muh, covh, lls = _em(data, w0, mu0, cov0, cov_type)
        diffs = torch.diff(torch.tensor(lls, dtype=F64))
        assert bool((diffs >= -1e-9 * abs(lls[-1])).all()), (name, diffs.min())
        assert len(lls) < 200  # converged
        fits[name] = (wh, muh, covh)
    # sampling error of the means: sd / sqrt(n_k), with 80% of the entries observed
    se_mu = (torch.diagonal(cov, dim1=-2, dim2=-1) / (0.8 * N * w[:, None])).sqrt()
    se_cov = math.sqrt(2.0 / (0.8 * N * float(w.min()))) * float(torch.diagonal(cov, dim1=-2, dim2=-1).max())
    err = {}
    for name, (wh, muh, covh) in fits.items():
        err[name] = (
            float((wh - w).abs().max()),
            float(((muh - mu).abs() / se_mu).max()),
            float((covh - cov).abs().max() / se_cov),
        )
        assert err[name][1] < 4.5, (name, err[name])  # means within 4.5 standard errors
        assert err[name][2] < 4.5, (name, err[name])
        assert err[name][0] < 4.5 * math.sqrt(0.25 / N)
    # about as well as the complete data (less information, so a bit worse on average)
    for j in range(3):
        assert err["missing"][j] < 2.5 * err["complete"][j] + (0.01 if j == 0 else 1.0), err


# ----------------------------------------------------------------------------- bad input


def test_rows_with_every_entry_missing():
    w, mu, cov = _mixture("full", seed=15)
    _, x, _ = _sample(w, mu, cov, 30, seed=16)
    x[[3, 17]] = torch.nan
    with pytest.raises(DataError, match=r"2 row\(s\) with every entry missing.*first row 3"):
        check_missing_data(x, fit=True)
    out = log_prob_missing(x, *_args(w, mu, cov))
    assert out.log_prob[3] == 0 and out.log_prob[17] == 0
    torch.testing.assert_close(out.responsibilities[3], w)
    st = expected_statistics_missing(x, *_args(w, mu, cov))
    assert st.n_empty == 2
    keep = torch.ones(30, dtype=torch.bool)
    keep[[3, 17]] = False
    ref = expected_statistics_missing(x[keep], *_args(w, mu, cov))
    torch.testing.assert_close(st.sxx, ref.sxx, rtol=0, atol=1e-12)
    torch.testing.assert_close(st.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-12)


def test_inf_is_refused_with_its_index():
    w, mu, cov = _mixture("diag", seed=17)
    _, x, _ = _sample(w, mu, cov, 10, seed=18)
    x[4, 2] = -torch.inf
    for call in (
        lambda: log_prob_missing(x, *_args(w, mu, cov)),
        lambda: expected_statistics_missing(x, *_args(w, mu, cov)),
        lambda: check_missing_data(x),
    ):
        with pytest.raises(DataError, match=r"1 infinite value\(s\), first at index \[4, 2\].*only NaN"):
            call()


def test_a_column_missing_in_every_row():
    w, mu, cov = _mixture("full", seed=19)
    _, x, _ = _sample(w, mu, cov, 50, seed=20)
    x[:, 1] = torch.nan
    with pytest.raises(DataError, match=r"column\(s\) \[1\] are missing \(NaN\) in every row"):
        check_missing_data(x, fit=True)
    # scoring still marginalizes it exactly
    lp, _ = _brute_log_prob(x, w, mu, cov)
    torch.testing.assert_close(log_prob_missing(x, *_args(w, mu, cov)).log_prob, lp, rtol=0, atol=1e-10)


def test_bad_arguments():
    w, mu, cov = _mixture("full", seed=21)
    x = torch.zeros(5, 4, dtype=F64)
    with pytest.raises(DataError, match="floating tensor"):
        log_prob_missing(x.long(), *_args(w, mu, cov))
    with pytest.raises(DataError, match="3 columns but the mixture has D=4"):
        log_prob_missing(x[:, :3], *_args(w, mu, cov))
    with pytest.raises(ConfigurationError, match="log_weights must be normalized"):
        log_prob_missing(x, w.log() + 0.1, mu, cov)
    with pytest.raises(ConfigurationError, match="covariances has shape"):
        log_prob_missing(x, w.log(), mu, cov[0])
    bad = cov.clone()
    bad[1] = -bad[1]
    with pytest.raises(ConfigurationError, match="not positive-definite"):
        log_prob_missing(x, w.log(), mu, bad)
    with pytest.raises(DataError, match="sample_weight must be finite and non-negative"):
        expected_statistics_missing(x, *_args(w, mu, cov), sample_weight=-torch.ones(5, dtype=F64))
    with pytest.raises(DataError, match="one weight per row"):
        expected_statistics_missing(x, *_args(w, mu, cov), sample_weight=torch.ones(4, dtype=F64))
    st = expected_statistics_missing(x, *_args(w, mu, cov))
    with pytest.raises(ConfigurationError, match="covariance_type"):
        m_step_missing(st, "banana", 1e-6)
    with pytest.raises(ConfigurationError, match="reg_covar"):
        m_step_missing(st, "full", -1.0)


def test_dtype_follows_the_parameters():
    w, mu, cov = _mixture("full", seed=22)
    _, x, _ = _sample(w, mu, cov, 40, seed=23)
    ref = log_prob_missing(x, *_args(w, mu, cov))
    out = log_prob_missing(x.float(), w.log().float(), mu.float(), cov.float())
    assert out.log_prob.dtype == torch.float32 and out.responsibilities.dtype == torch.float32
    torch.testing.assert_close(out.log_prob.double(), ref.log_prob, rtol=1e-5, atol=1e-4)
    st = expected_statistics_missing(x.float(), w.log().float(), mu.float(), cov.float())
    assert st.sxx.dtype == torch.float32 and st.log_likelihood.dtype == F64


def test_fill_missing_with_means():
    x = torch.tensor([[1.0, torch.nan], [3.0, 4.0], [torch.nan, 2.0]], dtype=F64)
    assert fill_missing_with_means(x).tolist() == [[1.0, 3.0], [3.0, 4.0], [2.0, 2.0]]
    assert isinstance(
        0.5
        * expected_statistics_missing(
            x, torch.zeros(1, dtype=F64), torch.zeros(1, 2, dtype=F64), torch.eye(2, dtype=F64)[None]
        ),
        MissingStatistics,
    )


def test_validate_missing_data_keeps_nan_and_refuses_the_rest():
    import numpy as np

    from lvm_pyro.data import validate_data
    from lvm_pyro.models.gmm.missing import validate_missing_data

    a = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, np.nan]])
    x = validate_missing_data(a, dtype=F64)
    assert x.dtype == F64 and torch.isnan(x).tolist() == [[False, True, False], [False, False, True]]
    assert x[0, 0] == 1 and x[1, 1] == 5
    y = validate_missing_data([[1.0, float("nan")]], event_shape=(2,))
    assert torch.isnan(y[0, 1]) and y.dtype == validate_data([[1.0, 0.0]]).dtype
    t = torch.tensor(a, dtype=torch.float32)
    assert validate_missing_data(t).dtype == torch.float32
    complete = np.arange(6.0).reshape(3, 2)
    assert torch.equal(validate_missing_data(complete), validate_data(complete))
    with pytest.raises(DataError, match=r"1 infinite value\(s\), first at index \[0, 1\].*only NaN"):
        validate_missing_data(np.array([[1.0, np.inf], [np.nan, 1.0]]))
    with pytest.raises(DataError, match="expects"):  # validate_data's shape message
        validate_missing_data(a, event_shape=(2,))
    with pytest.raises(DataError, match="every entry missing"):
        validate_missing_data(np.array([[np.nan, np.nan], [1.0, 2.0]]), fit=True)
    with pytest.raises(DataError, match=r"column\(s\) \[0\]"):
        validate_missing_data(np.array([[np.nan, 1.0], [np.nan, 2.0]]), fit=True)


def test_log_joint_is_consistent():
    w, mu, cov = _mixture("full", seed=24)
    _, x, _ = _sample(w, mu, cov, 50, seed=25)
    x[7] = torch.nan
    out = log_prob_missing(x, *_args(w, mu, cov))
    torch.testing.assert_close(torch.logsumexp(out.log_joint, 1), out.log_prob, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.log_joint[7], w.log(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cov_type", TYPES)
def test_model_m_step_from_converted_statistics_equals_m_step_missing(cov_type):
    """The wiring route: GaussianMixtureModel.m_step_from_statistics(to_gmm_statistics(...)) on
    data with NaN gives the parameters of m_step_missing."""
    from lvm_pyro.models.gmm import GaussianMixtureModel

    w, mu, cov = _mixture(cov_type, seed=26)
    _, x, _ = _sample(w, mu, cov, 400, seed=27)
    model = GaussianMixtureModel(3, 4, cov_type, reg_covar=1e-4).to(F64)
    st = expected_statistics_missing(x, *_args(w, mu, cov), shift=torch.nanmean(x, 0))
    model.m_step_from_statistics(to_gmm_statistics(st, cov_type))
    weights, means, covs = m_step_missing(st, cov_type, 1e-4)
    torch.testing.assert_close(model.weights.detach(), weights, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.loc.detach(), means, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.covariances().detach(), covs, rtol=1e-9, atol=1e-10)


def test_pattern_groups_partition_the_rows_beyond_62_features():
    g = torch.Generator().manual_seed(28)
    observed = torch.rand(300, 130, generator=g) > 0.02
    observed[100:200] = observed[0]  # one frequent pattern
    observed[250:] = True
    patterns, groups = gm._pattern_groups(observed)
    assert len(torch.unique(patterns, dim=0)) == len(patterns) == len(groups)
    assert sorted(torch.cat(groups).tolist()) == list(range(300))
    for pattern, rows in zip(patterns, groups, strict=True):
        assert bool((observed[rows] == pattern).all())


def test_many_features_against_brute_force():
    """D = 65 (masks packed in two words), every row its own pattern (per-row route)."""
    w, mu, cov = _mixture("full", K=2, D=65, seed=29)
    _, x, _ = _sample(w, mu, cov, 12, seed=30)
    out = log_prob_missing(x, *_args(w, mu, cov))
    lp, resp = _brute_log_prob(x, w, mu, cov)
    torch.testing.assert_close(out.log_prob, lp, rtol=0, atol=1e-10)
    nk, sx, sxx, _ = _brute_statistics(x, w, mu, cov)
    st = expected_statistics_missing(x, *_args(w, mu, cov))
    torch.testing.assert_close(st.sxx, sxx, rtol=0, atol=1e-10)
    torch.testing.assert_close(st.sx, sx, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov_type", TYPES)
def test_split_route_complete_rows_by_the_model(cov_type):
    """The optional speed-up of the wiring: complete rows through the model's own E-step, rows
    with NaN through expected_statistics_missing, summed: equal to all rows through ours."""
    w, mu, cov = _mixture(cov_type, seed=31)
    _, x, _ = _sample(w, mu, cov, 300, seed=32)
    model, sk_cov = _true_model(w, mu, cov, cov_type)
    shift = torch.nanmean(x, 0)
    complete = ~torch.isnan(x).any(1)
    assert 0 < int(complete.sum()) < len(x)
    ll_c, st_c = model.expected_statistics(x[complete], shift=shift)
    st_m = expected_statistics_missing(x[~complete], *_args(w, mu, cov), shift=shift)
    split = st_c + to_gmm_statistics(st_m, cov_type)
    whole = expected_statistics_missing(x, *_args(w, mu, cov), shift=shift)
    ref = to_gmm_statistics(whole, cov_type)
    for a, b in ((split.nk, ref.nk), (split.sx, ref.sx), (split.sxx, ref.sxx)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(
        ll_c.to(F64) + st_m.log_likelihood, whole.log_likelihood, rtol=1e-12, atol=1e-9
    )


def test_an_entry_set_missing_in_place_is_seen_by_the_next_call():
    """The rows-with-NaN mask is remembered per data tensor (EM asks every iteration, with the
    same tensor): a NaN written into that tensor afterwards must be marginalized, not propagated."""
    w, mu, cov = _mixture("diag", seed=41)
    x, _, _ = _sample(w, mu, cov, 50, seed=42)
    model, _ = _true_model(w, mu, cov, "diag")
    shift = x.mean(0)
    complete, _ = model.expected_statistics(x, shift=shift)
    x[0, 1] = float("nan")
    marginal, _ = model.expected_statistics(x, shift=shift)
    keep = [0, 2, 3]  # the observed entries of row 0
    by_hand = torch.logsumexp(
        w.log() + MultivariateNormal(mu[:, keep], cov[:, keep][:, :, keep]).log_prob(x[0, keep]), 0
    )
    full = torch.logsumexp(w.log() + MultivariateNormal(mu, cov).log_prob(x[1:, None, :]), 1)
    torch.testing.assert_close(marginal.to(F64), (full.sum() + by_hand).to(F64), rtol=1e-9, atol=0)
