"""Emission tables: the fast layout of a compiled chain (:mod:`.chain`) for the sites that carry
most of a mixture's or an HMM's data.

A site that depends on one state z_t and whose distribution arguments are gathers of params by
the state (``Normal(locs[z], scales[z]).to_event(1)``, ``Poisson(rates[z])``) reads, per row n,
state k and other position o (event dims, nested plates), the param entry idx[k, o] and the
value y[n, o]. Flattened to one element per (n, k, o), as the general layout keeps it, every
iteration gathers and scatters N K O numbers. Kept as a table, the params are (K, O) arrays and
the data an (N, O) array, so that the log-densities are a few (N, O) x (O, K) products

    sum_o w log N(y | mu, sigma) = -1/2 [w y'^2 . P - 2 w y' . mu' P + w . mu'^2 P] - w . log sigma - ...

(y' = y - c about the data's mean c, P = sigma^-2) and the M-step's statistics the (K, N) x
(N, O) products sum_n q[n, k] w y^p: the cost of a hand-written mixture. Sites of one family
that read the same entries at different steps t (an HMM's emissions) share one table of
(N, T', O) values. The layout is chosen at compile time where it fits (:func:`table_layout`),
and everything else keeps the general one; both are certified by the same comparison with
Pyro's contraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch

#: the families kept as tables (their log-density is linear in a few functions of the value)
TABLE_FAMILIES = (dist.Normal, dist.Poisson, dist.Bernoulli, dist.Exponential)


def compact(t: torch.Tensor, rank: int | None = None, trailing: int = 0) -> torch.Tensor:
    """``t`` left-padded to ``rank`` dims (default: its own), with every broadcast (stride-0) dim
    but the last ``trailing`` narrowed to 1: an expanded tensor's own entries, without copying."""
    t = torch.as_tensor(t)
    rank = t.dim() if rank is None else rank
    t = t.reshape((1,) * (rank - t.dim()) + tuple(t.shape))
    for d in range(rank - trailing):
        if t.shape[d] > 1 and t.stride(d) == 0:
            t = t.narrow(d, 0, 1)
    return t


def table_layout(args: list, value, weight, full: tuple, row_axis: int, state_axis: int):
    """The site's arguments as (K, O) tables and its values and weights as (N, O) tables, or None
    when the layout does not fit (an argument that varies with the row, a value or weight that
    varies with the state). ``full`` is the site's enumerated batch + event shape, in which the
    rows are ``row_axis`` and the state ``state_axis`` (non-negative)."""
    rank = len(full)
    other = [d for d in range(rank) if d not in (row_axis, state_axis)]
    o_shape = [full[d] for d in other]
    out_args = []
    for a in args:
        a = compact(a, rank)
        if a.shape[row_axis] != 1:
            return None
        a = a.permute(state_axis, row_axis, *other).squeeze(1)
        out_args.append(a.expand(full[state_axis], *o_shape).reshape(full[state_axis], -1))
    rows = []
    for t in (value, weight):
        t = compact(t, rank)
        if t.shape[state_axis] != 1:
            return None
        t = t.permute(row_axis, state_axis, *other).squeeze(1)
        rows.append(t.expand(full[row_axis], *o_shape).reshape(full[row_axis], -1))
    return out_args, rows[0], rows[1]


def _per_axis(t, rank: int, trailing: int, keep: int, drop: int, size: int):
    """``t`` (rank + trailing dims) as (size, *trailing shape) along axis ``keep``, or None where
    it varies along axis ``drop`` or along any other batch axis."""
    t = compact(t, rank + trailing, trailing)
    if any(t.shape[d] != 1 for d in range(rank) if d != keep):
        return None
    t = t.movedim(keep, 0).reshape(t.shape[keep], *t.shape[rank:])
    return t.expand(size, *t.shape[1:])


def mvn_table_layout(
    loc, matrix, matrix_rows: bool, value, weight, full: tuple, row_axis: int, state_axis: int
):
    """A MultivariateNormal site as a table: the loc (K, D) and matrix ((K,) rows of a param, or
    (K, D, D) constants) per state, values (N, D) and weights (N,) per row; None where it does
    not fit (other batch axes, an argument that varies with the row, a value with the state)."""
    rank = len(full)
    if any(full[d] != 1 for d in range(rank) if d not in (row_axis, state_axis)):
        return None
    k, n = full[state_axis], full[row_axis]
    parts = [
        _per_axis(loc, rank, 1, state_axis, row_axis, k),
        _per_axis(matrix, rank, 0 if matrix_rows else 2, state_axis, row_axis, k),
        _per_axis(value, rank, 1, row_axis, state_axis, n),
        _per_axis(weight, rank, 0, row_axis, state_axis, n),
    ]
    return None if any(p is None for p in parts) else parts


