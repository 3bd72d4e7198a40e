"""A Gaussian mixture on data with missing entries (NaN), marginalized exactly.

With entries missing at random, the likelihood of a row is that of its observed entries:
p(x_o) = sum_k w_k N(x_o; mu_k[o], Sigma_k[o, o]), the Gaussian's marginal on the observed
coordinates o. EM conditions on them (Ghahramani and Jordan, 1994): given z = k the missing
block m is Gaussian with mean mu_k[m] + Sigma_k[m, o] Sigma_k[o, o]^-1 (x_o - mu_k[o]) and
covariance Sigma_k[m, m] - Sigma_k[m, o] Sigma_k[o, o]^-1 Sigma_k[o, m], so the expected
sufficient statistics

    n_k = sum_i w_i r_ik,   s_k = sum_i w_i r_ik E[x_i | x_o, z = k],
    S_k = sum_i w_i r_ik E[x_i x_i^T | x_o, z = k]

(r_ik = p(z_i = k | x_o), w_i the sample weights) give the M-step of every covariance type:
mu_k = s_k / n_k and the scatter S_k - n_k mu_k mu_k^T, divided by n_k (full), its diagonal
(diag), the mean of that diagonal (spherical), or summed over k and divided by sum_k n_k (tied).
This is exact EM for the observed-data likelihood: each iteration does not decrease it.

Pure functions of (x, log_weights, means, covariances); covariances are full (K, D, D)
matrices for every covariance type (the caller expands diag/spherical/tied), or (K, D)
variances for a diagonal mixture. Device and dtype follow ``means``; float64 is exact to
rounding.

Cost: rows are grouped by their pattern of missing entries. Complete rows are one pattern (the
fast path), and every pattern with enough rows costs one Cholesky factorization of its
observed block, batched over the K components, then batched triangular solves over its rows.
Rare patterns (with many features almost every row has its own) are factorized per (row,
component) in one batched pass per number of observed entries, so no Python loop runs over
thousands of patterns. With diagonal covariances (given as (K, D), or (K, D, D) with zero
off-diagonal entries) no factorization is needed and all rows go through one vectorized pass
whatever their pattern. Memory beyond the data is bounded by blocks of about 2^21 elements.

Rows with no observed entry carry no information: log p(x_o) = 0 and p(z | x_o) = w. They are
refused by :func:`check_missing_data` (the boundary check for fitting), and the functions here
report them (``log_prob`` 0, responsibilities = weights) and leave them out of the statistics
(counted in :attr:`MissingStatistics.n_empty`), which is exact: they do not change the
observed-data likelihood. A value of +-inf is refused everywhere: only NaN marks a missing
entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.models.gmm.statistics import GMMStatistics
from lvm_pyro.threads import single_threaded

__all__ = [
    "MissingLogProb",
    "MissingStatistics",
    "check_missing_data",
    "expand_covariances",
    "expected_statistics_missing",
    "fill_missing_with_means",
    "log_prob_missing",
    "m_step_missing",
    "to_gmm_statistics",
    "validate_missing_data",
]

_LOG_2PI = math.log(2 * math.pi)
#: elements of the largest block held at once: (K, rows, D), or (K, rows, D, D) on the per-row route
_BLOCK_ELEMENTS = 2**21
_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


class MissingLogProb(NamedTuple):
    """log p(x_o) per row (N,), the responsibilities p(z = k | x_o) (N, K) and the log joint
    log p(x_o, z = k) = log w_k + log N(x_o; mu_k[o], Sigma_k[o, o]) (N, K)."""

    log_prob: torch.Tensor
    responsibilities: torch.Tensor
    log_joint: torch.Tensor


@dataclass
class MissingStatistics:
    """Expected sufficient statistics of a Gaussian mixture given the observed entries.

    With x' = x - shift: ``nk`` (K,) = sum_i w_i r_ik, ``sx`` (K, D) = sum_i w_i r_ik
    E[x'_i | x_o, k], ``sxx`` (K, D, D) = sum_i w_i r_ik E[x'_i x'_i^T | x_o, k];
    ``log_likelihood`` = sum_i w_i log p(x_o,i) (float64); ``n_empty`` rows with no observed
    entry were left out. Additive over chunks of rows (``a + b``) and scalable (``c * a``), as
    stochastic EM needs.
    """

    shift: torch.Tensor
    nk: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor
    log_likelihood: torch.Tensor
    n_empty: int = 0

    def __add__(self, other: MissingStatistics) -> MissingStatistics:
        if not torch.equal(self.shift, other.shift):
            raise ConfigurationError("statistics computed about different shifts cannot be added")
        return MissingStatistics(
            self.shift,
            self.nk + other.nk,
            self.sx + other.sx,
            self.sxx + other.sxx,
            self.log_likelihood + other.log_likelihood,
            self.n_empty + other.n_empty,
        )

    def __mul__(self, c: float) -> MissingStatistics:
        c = float(c)
        return MissingStatistics(
            self.shift, c * self.nk, c * self.sx, c * self.sxx, c * self.log_likelihood, self.n_empty
        )

    __rmul__ = __mul__

    @property
    def n(self) -> float:
        return float(self.nk.sum())


# ----------------------------------------------------------------------------- input checks


def _inf_message(name: str, count: int, first: list[int]) -> str:
    return (
        f"{name} has {count} infinite value(s), first at index {first}: only NaN marks a "
        "missing entry; replace inf by NaN if it means 'not observed', or remove those rows"
    )


def check_missing_data(x, *, name: str = "x", fit: bool = False) -> torch.Tensor:
    """Check data whose NaN entries mark missing values; return the observed mask (N, D).

    Refused with :class:`~lvm_pyro.errors.DataError`: a tensor that is not floating or not
    2-D, +-inf entries (NaN is the only missing-value marker), and with ``fit=True`` (the
    boundary of fitting) rows with no observed entry and columns missing in every row (their
    parameters could not be estimated). Counts and first indices are in the messages.

    Example:
        >>> check_missing_data(torch.tensor([[1.0, float("nan")], [2.0, 3.0]])).tolist()
        [[True, False], [True, True]]
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise DataError(
            f"{name} must be a floating tensor with NaN marking missing entries, got "
            f"{type(x).__name__ if not torch.is_tensor(x) else x.dtype}"
        )
    if x.dim() != 2 or x.shape[1] == 0:
        raise DataError(f"{name} has shape {tuple(x.shape)}; pass a 2-D (N, D) array with D >= 1")
    observed = torch.isfinite(x)
    if not bool(observed.all()):
        inf = torch.isinf(x)
        if bool(inf.any()):
            first = [int(i) for i in torch.nonzero(inf)[0]]
            raise DataError(_inf_message(name, int(inf.sum()), first))
    if fit:
        empty = ~observed.any(1)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()
            raise DataError(
                f"{name} has {len(rows)} row(s) with every entry missing (NaN), first row "
                f"{int(rows[0])}: they carry no information about the mixture; drop them (keep "
                "the rows with at least one observed entry: x[~np.isnan(x).all(axis=1)] for numpy, "
                "x[~x.isnan().all(1)] for torch)"
            )
        never = ~observed.any(0)
        if bool(never.any()):
            cols = torch.nonzero(never).flatten().tolist()
            raise DataError(
                f"{name}: column(s) {cols[:10]} are missing (NaN) in every row, so their means "
                "and variances cannot be estimated: drop those columns"
            )
    return observed


def validate_missing_data(
    data,
    *,
    name: str = "data",
    event_shape=None,
    dtype: torch.dtype | None = None,
    device=None,
    fit: bool = False,
) -> torch.Tensor:
    """:func:`lvm_pyro.data.validate_data` (types, rank, shape, dtype, device, with its
    messages) for data whose NaN entries mark missing values: NaN is kept, +-inf refused, and
    with ``fit=True`` empty rows and all-missing columns refused (:func:`check_missing_data`).
    Data without NaN is returned exactly as ``validate_data`` returns it.

    Example:
        >>> validate_missing_data([[1.0, float("nan")], [2.0, 3.0]], dtype=torch.float64).isnan().sum().item()
        1
    """
    from lvm_pyro.data import validate_data

    if torch.is_tensor(data):
        nan = torch.isnan(data) if data.is_floating_point() else None
    else:
        try:
            array = np.asarray(data)
        except ValueError:  # ragged: validate_data says so
            array = None
        nan = None
        if array is not None and array.dtype.kind == "f":
            data, nan = array, torch.from_numpy(np.isnan(array))
    if nan is None or not bool(nan.any()):
        return validate_data(data, name=name, event_shape=event_shape, dtype=dtype, device=device)
    inf = np.isinf(data) if isinstance(data, np.ndarray) else torch.isinf(data)
    if bool(inf.any()):
        first = [int(i) for i in np.argwhere(np.asarray(inf))[0]]
        raise DataError(_inf_message(name, int(inf.sum()), first))
    filled = (
        np.where(np.asarray(nan), 0.0, data) if isinstance(data, np.ndarray) else data.masked_fill(nan, 0)
    )
    x = validate_data(filled, name=name, event_shape=event_shape, dtype=dtype, device=device)
    x = x.masked_fill(nan.to(x.device), float("nan"))
    check_missing_data(x, name=name, fit=fit)
    return x


def _is_diagonal(covariances: torch.Tensor) -> bool:
    """True when every off-diagonal entry of the (K, D, D) matrices is exactly zero."""
    off = covariances - torch.diag_embed(torch.diagonal(covariances, dim1=-2, dim2=-1))
    return not bool(off.any())


def _parameters(x, log_weights, means, covariances):
    """The parameters as tensors on means' device/dtype; (covariances, diagonal?)."""
    if not torch.is_tensor(means) or means.dim() != 2:
        raise ConfigurationError(f"means must be a (K, D) tensor, got {getattr(means, 'shape', means)}")
    K, D = means.shape
    like = dict(dtype=means.dtype, device=means.device)
    log_weights = torch.as_tensor(log_weights, **like)
    covariances = torch.as_tensor(covariances, **like)
    if tuple(log_weights.shape) != (K,):
        raise ConfigurationError(f"log_weights has shape {tuple(log_weights.shape)}, expected ({K},)")
    if tuple(covariances.shape) == (K, D):
        diagonal = True
        if bool((covariances <= 0).any()):
            raise ConfigurationError("diagonal covariances (K, D) must be positive")
    elif tuple(covariances.shape) == (K, D, D):
        diagonal = _is_diagonal(covariances)
        if diagonal:
            covariances = torch.diagonal(covariances, dim1=-2, dim2=-1)
            if bool((covariances <= 0).any()):
                raise ConfigurationError("covariances are not positive-definite")
    else:
        raise ConfigurationError(
            f"covariances has shape {tuple(covariances.shape)}, expected full matrices "
            f"({K}, {D}, {D}) (expand tied/diag/spherical first) or variances ({K}, {D})"
        )
    for name, t in (("log_weights", log_weights), ("means", means), ("covariances", covariances)):
        if not bool(torch.isfinite(t).all()):
            raise ConfigurationError(f"{name} has non-finite values")
    total = float(torch.logsumexp(log_weights, 0))
    if abs(total) > 10 * math.sqrt(torch.finfo(log_weights.dtype).eps):
        raise ConfigurationError(
            f"log_weights must be normalized (logsumexp 0), got logsumexp {total:.3g}: pass "
            "weights.log() of weights summing to 1, or torch.log_softmax(scores, 0)"
        )
    observed = check_missing_data(x)
    if x.shape[1] != D:
        raise DataError(f"x has {x.shape[1]} columns but the mixture has D={D} features")
    return x.to(**like), observed.to(means.device), log_weights, covariances, diagonal


# ----------------------------------------------------------------------------- the E-step


def _row_chunks(rows: torch.Tensor, K: int, D: int):
    step = max(1, _BLOCK_ELEMENTS // max(K * D, 1))
    return rows.split(step)


def _pattern_groups(observed: torch.Tensor):
    """(patterns (P, D) bool, [row indices of each]) for the distinct patterns of observed
    entries. The
    masks are packed into 62-bit integers first (torch.unique over rows of D booleans sorts
    them column by column, several times slower)."""
    N, D = observed.shape
    bits = torch.arange(D, device=observed.device) % 62
    words = torch.arange(D, device=observed.device) // 62
    codes = observed.new_zeros(N, int(words[-1]) + 1, dtype=torch.int64)
    codes.index_add_(1, words, observed.to(torch.int64) << bits)
    if codes.shape[1] == 1:
        _, inverse = torch.unique(codes[:, 0], return_inverse=True)
    else:
        _, inverse = torch.unique(codes, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse)
    starts = torch.cumsum(counts, 0) - counts
    patterns = observed[order[starts]]  # (P, D): one row of each pattern
    return patterns, order.split(counts.tolist())


def _cholesky(matrix: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise ConfigurationError(
            "covariances are not positive-definite (the Cholesky factorization of an observed "
            "block failed): increase reg_covar"
        )
    return L


def _diagonal_blocks(xs, observed, log_weights, mus, var, moments):
    """Diagonal covariances: every row in one vectorized pass, whatever its pattern."""
    K, D = mus.shape
    log_var = var.log()
    nonempty = torch.nonzero(observed.any(1)).flatten()
    for rows in _row_chunks(nonempty, K, D):
        x, obs = xs[rows], observed[rows]
        m = obs.to(xs.dtype)
        diff = torch.where(obs, x, 0.0)[None] - mus[:, None]  # (K, n, D)
        quad = (diff * diff / var[:, None] + (log_var + _LOG_2PI)[:, None]) * m
        lj = log_weights[:, None] - 0.5 * quad.sum(-1)
        if not moments:
            yield rows, lj, None, None
            continue
        xhat = torch.where(obs[None], x[None], mus[:, None])

        def cond(rw, miss=1.0 - m):
            return torch.diag_embed((rw @ miss) * var)

        yield rows, lj, xhat, cond


def _pattern_blocks(xs, o, mi, rows, log_weights, mus, cov, moments):
    """The rows of one pattern (observed o, missing mi): one Cholesky factorization of the
    observed block per component, batched over K, then triangular solves over the rows."""
    K, D = mus.shape
    c = len(o)
    L = _cholesky(cov[:, o[:, None], o[None, :]])
    half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    const = log_weights - half_logdet - 0.5 * c * _LOG_2PI
    if moments and len(mi):
        B = torch.linalg.solve_triangular(L, cov[:, o[:, None], mi[None, :]], upper=False)  # L^-1 S_om
        ccond = cov[:, mi[:, None], mi[None, :]] - B.mT @ B  # (K, m, m)
    complete = c == D
    for block in _row_chunks(rows, K, D):
        x = xs[block]
        diff = (x if complete else x[:, o])[None] - mus[:, None, o]  # (K, n, c)
        y = torch.linalg.solve_triangular(L, diff.mT, upper=False)  # (K, c, n)
        lj = const[:, None] - 0.5 * (y * y).sum(1)
        if not moments:
            yield block, lj, None, None
            continue
        if complete:  # the same rows for every component: (n, D), no copy
            yield block, lj, x, None
            continue
        xhat = x[None].expand(K, -1, -1).clone()
        cond = None
        if len(mi):
            xhat[:, :, mi] = mus[:, None, mi] + (B.mT @ y).mT

            def cond(rw, mi=mi, ccond=ccond):
                out = rw.new_zeros(K, D, D)
                out[:, mi[:, None], mi[None, :]] = rw.sum(1)[:, None, None] * ccond
                return out

        yield block, lj, xhat, cond


def _row_blocks(xs, observed, rows, c, log_weights, mus, cov, moments):
    """Rows with c observed entries each, in different patterns: one Cholesky factorization
    per (row, component), batched over both (no Python loop over the patterns)."""
    K, D = mus.shape
    step = max(1, _BLOCK_ELEMENTS // (K * D * D))
    for block in rows.split(step):
        x, obs = xs[block], observed[block]
        # per row: the observed columns first, then the missing ones, each in increasing order
        cols = torch.argsort((~obs).to(torch.int8), dim=1, stable=True)
        o, mi = cols[:, :c], cols[:, c:]
        L = _cholesky(cov[:, o[:, :, None], o[:, None, :]])  # (K, n, c, c)
        diff = x.gather(1, o)[None] - mus[:, o]  # (K, n, c)
        y = torch.linalg.solve_triangular(L, diff[..., None], upper=False)  # (K, n, c, 1)
        half_logdet = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)  # (K, n)
        lj = log_weights[:, None] - half_logdet - 0.5 * c * _LOG_2PI - 0.5 * (y * y).sum((-2, -1))
        if not moments:
            yield block, lj, None, None
            continue
        B = torch.linalg.solve_triangular(L, cov[:, o[:, :, None], mi[:, None, :]], upper=False)
        ccond = cov[:, mi[:, :, None], mi[:, None, :]] - B.mT @ B  # (K, n, m, m)
        cmean = mus[:, mi] + (B.mT @ y).squeeze(-1)  # (K, n, m)
        xhat = x[None].expand(K, -1, -1).clone()
        xhat.scatter_(2, mi[None].expand(K, -1, -1), cmean)
        flat = (mi[:, :, None] * D + mi[:, None, :]).flatten()  # (n m m,) into D x D

        def cond(rw, flat=flat, ccond=ccond):
            out = rw.new_zeros(K, D * D)
            out.index_add_(1, flat, (rw[:, :, None, None] * ccond).reshape(K, -1))
            return out.view(K, D, D)

        yield block, lj, xhat, cond


#: a pattern goes through its own batched factorization when (rows - 1) K c^3 exceeds this
#: (the Python overhead of one pattern, in flops); rarer patterns are factorized per row
_PATTERN_FLOPS = 2**18


def _blocks(xs, observed, log_weights, mus, cov, diagonal, moments):
    """Yield (rows, lj (K, n), xhat (K, n, D) or None, conditional second moment) over blocks
    of non-empty rows: lj = log w_k + log N(x_o; mu_k[o], Sigma_k[o, o]); xhat the rows with
    their missing entries replaced by E[x_m | x_o, k] (the rows themselves, (n, D), when
    complete); the last item a callable
    rw (K, n) -> sum_i rw_ik Cov[x_i | x_o, k] (K, D, D), or None when nothing is missing."""
    K, D = mus.shape
    if diagonal:
        yield from _diagonal_blocks(xs, observed, log_weights, mus, cov, moments)
        return
    if bool(observed.all()):  # no NaN: one pattern, no grouping
        every = torch.arange(D, device=xs.device)
        rows = torch.arange(len(xs), device=xs.device)
        yield from _pattern_blocks(xs, every, every[:0], rows, log_weights, mus, cov, moments)
        return
    rare: dict[int, list[torch.Tensor]] = {}
    patterns, groups = _pattern_groups(observed)
    for pattern, c, rows in zip(patterns, patterns.sum(1).tolist(), groups, strict=True):
        if c == 0:
            continue
        if c == D or (len(rows) - 1) * K * c**3 > _PATTERN_FLOPS:
            o, mi = torch.nonzero(pattern).flatten(), torch.nonzero(~pattern).flatten()
            yield from _pattern_blocks(xs, o, mi, rows, log_weights, mus, cov, moments)
        else:
            rare.setdefault(c, []).append(rows)
    for c, groups in sorted(rare.items()):
        yield from _row_blocks(xs, observed, torch.cat(groups), c, log_weights, mus, cov, moments)


@torch.no_grad()
def log_prob_missing(x: torch.Tensor, log_weights, means: torch.Tensor, covariances) -> MissingLogProb:
    """log p(x_o) of every row, marginalizing its NaN entries, and p(z = k | x_o).

    Args:
        x: (N, D) data, NaN where an entry is missing (at random).
        log_weights: (K,) log mixture weights.
        means: (K, D); its device and dtype are used throughout.
        covariances: (K, D, D) full matrices for every covariance type (or (K, D) variances).

    Returns:
        :class:`MissingLogProb` ``(log_prob (N,), responsibilities (N, K), log_joint (N, K))``;
        a row with every entry missing has log_prob 0 and the weights as responsibilities
        (reported, not refused: refuse them at the boundary of fitting with
        :func:`check_missing_data`).

    Example:
        >>> x = torch.tensor([[0.0, float("nan")]], dtype=torch.float64)
        >>> out = log_prob_missing(x, torch.zeros(1), torch.zeros(1, 2, dtype=torch.float64),
        ...                        torch.eye(2, dtype=torch.float64)[None])
        >>> round(float(out.log_prob[0]), 4)  # log N(0; 0, 1)
        -0.9189
    """
    xs, observed, log_weights, cov, diagonal = _parameters(x, log_weights, means, covariances)
    N, K = len(xs), len(means)
    with single_threaded(xs.device):
        log_prob = xs.new_zeros(N)
        log_joint = log_weights.expand(N, K).clone()
        for rows, lj, _, _ in _blocks(xs, observed, log_weights, means, cov, diagonal, moments=False):
            log_prob[rows] = torch.logsumexp(lj, 0)
            log_joint[rows] = lj.T
        resp = torch.exp(log_joint - log_prob[:, None])
    return MissingLogProb(log_prob, resp, log_joint)


@torch.no_grad()
def expected_statistics_missing(
    x: torch.Tensor,
    log_weights,
    means: torch.Tensor,
    covariances,
    sample_weight=None,
    *,
    shift: torch.Tensor | None = None,
) -> MissingStatistics:
    """E-step on data with NaN entries: the expected sufficient statistics given x_o.

    Args:
        x, log_weights, means, covariances: as :func:`log_prob_missing`.
        sample_weight: (N,) non-negative finite weights w_i (None: all 1).
        shift: (D,) statistics are of x - shift (None: zero); the data's column means keep
            the second moments accurate in float32.

    Returns:
        :class:`MissingStatistics`; rows with every entry missing are left out (exactly: they
        do not change the observed-data likelihood) and counted in ``n_empty``.

    Example:
        >>> x = torch.tensor([[1.0, float("nan")], [3.0, 2.0]], dtype=torch.float64)
        >>> st = expected_statistics_missing(x, torch.zeros(1), torch.zeros(1, 2, dtype=torch.float64),
        ...                                  torch.eye(2, dtype=torch.float64)[None])
        >>> st.sx.tolist()  # the missing entry's conditional mean is 0
        [[4.0, 2.0]]
    """
    xs, observed, log_weights, cov, diagonal = _parameters(x, log_weights, means, covariances)
    K, D = means.shape
    if shift is None:
        shift = xs.new_zeros(D)
    else:
        shift = torch.as_tensor(shift, dtype=xs.dtype, device=xs.device)
        if tuple(shift.shape) != (D,) or not bool(torch.isfinite(shift).all()):
            raise ConfigurationError(f"shift must be {D} finite numbers, got shape {tuple(shift.shape)}")
    weight = None
    if sample_weight is not None:
        weight = torch.as_tensor(sample_weight, dtype=xs.dtype, device=xs.device)
        if tuple(weight.shape) != (len(xs),):
            raise DataError(
                f"sample_weight has shape {tuple(weight.shape)}, expected ({len(xs)},): one weight per row"
            )
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise DataError("sample_weight must be finite and non-negative")
    with single_threaded(xs.device):
        xs = xs - shift
        mus = means - shift
        nk = xs.new_zeros(K)
        sx = xs.new_zeros(K, D)
        sxx = xs.new_zeros(K, D, D)
        total = torch.zeros((), dtype=torch.float64, device=xs.device)
        for rows, lj, xhat, cond in _blocks(xs, observed, log_weights, mus, cov, diagonal, moments=True):
            norm = torch.logsumexp(lj, 0)  # (n,)
            rw = torch.exp(lj - norm)  # (K, n)
            if weight is None:
                total += norm.sum(dtype=torch.float64)
            else:
                w = weight[rows]
                total += (w * norm).sum(dtype=torch.float64)
                rw = rw * w
            nk += rw.sum(1)
            if xhat.dim() == 2:  # complete rows: one matrix product for all K
                sx += rw @ xhat
                sxx += (xhat.T * rw[:, None, :]) @ xhat
            else:
                sx += (rw[:, None, :] @ xhat).squeeze(1)
                sxx += (xhat * rw[..., None]).mT @ xhat
            if cond is not None:
                sxx += cond(rw)
        n_empty = int((~observed.any(1)).sum())
        return MissingStatistics(shift, nk, sx, 0.5 * (sxx + sxx.mT), total, n_empty)


# ----------------------------------------------------------------------------- the M-step


def _check_type(covariance_type: str) -> None:
    if covariance_type not in _COVARIANCE_TYPES:
        raise ConfigurationError(
            f"covariance_type must be one of {_COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def m_step_missing(stats: MissingStatistics, covariance_type: str = "full", reg_covar: float = 1e-6):
    """Maximum-likelihood M-step from :class:`MissingStatistics`: (weights, means, covariances)
    in scikit-learn's shapes ((K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical), with
    reg_covar added to every variance and n_k floored at 10 eps as scikit-learn does.

    Example:
        >>> x = torch.tensor([[0.0, float("nan")], [2.0, 1.0]], dtype=torch.float64)
        >>> st = expected_statistics_missing(x, torch.zeros(1), torch.zeros(1, 2, dtype=torch.float64),
        ...                                  torch.eye(2, dtype=torch.float64)[None])
        >>> [round(v, 6) for v in m_step_missing(st, "diag", 0.0)[1][0].tolist()]
        [1.0, 0.5]
    """
    _check_type(covariance_type)
    if not (isinstance(reg_covar, (int, float)) and math.isfinite(reg_covar) and reg_covar >= 0):
        raise ConfigurationError(f"reg_covar must be non-negative and finite, got {reg_covar!r}")
    nk_raw = stats.nk
    nk = nk_raw + 10 * torch.finfo(nk_raw.dtype).eps
    D = stats.sx.shape[1]
    weights = nk / nk.sum()
    mu = stats.sx / nk[:, None]
    # scatter about mu_k: S_k - s_k mu_k^T - mu_k s_k^T + n_k mu_k mu_k^T
    outer = stats.sx[:, :, None] * mu[:, None, :]
    scatter = stats.sxx - outer - outer.mT + nk_raw[:, None, None] * mu[:, :, None] * mu[:, None, :]
    eye = torch.eye(D, dtype=nk.dtype, device=nk.device)
    if covariance_type == "full":
        cov = scatter / nk[:, None, None] + reg_covar * eye
        cov = 0.5 * (cov + cov.mT)
    elif covariance_type == "tied":
        cov = scatter.sum(0) / nk.sum() + reg_covar * eye
        cov = 0.5 * (cov + cov.mT)
    else:
        var = torch.diagonal(scatter, dim1=-2, dim2=-1).clamp_min(0) / nk[:, None]
        cov = (var if covariance_type == "diag" else var.mean(1)) + reg_covar
    return weights, mu + stats.shift, cov


def to_gmm_statistics(stats: MissingStatistics, covariance_type: str):
    """The same statistics as a :class:`lvm_pyro.models.gmm.GMMStatistics` of the given
    covariance type, for ``GaussianMixtureModel.m_step_from_statistics`` (priors, reg_covar
    and its checks then apply unchanged)."""
    _check_type(covariance_type)
    sxx = stats.sxx
    if covariance_type == "tied":
        sxx = sxx.sum(0)
    elif covariance_type == "diag":
        sxx = torch.diagonal(sxx, dim1=-2, dim2=-1).contiguous()
    elif covariance_type == "spherical":
        sxx = torch.diagonal(sxx, dim1=-2, dim2=-1).sum(-1)
    return GMMStatistics(stats.shift, stats.nk, stats.sx, sxx)


def expand_covariances(
    covariances: torch.Tensor, covariance_type: str, n_components: int, n_features: int
) -> torch.Tensor:
    """scikit-learn-shaped covariances as this module takes them: full (K, D, D) as is, tied
    (D, D) repeated K times, diag (K, D) and spherical (K,) as (K, D) variances (the
    diagonal fast path).

    Example:
        >>> expand_covariances(torch.tensor([1.0, 2.0]), "spherical", 2, 3).tolist()
        [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    """
    _check_type(covariance_type)
    K, D = n_components, n_features
    if covariance_type == "tied":
        return covariances.expand(K, D, D)
    if covariance_type == "spherical":
        return covariances[:, None].expand(K, D)
    return covariances


def fill_missing_with_means(x: torch.Tensor) -> torch.Tensor:
    """x with each NaN replaced by its column's mean over the observed entries: a starting
    point for k-means initialization only (the fit itself marginalizes the missing entries).

    Example:
        >>> fill_missing_with_means(torch.tensor([[1.0, float("nan")], [3.0, 2.0]])).tolist()
        [[1.0, 2.0], [3.0, 2.0]]
    """
    observed = ~torch.isnan(x)
    means = torch.nansum(x, 0) / observed.sum(0).clamp_min(1)
    return torch.where(observed, x, means)
