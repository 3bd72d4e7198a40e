"""The closed-form M-step of a compiled chain (:mod:`.chain`), in two halves: the expected
sufficient statistics of one E-step, and the solve that turns statistics into parameters.

Splitting the M-step this way is what online EM needs (Cappe and Moulines 2009): statistics of
minibatches are averaged with decaying step sizes (``a + b``, ``float * s``) and solved after
every step, so a user's mixture or HMM is fitted over data that never sits in memory whole.
Batch EM is the one-batch case: ``closed_form = solve(statistics(post))``.

What is kept, per closed-form param (``n``):

- Categorical / Bernoulli / Poisson / Exponential / Gamma-rate params and Normal locs or
  scales whose partner argument is a constant: two dense sums per entry (the numerator and
  denominator of the weighted maximum-likelihood ratio, e.g. counts, or sum w y and sum w);
- a Normal whose loc and scale are both params: per (loc entry, scale entry) pair that occurs,
  the sums W, sum w (y - r) and sum w (y - r)^2 about a reference r (the loc's value when the
  statistics were started), so that the locs can be solved with the current scales and the
  scales then about the new locs (exact conditional maximization, as Baum-Welch does);
- a MultivariateNormal whose loc rows and matrix rows are both params: per (loc row, matrix
  row) pair, W, sum w (y - r) and sum w (y - r)(y - r)^T; with constant matrices, the
  precision-weighted sums of the loc; with a constant loc, the scatter of the matrix rows.

The statistics are parameter-free whenever every param on the chain takes the closed form
(what online EM requires); a param fitted by gradient steps enters them at its current value.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch

#: roles solved after the others, about the locs the first stage has just updated
SECOND_STAGE = {
    (dist.Normal, "scale"),
    (dist.MultivariateNormal, "covariance_matrix"),
    (dist.MultivariateNormal, "scale_tril"),
}


class Statistics:
    """Expected sufficient statistics of a compiled chain: ``dense`` sums per param entry (or
    row), ``sparse`` sums per (loc, scale) pair that occurs, as (keys, values) with distinct
    keys, and the ``reference`` points the pair sums are centred on. They add and scale like
    numbers (``a + b``, ``gamma * s``): what online EM's running average needs."""

    def __init__(self, reference: dict) -> None:
        self.reference = reference
        self.dense: dict = {}
        self.sparse: dict = {}

    def add_dense(self, key, size: int, index: torch.Tensor, value: torch.Tensor) -> None:
        """sum value[e] into entry index[e] of the dense statistic ``key`` of ``size`` entries
        (statistics are kept in float64, whatever the data's dtype)."""
        value = value.double()
        if key not in self.dense:
            self.dense[key] = value.new_zeros((size, *value.shape[1:]))
        self.dense[key].index_add_(0, index, value)

    def add_sparse(self, key, keys: torch.Tensor, value: torch.Tensor) -> None:
        """sum value[e] into pair keys[e] of the sparse statistic ``key`` (in float64)."""
        value = value.double()
        if key in self.sparse:
            old_keys, old = self.sparse[key]
            keys, value = torch.cat([old_keys, keys]), torch.cat([old, value])
        distinct, inverse = torch.unique(keys, return_inverse=True)
        self.sparse[key] = (
            distinct,
            value.new_zeros((len(distinct), *value.shape[1:])).index_add_(0, inverse, value),
        )

    def __add__(self, other: Statistics) -> Statistics:
        if other.reference is not self.reference:
            raise ValueError("statistics about different reference points cannot be added")
        out = Statistics(self.reference)
        for key in {*self.dense, *other.dense}:
            a, b = self.dense.get(key), other.dense.get(key)
            out.dense[key] = a + b if a is not None and b is not None else (a if b is None else b).clone()
        for part in (self, other):
            for key, (keys, value) in part.sparse.items():
                out.add_sparse(key, keys, value)
        return out

    def __mul__(self, factor: float) -> Statistics:
        out = Statistics(self.reference)
        out.dense = {k: v * factor for k, v in self.dense.items()}
        out.sparse = {k: (keys, v * factor) for k, (keys, v) in self.sparse.items()}
        return out

    __rmul__ = __mul__