@dataclass
class Table:
    """One family's sites at steps ``ts`` reading the same (K, O) param entries (or constants):
    values y (N, T', O) and weights w (N, T', O), masked values set to 0."""

    family: type
    sources: tuple
    args: tuple
    idx: list  # per argument: (K, O) flat param indices, or (K, O) constants
    ts: list = field(default_factory=list)
    y: list = field(default_factory=list)
    w: list = field(default_factory=list)

    def accepts(self, family, sources, args, idx) -> bool:
        return (family, sources, args) == (self.family, self.sources, self.args) and all(
            a.shape == b.shape and torch.equal(a, b) for a, b in zip(idx, self.idx)
        )

    def finish(self) -> None:
        """The sites' columns side by side: ``self.columns`` (N T', F) holds w, w y' (y' = y - the
        shift), w y'^2 for a Normal, and the per-row constant of the log-density, so that one
        product with (F, K) parameter rows gives every log-density and one with the (K, N T')
        posteriors every moment."""
        y, w = torch.stack(self.y, 1), torch.stack(self.w, 1)
        self.dtype = y.dtype
        # float64 whatever the data's dtype: the expanded squares about the shift cancel where
        # the clusters are far apart and tight (a float32 column loses them entirely)
        y = torch.where(w != 0, y, torch.zeros_like(y)).double()
        w = w.double()
        self.shape = y.shape  # (N, T', O)
        self.steps = torch.as_tensor(self.ts, device=y.device)
        # about the data's weighted mean, so that the expanded squares lose little to rounding
        self.shift = torch.zeros_like(y[0, 0])
        if self.family is dist.Normal:
            self.shift = (w * y).sum((0, 1)) / w.sum((0, 1)).clamp_min(torch.finfo(y.dtype).tiny)
        centred = y - self.shift
        columns = [w, w * centred] + ([w * centred**2] if self.family is dist.Normal else [])
        if self.family is dist.Poisson:
            constant = -(w * torch.lgamma(y + 1)).sum(-1, keepdim=True)
        elif self.family is dist.Normal:
            constant = -0.5 * math.log(2 * math.pi) * w.sum(-1, keepdim=True)
        else:
            constant = torch.zeros_like(w[..., :1])
        self.columns = torch.cat([*columns, constant], -1).reshape(-1, len(columns) * y.shape[-1] + 1)
        self.y, self.w = [], []

    def arguments(self, values: dict) -> list[torch.Tensor]:
        return [
            values[src[1]].reshape(-1)[ix] if src[0] == "param" else ix
            for src, ix in zip(self.sources, self.idx)
        ]

    def log_probs(self, values: dict) -> torch.Tensor:
        """(N, T', K): sum over o of each (row, step)'s log-density under each state, as one
        product of the columns with the parameters' rows:
        Normal [-log sigma - mu'^2 P / 2, mu' P, -P / 2] for [w, w y', w y'^2] (P = sigma^-2);
        Poisson [-lambda, log lambda]; Bernoulli [log(1 - p), log p - log(1 - p)];
        Exponential [log lambda, -lambda]; and 1 for the per-row constant."""
        args = [a.double() for a in self.arguments(values)]
        if self.family is dist.Normal:
            loc, scale = args
            precision = scale**-2
            moved = loc - self.shift
            rows = [-scale.log() - 0.5 * moved**2 * precision, moved * precision, -0.5 * precision]
        elif self.family is dist.Poisson:
            rows = [-args[0], _log(args[0])]
        elif self.family is dist.Bernoulli:
            rows = [_log(1 - args[0]), _log(args[0]) - _log(1 - args[0])]
        else:  # Exponential
            rows = [_log(args[0]), -args[0]]
        ones = rows[0].new_ones(rows[0].shape[0], 1)
        weights = torch.cat([*rows, ones], -1)  # (K, F)
        return (self.columns @ weights.T).reshape(self.shape[0], self.shape[1], -1).to(self.dtype)

    def posterior(self, post, n_steps: int, n_states: int) -> torch.Tensor:
        """(N, T', K): the (weighted) posterior of each row's state at the table's steps."""
        return post[1].reshape(self.shape[0], n_steps, n_states)[:, self.steps]

    def moments(self, q: torch.Tensor) -> tuple:
        """(K, O) sums over rows and steps of q w, q w y' and q w y'^2 (y' = y - shift; the last
        for a Normal only, else None), in float64."""
        o = self.shape[-1]
        sums = q.double().reshape(-1, q.shape[-1]).T @ self.columns[:, :-1]
        parts = sums.split(o, -1)
        return parts[0], parts[1], parts[2] if len(parts) > 2 else None