def _closed(c, src) -> bool:
    return src[0] == "param" and c.roles.get(src[1]) is not None


def _distinct(g, key: torch.Tensor, space: int, name: str):
    """The distinct pair keys (in [0, space)) of a group's elements and each element's place
    among them (computed once per group and ``name``): by a scatter over the key space where it
    is not much larger than the group, else a sort."""
    cache = g.__dict__.setdefault("_pairs", {})
    if name not in cache:
        if space <= max(2**22, 4 * len(key)):
            present = torch.zeros(space, dtype=torch.bool, device=key.device)
            present[key] = True
            distinct = present.nonzero().squeeze(-1)
            place = torch.empty(space, dtype=torch.long, device=key.device)
            place[distinct] = torch.arange(len(distinct), device=key.device)
            inverse = place[key]
        else:
            distinct, inverse = torch.unique(key, return_inverse=True)
        cache[name] = (distinct, inverse)
    return cache[name]


def _sorted(g, inverse: torch.Tensor, n_distinct: int):
    """The elements of a group ordered by their pair, and the number per pair (cached)."""
    if "_pair_order" not in g.__dict__:
        order = torch.argsort(inverse, stable=True)
        g._pair_order = (order, torch.bincount(inverse, minlength=n_distinct).tolist())
    return g._pair_order


def expected_statistics(c, values: dict, post, reference: dict | None = None) -> Statistics:
    """The (weighted) expected sufficient statistics of every closed-form param of the compiled
    chain ``c`` under the cell posteriors ``post`` (from ``c.e_step``); pair sums are centred on
    ``reference`` (default: ``values``)."""
    st = Statistics(values if reference is None else reference)
    for tab in c.tables:
        _table_statistics(c, tab, values, post, st)
    for g in c.groups:
        w = (c.posterior_at(g, post) * g.weight).double()  # sums in float64 (see Statistics)
        if g.family is dist.MultivariateNormal:
            _mvn_statistics(c, g, w, values, st)
        elif g.family is dist.Normal:
            _normal_statistics(c, g, w, values, st)
        else:
            _ratio_statistics(c, g, w, values, st)
    return st


def _table_statistics(c, tab, values: dict, post, st: Statistics) -> None:
    """An emission table's statistics from its (K, O) moments sum_n q w y'^p (y' = y - shift)."""
    if not any(_closed(c, src) for src in tab.sources):
        return
    m0, m1, m2 = tab.moments(tab.posterior(post, c.T, c.K))
    shift = tab.shift
    if tab.family is dist.MultivariateNormal:
        _mvn_table_statistics(c, tab, values, (m0, m1, m2), st)
        return
    if tab.family is dist.Normal:
        (lsrc, ssrc), (lix, six) = tab.sources, tab.idx
        loc, scale = tab.arguments(values)
        if lsrc[0] == "param" and ssrc[0] == "param":  # pair sums about the reference locs
            delta = st.reference[lsrc[1]].reshape(-1)[lix] - shift
            sums = torch.stack([m0, m1 - delta * m0, m2 - 2 * delta * m1 + delta**2 * m0], -1)
            keys = lix * values[ssrc[1]].numel() + six
            st.add_sparse(("normal", lsrc[1], ssrc[1]), keys.reshape(-1), sums.reshape(-1, 3))
            return
        if _closed(c, lsrc):  # a constant scale
            precision = scale**-2
            parts = {lsrc: (precision * (m1 + shift * m0), precision * m0)}
        else:  # a constant loc
            moved = loc - shift
            parts = {ssrc: (m2 - 2 * moved * m1 + moved**2 * m0, m0)}
        ix = lix if _closed(c, lsrc) else six
    else:
        ix = tab.idx[0]
        num, den = {dist.Bernoulli: (m1, m0 - m1), dist.Poisson: (m1, m0), dist.Exponential: (m0, m1)}[
            tab.family
        ]
        parts = {tab.sources[0]: (num, den)}
    for src, (num, den) in parts.items():
        if _closed(c, src):
            size = values[src[1]].numel()
            st.add_dense((src[1], "num"), size, ix.reshape(-1), num.reshape(-1))
            st.add_dense((src[1], "den"), size, ix.reshape(-1), den.reshape(-1))


def _scatter_about(m0, m1, m2, delta):
    """sum q w (y' - delta)(y' - delta)^T from the moments sum q w, sum q w y', sum q w y' y'^T
    (about a shift or a reference point), per state or pair."""
    outer = delta[:, :, None] * m1[:, None, :]
    return m2 - outer - outer.transpose(-1, -2) + m0[:, None, None] * delta[:, :, None] * delta[:, None, :]


def _mvn_table_statistics(c, tab, values: dict, moments: tuple, st: Statistics) -> None:
    m0, m1, m2 = moments
    (lsrc, msrc), (lix, mix) = tab.sources, tab.idx
    d = m1.shape[-1]
    if lsrc[0] == "param" and msrc[0] == "param":  # pair sums about the reference locs
        rows_of_loc = lix[:, 0] // d
        delta = st.reference[lsrc[1]].reshape(-1, d)[rows_of_loc] - tab.shift
        sums = torch.cat(
            [
                m0[:, None],
                m1 - delta * m0[:, None],
                _scatter_about(m0, m1, m2, delta).reshape(len(m0), d * d),
            ],
            -1,
        )
        keys = rows_of_loc * (values[msrc[1]].numel() // d**2) + mix
        st.add_sparse(("mvn", lsrc[1], msrc[1], tab.args[1]), keys, sums)
    elif _closed(c, lsrc):  # constant matrices: one precision per state
        n, rows = lsrc[1], lix[:, 0] // d
        precision = torch.cholesky_inverse(tab.trils(values)).double()
        size = values[n].numel() // d
        st.add_dense((n, "w"), size, rows, m0)
        st.add_dense((n, "P"), size, rows, m0[:, None, None] * precision)
        st.add_dense(
            (n, "Py"), size, rows, (precision @ (m1 + tab.shift * m0[:, None]).unsqueeze(-1)).squeeze(-1)
        )
    elif _closed(c, msrc):  # the matrix rows' scatter about constant locs
        n = msrc[1]
        size = values[n].numel() // d**2
        st.add_dense((n, "w"), size, mix, m0)
        st.add_dense((n, "S"), size, mix, _scatter_about(m0, m1, m2, tab.locs(values) - tab.shift))


def _ratio_statistics(c, g, w: torch.Tensor, values: dict, st: Statistics) -> None:
    """Families whose M-step is one ratio a / b per entry."""
    args, y = c._args(g, values), g.y
    for a, src in enumerate(g.sources):
        if not _closed(c, src):
            continue
        n, ix = src[1], g.idx[a]
        if g.family is dist.Categorical:
            num, den = w, torch.zeros_like(w)
        elif g.family is dist.Bernoulli:  # (successes, failures)
            num, den = w * y, w * (1 - y)
        elif g.family is dist.Poisson:
            num, den = w * y, w
        elif g.family is dist.Exponential:
            num, den = w, w * y
        else:  # a Gamma's rate, given its concentration
            num, den = w * args[0], w * y
        size = values[n].numel()
        st.add_dense((n, "num"), size, ix, num)
        st.add_dense((n, "den"), size, ix, den)


def _normal_statistics(c, g, w: torch.Tensor, values: dict, st: Statistics) -> None:
    (lsrc, ssrc), y = g.sources, g.y
    loc_closed, scale_closed = _closed(c, lsrc), _closed(c, ssrc)
    if not (loc_closed or scale_closed):
        return
    loc, scale = c._args(g, values)
    if lsrc[0] == "param" and ssrc[0] == "param":  # pair sums about the reference locs
        size = values[ssrc[1]].numel()
        space = values[lsrc[1]].numel() * size
        distinct, inverse = _distinct(g, g.idx[0] * size + g.idx[1], space, "normal")
        d = y - st.reference[lsrc[1]].reshape(-1)[g.idx[0]]
        wd = w * d
        sums = torch.stack(
            [w.new_zeros(len(distinct)).index_add_(0, inverse, t) for t in (w, wd, wd * d)], -1
        )
        st.add_sparse(("normal", lsrc[1], ssrc[1]), distinct, sums)
    elif loc_closed:  # a constant scale: precision-weighted sums
        precision = w / scale**2
        n = lsrc[1]
        st.add_dense((n, "num"), values[n].numel(), g.idx[0], precision * y)
        st.add_dense((n, "den"), values[n].numel(), g.idx[0], precision)
    else:  # a constant loc: squared deviations
        n = ssrc[1]
        st.add_dense((n, "num"), values[n].numel(), g.idx[1], w * (y - loc) ** 2)
        st.add_dense((n, "den"), values[n].numel(), g.idx[1], w)


def _mvn_statistics(c, g, w: torch.Tensor, values: dict, st: Statistics) -> None:
    (lsrc, msrc), y = g.sources, g.y
    d = y.shape[-1]
    loc_rows = lsrc[0] == "param" and g.loc_rows is not None
    loc_closed = loc_rows and _closed(c, lsrc)
    matrix_closed = _closed(c, msrc)
    if not (loc_closed or matrix_closed):
        return
    if loc_rows and msrc[0] == "param":  # pair sums about the reference locs
        rows = values[msrc[1]].numel() // d**2
        space = values[lsrc[1]].numel() // d * rows
        distinct, inverse = _distinct(g, g.loc_rows * rows + g.idx[1], space, "mvn")
        order, counts = _sorted(g, inverse, len(distinct))
        diff = (y - st.reference[lsrc[1]].reshape(-1, d)[g.loc_rows]).double()
        weighted = w[:, None] * diff
        scatter = torch.stack(
            [a.T @ b for a, b in zip(weighted[order].split(counts), diff[order].split(counts))]
        )
        sums = torch.cat(
            [
                w.new_zeros(len(distinct), 1).index_add_(0, inverse, w[:, None]),
                w.new_zeros(len(distinct), d).index_add_(0, inverse, weighted),
                scatter.reshape(len(distinct), d * d),
            ],
            -1,
        )
        st.add_sparse(("mvn", lsrc[1], msrc[1], g.args[1]), distinct, sums)
    elif loc_closed:  # constant matrices: one precision per event
        n, size = lsrc[1], values[lsrc[1]].numel() // d
        precision = torch.cholesky_inverse(c._tril(g, values)).double()
        st.add_dense((n, "w"), size, g.loc_rows, w)
        st.add_dense((n, "P"), size, g.loc_rows, w[:, None, None] * precision)
        st.add_dense(
            (n, "Py"), size, g.loc_rows, w[:, None] * (precision @ y.double().unsqueeze(-1)).squeeze(-1)
        )
    else:  # the matrix rows' scatter about locs that are constants (or not solved here)
        n, size = msrc[1], values[msrc[1]].numel() // d**2
        diff = (y - c._args(g, values)[0]).double()
        weighted = w[:, None] * diff
        scatter = [
            a.T @ b
            for a, b in zip(weighted[g.row_order].split(g.by_row[1]), diff[g.row_order].split(g.by_row[1]))
        ]
        rows = torch.as_tensor(g.by_row[0], device=w.device)
        st.add_dense((n, "w"), size, g.idx[1], w)
        st.add_dense((n, "S"), size, rows, torch.stack(scatter))


# ------------------------------------------------------------------ the solve


def solve(c, st: Statistics, values: dict) -> dict:
    """The closed-form params' new values from the statistics ``st`` (the weighted
    maximum-likelihood solution, or the MAP with a conjugate prior): locs and every other role
    first, with the current scales, then Normal scales and MultivariateNormal matrices about the
    new locs. An entry without weight keeps its value."""
    new = dict(values)
    for stage in (0, 1):
        for n in c.names:
            role = c.roles.get(n)
            if role is None or (role in SECOND_STAGE) != bool(stage):
                continue
            if role == (dist.MultivariateNormal, "loc"):
                new[n] = _mvn_locs(c, st, n, values)
            elif role[0] is dist.MultivariateNormal:
                new[n] = _mvn_matrices(c, st, n, values, new)
            else:
                new[n] = _ratio(c, st, n, role, values, new)
    return new


def _ratio(c, st: Statistics, n: str, role: tuple, values: dict, new: dict) -> torch.Tensor:
    old = values[n].reshape(-1)
    zero = torch.zeros_like(old, dtype=torch.float64)
    a, b = st.dense.get((n, "num"), zero).clone(), st.dense.get((n, "den"), zero).clone()
    for key, (keys, sums) in st.sparse.items():
        if key[0] != "normal" or n not in key[1:]:
            continue
        loc, scale = key[1], key[2]
        size = values[scale].numel()
        li, si = keys // size, keys % size
        ref = st.reference[loc].reshape(-1)[li]
        W, WY, WYY = sums.unbind(-1)
        if n == loc:  # the locs, with the current scales
            precision = values[scale].reshape(-1)[si] ** -2
            a.index_add_(0, li, precision * (W * ref + WY))
            b.index_add_(0, li, precision * W)
        else:  # the scales, about the new locs
            delta = new[loc].reshape(-1)[li] - ref
            a.index_add_(0, si, (WYY - 2 * delta * WY + delta**2 * W).clamp_min(0))
            b.index_add_(0, si, W)
    if n in c.priors:  # the MAP: the prior's pseudo-counts join the statistics
        a, b = _pseudo_counts(c, n, a, b)
    tiny = torch.finfo(old.dtype).tiny
    if role == (dist.Categorical, "probs"):
        k = values[n].shape[-1]
        counts = a.reshape(-1, k)
        total = counts.sum(-1, keepdim=True)
        value = torch.where(total > 0, counts / total.clamp_min(tiny), old.reshape(-1, k)).reshape(-1)
    elif role == (dist.Normal, "scale"):
        value = torch.where(b > 0, (a / b.clamp_min(tiny)).sqrt(), old)
    elif role == (dist.Bernoulli, "probs"):
        value = torch.where(a + b > 0, a / (a + b).clamp_min(tiny), old)
    else:
        value = torch.where(b > 0, a / b.clamp_min(tiny), old)
    return value.reshape(values[n].shape)


def _pseudo_counts(c, n: str, a: torch.Tensor, b: torch.Tensor) -> tuple:
    """The statistics of a closed-form param plus its conjugate prior's, so that the same ratio
    is the MAP: Dirichlet alpha - 1 to the counts; Beta (c1 - 1, c0 - 1) to the (successes,
    failures); Gamma (a - 1, b) to a rate's (numerator, denominator); a Normal prior's
    precision-weighted (m0 / s0^2, 1 / s0^2) to a loc's."""
    p = c.priors[n]
    args, scale = p["args"], p["scale"]
    if p["family"] is dist.Normal:
        precision = args[1] ** -2
        return a + scale * precision * args[0], b + scale * precision
    if p["family"] is dist.Dirichlet:
        return a + scale * (args[0] - 1), b
    if p["family"] is dist.Beta:
        return a + scale * (args[0] - 1), b + scale * (args[1] - 1)
    return a + scale * (args[0] - 1), b + scale * args[1]


def _pairs(st: Statistics, kind_at: int, n: str, d: int):
    """The MultivariateNormal pair sums that name param ``n`` at position ``kind_at`` of their
    key (1: the loc, 2: the matrix): (loc name, matrix name, matrix argument, loc rows, matrix
    rows, W, sum w (y - r), sum w (y - r)(y - r)^T)."""
    for key, (keys, sums) in st.sparse.items():
        if key[0] != "mvn" or key[kind_at] != n:
            continue
        yield key, keys, sums[:, 0], sums[:, 1 : 1 + d], sums[:, 1 + d :].reshape(-1, d, d)


def _matrix_tril(values: dict, name: str, arg: str, d: int) -> torch.Tensor:
    m = values[name].reshape(-1, d, d)
    return torch.linalg.cholesky(m) if arg == "covariance_matrix" else m


def _mvn_locs(c, st: Statistics, n: str, values: dict) -> torch.Tensor:
    """Each loc row the weighted mean of its events; precision-weighted, (sum_e w_e P_e)^-1
    sum_e w_e P_e y_e, where a row meets several matrices (or constant ones, or a prior)."""
    old = values[n]
    d = old.shape[-1]
    rows = old.numel() // d
    zeros = dict(dtype=torch.float64, device=old.device)  # the statistics' dtype
    w_sum, wy = torch.zeros(rows, **zeros), torch.zeros(rows, d, **zeros)
    meets = torch.zeros(rows, **zeros)  # the number of (matrix row, group) pairs with weight
    general = torch.zeros(rows, dtype=torch.bool, device=old.device)
    if (n, "w") in st.dense:  # constant matrices
        w_sum += st.dense[(n, "w")]
        general |= st.dense[(n, "w")] > 0
    ref = st.reference[n].reshape(rows, d)
    pairs = list(_pairs(st, 1, n, d))
    for key, keys, W, WY, _ in pairs:
        size = values[key[2]].numel() // d**2
        li = keys // size
        w_sum.index_add_(0, li, W)
        wy.index_add_(0, li, W[:, None] * ref[li] + WY)
        meets.index_add_(0, li, (W != 0).to(W.dtype))
    tiny = torch.finfo(old.dtype).tiny
    fresh = wy / w_sum.clamp_min(tiny)[:, None]
    general = (general | (meets > 1)) & (w_sum > 0)
    prior = c.priors.get(n)
    if prior is not None:  # the MAP under independent Normal priors: every row precision-weighted
        general = torch.ones_like(general)
    if bool(general.any()):
        prec_sum = st.dense.get((n, "P"), torch.zeros(rows, d, d, **zeros)).clone()
        prec_y = st.dense.get((n, "Py"), torch.zeros(rows, d, **zeros)).clone()
        for key, keys, W, WY, _ in pairs:
            tril = _matrix_tril(values, key[2], key[3], d)
            size = len(tril)
            li, mi = keys // size, keys % size
            precision = torch.cholesky_inverse(tril).double()[mi]
            prec_sum.index_add_(0, li, W[:, None, None] * precision)
            prec_y.index_add_(0, li, (precision @ (W[:, None] * ref[li] + WY).unsqueeze(-1)).squeeze(-1))
        if prior is not None:
            m0, s0 = (a.reshape(rows, d) for a in prior["args"])
            prec_sum = prec_sum + torch.diag_embed(prior["scale"] * s0**-2)
            prec_y = prec_y + prior["scale"] * m0 * s0**-2
        eye = torch.eye(d, **zeros)
        solved = torch.linalg.solve(torch.where(general[:, None, None], prec_sum, eye), prec_y)
        fresh = torch.where(general[:, None], solved, fresh)
    moved = general if prior is not None else w_sum > 0
    return torch.where(moved[:, None], fresh, old.reshape(rows, d)).reshape(old.shape)


def _mvn_matrices(c, st: Statistics, n: str, values: dict, new: dict) -> torch.Tensor:
    """Each matrix row the weighted covariance of its events about their new locs (or its
    Cholesky factor for a scale_tril). A row without weight, or whose weighted covariance is
    singular (fewer distinct events than dimensions), keeps its value."""
    old = values[n]
    d = old.shape[-1]
    rows = old.numel() // d**2
    zeros = dict(dtype=torch.float64, device=old.device)  # the statistics' dtype
    w_sum = st.dense.get((n, "w"), torch.zeros(rows, **zeros)).clone()
    scatter = st.dense.get((n, "S"), torch.zeros(rows, d, d, **zeros)).clone()
    for key, keys, W, WY, WYY in _pairs(st, 2, n, d):
        loc = key[1]
        li, mi = keys // rows, keys % rows
        delta = new[loc].reshape(-1, d)[li] - st.reference[loc].reshape(-1, d)[li]
        scatter.index_add_(0, mi, _scatter_about(W, WY, WYY, delta))
        w_sum.index_add_(0, mi, W)
    cov = scatter / w_sum.clamp_min(torch.finfo(old.dtype).tiny)[:, None, None]
    cov = 0.5 * (cov + cov.transpose(-1, -2))
    tril, info = torch.linalg.cholesky_ex(cov)
    keep = (w_sum > 0) & (info == 0)
    fresh = tril if c.roles[n][1] == "scale_tril" else cov
    return torch.where(keep[:, None, None], fresh, old.reshape(rows, d, d)).reshape(old.shape)


__all__ = ["SECOND_STAGE", "Statistics", "expected_statistics", "solve"]