class MvnTable(Table):
    """MultivariateNormal sites at steps ``ts``: per state a loc (a row of a param, or a
    constant) and a matrix (a row of a covariance_matrix / scale_tril param, or a constant);
    values y (N, T', D) and weights w (N, T')."""

    def finish(self) -> None:
        y, w = torch.stack(self.y, 1), torch.stack(self.w, 1)
        self.dtype = y.dtype
        y = torch.where(w[..., None] != 0, y, torch.zeros_like(y)).double()  # float64, as Table's
        self.y, self.w = y, w.double()
        w = self.w
        self.shape = y.shape  # (N, T', D)
        self.steps = torch.as_tensor(self.ts, device=y.device)
        total = w.sum()
        self.shift = (w[..., None] * self.y).sum((0, 1)) / total.clamp_min(torch.finfo(y.dtype).tiny)
        self.centred = (self.y - self.shift).reshape(-1, y.shape[-1])
        self.wy = (w[..., None] * (self.y - self.shift)).reshape(-1, y.shape[-1])

    def locs(self, values: dict) -> torch.Tensor:
        src, ix = self.sources[0], self.idx[0]
        d = self.y.shape[-1]
        return values[src[1]].reshape(-1, d)[ix[:, 0] // d] if src[0] == "param" else ix

    def trils(self, values: dict) -> torch.Tensor:
        src, ix = self.sources[1], self.idx[1]
        d = self.y.shape[-1]
        m = values[src[1]].reshape(-1, d, d)[ix] if src[0] == "param" else ix
        return torch.linalg.cholesky(m) if self.args[1] == "covariance_matrix" else m

    def log_probs(self, values: dict) -> torch.Tensor:
        """(N, T', K): -|L_k^-1 (y - mu_k)|^2 / 2 - log det L_k - D log(2 pi) / 2, times w; one
        (N T', D) x (D, D) product per state."""
        n, steps, d = self.y.shape
        tril = self.trils(values).double()
        eye = torch.eye(d, dtype=tril.dtype, device=tril.device)
        inverse = torch.linalg.solve_triangular(tril, eye.expand_as(tril), upper=False)
        k = len(tril)
        # z[n, k] = L_k^-1 y'_n - L_k^-1 mu'_k for every state at once: one (rows, D) x (D, K D)
        # product per block of rows (blocks keep the (rows, K, D) temporary in cache)
        wide = inverse.transpose(1, 2).permute(1, 0, 2).reshape(d, k * d)
        offset = (inverse @ (self.locs(values).double() - self.shift).unsqueeze(-1)).reshape(k * d)
        block = max(1, 2**18 // (k * d))
        maha = torch.cat(
            [
                (torch.square(rows @ wide - offset)).view(len(rows), k, d).sum(-1)
                for rows in self.centred.split(block)
            ]
        )
        half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        lp = -0.5 * maha - half_log_det - 0.5 * d * math.log(2 * math.pi)
        return (lp.reshape(n, steps, -1) * self.w[..., None]).to(self.dtype)

    def moments(self, q: torch.Tensor) -> tuple:
        """sum over rows and steps of q w (K,), q w y' (K, D) and q w y' y'^T (K, D, D)."""
        q = q.double().reshape(-1, q.shape[-1])
        qw = q * self.w.reshape(-1, 1)
        m0 = qw.sum(0)
        m1 = q.T @ self.wy
        k, d = q.shape[-1], self.centred.shape[-1]
        m2 = self.centred.new_zeros(k, d, d)
        block = max(1, 2**18 // (k * d))
        for qb, yb in zip(qw.split(block), self.centred.split(block)):
            m2 += torch.einsum("nk,ni,nj->kij", qb, yb, yb)
        return m0, m1, m2


def _log(t: torch.Tensor) -> torch.Tensor:
    """log t with log 0 the most negative finite number, so that 0 * log 0 = 0 in the products."""
    return torch.log(t).clamp_min(torch.finfo(t.dtype).min)


__all__ = ["TABLE_FAMILIES", "MvnTable", "Table", "compact", "mvn_table_layout", "table_layout"]
