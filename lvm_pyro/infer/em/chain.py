"""Closed-form EM for a user's Pyro program whose discrete sites form a chain (Baum-Welch).

A mixture (one discrete site per row) and a hidden Markov model written like Pyro's
``examples/hmm.py`` (``pyro.markov`` over time, sequences in a plate, ``pyro.param``s, an
empty guide) are both chains z_0 -> z_1 -> ... -> z_{T-1} inside the data plate, with every
other site's log-factor depending on one z_t (an emission) or on (z_{t-1}, z_t). When, in
addition, every distribution is an exponential family from :data:`FAMILIES` whose
parameters are plain *gathers* of ``pyro.param``s (``trans[z]``, ``locs[z]``, ``probs``) or
constants, the model is compiled once, from a few traces, into flat arrays:

- per element e of every site's log-density: the param entries it reads, its value y_e, the
  cell of the chain's potentials (row n, step t, z_{t-1}, z_t) it adds to, and its scale/mask;
- each iteration then computes every log-factor with a handful of vectorized operations,
  sums them into unary (N, T, K) and pairwise (N, T, K, K) potentials, and runs the forward
  recursion; one backward pass gives every factor's posterior marginal (the gradient of
  log Z with respect to a log-potential is the posterior of that cell), and the M-step is the
  weighted maximum-likelihood solution from expected sufficient statistics (normalized
  counts for Categorical, a weighted mean for Bernoulli / Poisson, precision-weighted means
  then variances for Normal locs and scales, weighted means then weighted covariances about
  them (or their Cholesky factors) for MultivariateNormal locs and covariance_matrix /
  scale_tril rows: exact conditional maximization, the joint optimum when each scale has its
  own loc). A MultivariateNormal's elements are whole events (D values), each reading a row of
  its loc param and a (D, D) row of its matrix param.

Nothing is assumed that is not checked: the structure is read off traces with the parameters
replaced by probes (entry i of a param set to a distinct code, so an argument that is a gather
reads the codes back), and the compiled log Z is certified equal to Pyro's own contraction of
the model's trace at the current parameters and at a random perturbation of them (to ~1e-10
relative in float64). A model that fails any check raises :class:`NotCompilable` with the
reason, and ``em`` takes the general route (Pyro's enumeration, generalized M-step).

Global sites point-estimated by a Delta guide (``AutoDelta``: the globals are ``pyro.sample``
sites under a prior) are compiled with the model conditioned on the guide's values, so the
guide's params are the compiled params; where the prior is conjugate to the param's role
(:data:`CONJUGATE`) the M-step is the MAP (the statistics plus the prior's pseudo-counts), the
priors' log-density joins the objective, and it is certified against Pyro's trace too.

Parameters used by a site in a way the closed form does not cover (a Normal loc constrained
positive, one param in two roles) are fitted by gradient steps on Q, computed from the same
compiled arrays: a model mixes both routes, and ``EMResult.param_routes`` says which took which.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints, transform_to

from lvm_pyro.infer.em.chain_statistics import expected_statistics, solve
from lvm_pyro.infer.em.chain_tables import (
    TABLE_FAMILIES,
    MvnTable,
    Table,
    compact,
    mvn_table_layout,
    table_layout,
)
from lvm_pyro.infer.logdensity import MarginalizeMissing

#: distribution -> the arguments the compiled route reads (each a param gather or a constant)
FAMILIES: dict[type, tuple[str, ...]] = {
    dist.Categorical: ("probs",),
    dist.Bernoulli: ("probs",),
    dist.Poisson: ("rate",),
    dist.Normal: ("loc", "scale"),
    dist.Exponential: ("rate",),
    dist.Gamma: ("concentration", "rate"),
    dist.MultivariateNormal: ("loc", "covariance_matrix"),  # or ("loc", "scale_tril")
}
#: (family, argument) -> the constraint a param needs for the closed form of that role
ROLES: dict[tuple[type, str], object] = {
    (dist.Categorical, "probs"): constraints.simplex,
    (dist.Bernoulli, "probs"): constraints.unit_interval,
    (dist.Poisson, "rate"): constraints.positive,
    (dist.Normal, "loc"): constraints.real,
    (dist.Normal, "scale"): constraints.positive,
    (dist.Exponential, "rate"): constraints.positive,
    (dist.Gamma, "rate"): constraints.positive,
    (dist.MultivariateNormal, "loc"): constraints.real,
    (dist.MultivariateNormal, "covariance_matrix"): constraints.positive_definite,
    (dist.MultivariateNormal, "scale_tril"): constraints.lower_cholesky,
}
#: (role, prior family) -> the prior's arguments, where the prior of a point-estimated global
#: (a pyro.sample site whose value is a Delta guide's param) is conjugate to the role: the
#: M-step is then the MAP, the maximum-likelihood statistics plus the prior's pseudo-counts
CONJUGATE: dict[tuple, tuple[str, ...]] = {
    ((dist.Categorical, "probs"), dist.Dirichlet): ("concentration",),
    ((dist.Bernoulli, "probs"), dist.Beta): ("concentration1", "concentration0"),
    ((dist.Poisson, "rate"), dist.Gamma): ("concentration", "rate"),
    ((dist.Exponential, "rate"), dist.Gamma): ("concentration", "rate"),
    ((dist.Gamma, "rate"), dist.Gamma): ("concentration", "rate"),
    ((dist.Normal, "loc"), dist.Normal): ("loc", "scale"),
    ((dist.MultivariateNormal, "loc"), dist.Normal): ("loc", "scale"),
}
#: constraints of the params whose rows are whole (D, D) matrices (a MultivariateNormal's)
MATRIX = (constraints.positive_definite, constraints.lower_cholesky)
_CODE = 2.0**20  # element probes: entry i of param j reads (2j + 1) * _CODE + i + 0.25


#: rows of the slice a chain is certified on before it is compiled on all rows (Pyro's
#: contraction holds every (row, state, position) log-density at once: certifying on all rows of
#: a large data set would take gigabytes)
CERTIFY_ROWS = 2048

#: keep the sites that fit as emission tables (:mod:`.chain_tables`); False: the general layout
#: for every site (what the tests compare the tables against)
EMISSION_TABLES = True


class NotCompilable(Exception):
    """The model is not a chain of exponential-family sites over param gathers (the reason)."""


def plain_constraint(c):
    """A constraint without its Independent wrappers (an AutoDelta's constraint is its site's
    support, e.g. independent(simplex, 1) for a Dirichlet over rows)."""
    while isinstance(c, constraints.independent):
        c = c.base_constraint
    return c


def _same_constraint(a, b) -> bool:
    if a is b or a == b:
        return True
    if a is constraints.nonnegative and b is constraints.positive:
        return True  # a Gamma's support (an AutoDelta's constraint): also parametrized through exp
    base = getattr(a, "base_constraint", None)  # independent(real, 1) and the like
    return base is not None and _same_constraint(base, b)


@dataclass
class _Group:
    """The elements of every site of one family with the same argument sources. An element is
    one scalar of the log-density, or one event for a MultivariateNormal (its y is (D,), its
    loc indices (D,), its matrix a row of a (..., D, D) param or a constant (D, D))."""

    family: type
    sources: tuple  # per argument: ("param", name) or ("const", None)
    args: tuple = ()  # the argument names (FAMILIES[family], but a MultivariateNormal's may differ)
    idx: list = field(default_factory=list)  # per argument: flat param indices or constants
    y: list = field(default_factory=list)
    pos: list = field(default_factory=list)
    kind: list = field(default_factory=list)  # 0/1/2: const, unary, pairwise per row; 3/4/5: shared by rows
    weight: list = field(default_factory=list)  # site scale * mask

    def finish(self) -> None:
        self.args = self.args or FAMILIES[self.family]
        self.idx = [torch.cat(parts) for parts in zip(*self.idx)]
        self.y, self.pos = torch.cat(self.y), torch.cat(self.pos)
        self.kind, self.weight = torch.cat(self.kind), torch.cat(self.weight)
        self.loc_rows = None  # a MultivariateNormal's loc: the row of the (..., D) param each reads
        if self.family is dist.MultivariateNormal and self.sources[0][0] == "param":
            ix = self.idx[0]
            d = ix.shape[-1]
            rows = ix[:, 0] // d
            if torch.equal(ix, rows[:, None] * d + torch.arange(d, device=ix.device)):
                self.loc_rows = rows
        self.by_row = None  # a MultivariateNormal's matrix param: the events sorted by the row they read
        if self.family is dist.MultivariateNormal and self.sources[1][0] == "param":
            self.row_order = torch.argsort(self.idx[1], stable=True)
            rows, counts = torch.unique_consecutive(self.idx[1][self.row_order], return_counts=True)
            self.by_row = (rows.tolist(), counts.tolist())  # the rows read, and their numbers of events
            self.row_inverse = torch.argsort(self.row_order)  # events in row order -> events in order
        self.sel, self.at = {}, {}  # per kind: the elements of that kind (None: all) and their cells
        for kind in range(6):
            chosen = self.kind == kind
            self.sel[kind] = None if bool(chosen.all()) else chosen.nonzero().squeeze(-1)
            self.at[kind] = self.pos if self.sel[kind] is None else self.pos[self.sel[kind]]


def _unwrap(fn):
    """The base distribution, the number of dims an Independent sums, and a mask (or None)."""
    event, mask = 0, None
    while True:
        if isinstance(fn, dist.Independent):
            event += fn.reinterpreted_batch_ndims
        elif isinstance(fn, dist.MaskedDistribution):
            mask = fn._mask if mask is None else mask & fn._mask
        elif not isinstance(fn, dist.ExpandedDistribution):
            return fn, event, mask
        fn = fn.base_dist


def _mvn_args(fn) -> tuple[str, str]:
    """The arguments a MultivariateNormal was given: (loc, covariance_matrix) or (loc, scale_tril)."""
    if "covariance_matrix" in fn.__dict__:
        return ("loc", "covariance_matrix")
    if "scale_tril" in fn.__dict__:
        return ("loc", "scale_tril")
    raise NotCompilable("a MultivariateNormal is given precision_matrix, not covariance_matrix or scale_tril")


def _conditioned(model, guide):
    """The model with its global sites set to the point estimates of a Delta guide (traced
    inside, so the guide's pyro.params are the model's params; the guide's own sample sites
    are hidden from the handlers outside)."""

    def conditioned(*args):
        with poutine.block(hide_types=["sample"]):
            guide_trace = poutine.trace(guide).get_trace(*args)
        values = {s["name"]: s["value"] for s in _sites(guide_trace)}
        return poutine.condition(model, data=values)(*args)

    return conditioned


def _trace(model, data: tuple, nesting: int, values: dict | None = None, validate: bool = True):
    fn = config_enumerate(MarginalizeMissing()(model))
    if values is not None:
        fn = poutine.substitute(fn, data=values)
    fn = poutine.enum(fn, first_available_dim=-nesting - 1)
    with poutine.block(), pyro.validation_enabled(validate):
        return poutine.trace(fn).get_trace(*data)


def _sites(trace) -> list[dict]:
    """Sample sites with a log-density: no plate subsample sites, no pyro.deterministic, no
    site masked out entirely (obs_mask's missing entries)."""
    return [
        s
        for s in trace.nodes.values()
        if s["type"] == "sample"
        and not site_is_subsample(s)
        and not s["infer"].get("_deterministic")
        and s["mask"] is not False
    ]


def _arg(fn, name: str) -> torch.Tensor:
    if name == "probs" and "probs" not in fn.__dict__:
        raise NotCompilable(f"{type(fn).__name__} is given logits, not probs")
    return getattr(fn, name)


def compile_chain(model, data: tuple, *, nesting: int, plate: str, gen: torch.Generator, guide=None):
    """A :class:`CompiledChain` of ``model`` on ``data``, certified on its first
    :data:`CERTIFY_ROWS` rows when there are more (every tensor of ``data`` holds one entry per
    row); the compile on all rows must then have the certified structure (or it is certified
    itself), and every argument it reads as a gather is checked on all rows."""
    certified = None
    if len(data[0]) > CERTIFY_ROWS:
        head = tuple(t[:CERTIFY_ROWS] for t in data)
        # a refusal on the first rows is the model's (certifying every row instead could take
        # gigabytes): it propagates
        certified = CompiledChain(model, head, nesting=nesting, plate=plate, gen=gen, guide=guide).signature
    return CompiledChain(model, data, nesting=nesting, plate=plate, gen=gen, guide=guide, certified=certified)


def _log_prob_shapes(trace) -> None:
    """Stand-ins for ``trace.compute_log_prob()`` with the shapes Pyro's log-densities would have
    (what packing reads) and no arithmetic; observed values outside their distribution's support
    are refused as Pyro's validation would."""
    for s in _sites(trace):
        fn, value = s["fn"], s["value"]
        if s["is_observed"] and not bool(fn.support.check(value).all()):
            raise NotCompilable(f"site {s['name']!r} has values outside the support of its distribution")
        shapes = [fn.batch_shape, value.shape[: value.dim() - fn.event_dim]]
        shapes += [t.shape for t in (s["mask"], s["scale"]) if isinstance(t, torch.Tensor)]
        stand_in = value.new_zeros((), dtype=torch.float32).expand(torch.broadcast_shapes(*shapes))
        s["log_prob"] = s["unscaled_log_prob"] = stand_in


class CompiledChain:
    """The compiled log-factors, forward recursion and closed-form M-step of a chain model."""

    def __init__(
        self,
        model,
        data: tuple,
        *,
        nesting: int,
        plate: str,
        gen: torch.Generator,
        guide=None,
        certified: tuple | None = None,
    ) -> None:
        """Compile ``model`` on ``data`` and certify it against Pyro's contraction, unless its
        structure equals ``certified`` (the :attr:`signature` of a chain already certified on
        other rows of the same data: online EM compiles every minibatch)."""
        self.data, self.nesting, self.plate = data, nesting, plate
        x = data[0]
        self.dtype, self.device = x.dtype, x.device
        self.point_sites: set = set()  # the global sites a Delta guide point-estimates
        if guide is not None:
            with poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*data)
            for site in _sites(guide_trace):
                if not isinstance(_unwrap(site["fn"])[0], dist.Delta):
                    raise NotCompilable(
                        f"the guide samples site {site['name']!r} from a distribution, not a Delta"
                    )
                self.point_sites.add(site["name"])
            if self.point_sites:
                model = _conditioned(model, guide)
        self.model = model
        real = _trace(model, data, nesting)
        store = pyro.get_param_store()
        self.names = [n for n, s in real.nodes.items() if s["type"] == "param"]
        if not self.names:
            raise NotCompilable("the model has no pyro.param")
        self.constraints = {n: store.get_state()["constraints"][n] for n in self.names}
        self.values = {n: pyro.param(n).detach() for n in self.names}
        for n, v in self.values.items():
            if not v.is_floating_point():
                raise NotCompilable(f"param {n!r} is not a floating tensor")
        self._compile(real)
        if certified is None or certified != self.signature:
            self._certify(real, gen)
        else:
            self._check_reads(gen)

    @property
    def signature(self) -> tuple:
        """What certification depends on besides the rows: the params, their routes, the groups'
        families and argument sources, and the chain's length and number of states."""
        groups = tuple((g.family, g.sources, g.args) for g in self.groups)
        tables = tuple((t.family, t.sources, t.args, tuple(t.ts)) for t in self.tables)
        routes = tuple(sorted(self.routes.items()))
        return tuple(self.names), routes, groups, tables, self.K, self.T, self.nesting

    # ------------------------------------------------------------------ structure

    def _probe_traces(self):
        """A trace with every param replaced by codes: a simplex param by rows that survive a
        Categorical's normalization and name their row, a (..., D, D) positive-definite or
        lower-Cholesky param by rows c I (c = 2**20 (2j + 1) + r + 1/4 for its row r: a matrix a
        MultivariateNormal can factor), any other param by entries that name their index
        (2**20 (2j + 1) + i + 1/4 for entry i of the j-th param)."""
        self.simplex = [
            n
            for n in self.names
            if plain_constraint(self.constraints[n]) is constraints.simplex
            and self.values[n].dim()
            and self.values[n].shape[-1] > 1
        ]
        rows, r0 = {}, 0
        total_rows = sum(self.values[n].numel() // self.values[n].shape[-1] for n in self.simplex)
        for n in self.simplex:
            v = self.values[n]
            k = v.shape[-1]
            nrows = v.numel() // k
            c = (torch.arange(nrows, dtype=torch.float64) + r0 + 1) / (total_rows + 2)
            probe = torch.empty(nrows, k, dtype=torch.float64)
            probe[:, 0] = c
            probe[:, 1:] = ((1 - c) / (k - 1))[:, None]
            rows[n] = probe.reshape(v.shape).to(self.device, self.dtype)
            r0 += nrows
        self.total_rows = total_rows
        values = dict(rows)
        self.matrix = {}
        for j, n in enumerate(self.names):
            v = self.values[n]
            if (
                any(plain_constraint(self.constraints[n]) is c for c in MATRIX)
                and v.dim() >= 2
                and v.shape[-1] == v.shape[-2]
            ):
                d = v.shape[-1]
                code = (2 * j + 1) * _CODE + torch.arange(v.numel() // d**2, dtype=torch.float64) + 0.25
                eye = torch.eye(d, dtype=torch.float64)
                values[n] = (code[:, None, None] * eye).reshape(v.shape).to(self.device)
                self.matrix[n] = j
        for j, n in enumerate(self.names):
            if n not in values:
                v = self.values[n]
                values[n] = (
                    ((2 * j + 1) * _CODE + torch.arange(v.numel(), dtype=torch.float64) + 0.25)
                    .reshape(v.shape)
                    .to(self.device)
                )
        self.probe_values = values
        return _trace(self.model, self.data, self.nesting, values, validate=False)

    def _read(self, site: str, arg: str, kind: str, name: str, index: torch.Tensor) -> None:
        """Remember that ``arg`` of ``site`` gathers ``index`` of param ``name`` (entries, rows of
        a simplex, or (D, D) matrices), for :meth:`_check_reads`."""
        self.reads.append((site, arg, kind, name, index))

    def _decode_rows(self, probs: torch.Tensor):
        """Categorical probs read back under the row probe -> (param name, row index)."""
        code = (probs[..., 0].double() * (self.total_rows + 2) - 1).round().long()
        r0 = 0
        for n in self.simplex:
            v = self.values[n]
            k = v.shape[-1]
            nrows = v.numel() // k
            if k == probs.shape[-1] and bool(((code >= r0) & (code < r0 + nrows)).all()):
                return n, code - r0
            r0 += nrows
        raise NotCompilable("a Categorical's probs are not rows of one simplex pyro.param")

    def _decode_entries(self, probe: torch.Tensor, real: torch.Tensor):
        """An argument under the entry probe -> ("param", name) and flat indices, or a constant
        (the same in the probe and the real trace), with its broadcast dims kept at size 1."""
        a = compact(probe).double()
        # the code of the first entry names the one param the argument can gather from
        first = float(a[(0,) * a.dim()]) if a.numel() else math.nan
        j = round(((first - 0.25) / _CODE - 1) / 2) if math.isfinite(first) else -1
        if 0 <= j < len(self.names) and self.names[j] not in (*self.simplex, *self.matrix):
            n = self.names[j]
            ia = a - (2 * j + 1) * _CODE - 0.25
            if bool(((ia - ia.round()).abs() < 1e-6).all()) and bool(
                ((ia >= 0) & (ia < self.values[n].numel())).all()
            ):
                return ("param", n), ia.round().long()
        real = torch.as_tensor(real)
        if probe.shape == real.shape:
            real = compact(real)
            if bool((a == real.double()).all()):
                return ("const", None), real
        raise NotCompilable("a distribution argument depends on the params other than by indexing")

    def _decode_matrix(self, probe: torch.Tensor, real: torch.Tensor):
        """A MultivariateNormal's matrix under the probe -> ("param", name) and row indices (its
        batch shape), or a constant (the same in the probe and the real trace), with its broadcast
        batch dims kept at size 1."""
        a = compact(probe, trailing=2).double()
        d = a.shape[-1]
        for n, j in self.matrix.items():
            if self.values[n].shape[-1] != d:
                continue
            r = a[..., 0, 0] - (2 * j + 1) * _CODE - 0.25
            rows = r.round()
            eye = torch.eye(d, dtype=a.dtype, device=a.device)
            if (
                bool(((r - rows).abs() < 1e-6).all())
                and bool(((rows >= 0) & (rows < self.values[n].numel() // d**2)).all())
                and torch.equal(a, (rows + (2 * j + 1) * _CODE + 0.25)[..., None, None] * eye)
            ):
                return ("param", n), rows.long()
        real = torch.as_tensor(real)
        if probe.shape == real.shape:
            real = compact(real, trailing=2)
            if bool((a == real.double()).all()):
                return ("const", None), real
        raise NotCompilable("a MultivariateNormal's matrix depends on the params other than by indexing")

    def _compile(self, real) -> None:
        """Read the structure off the trace ``real`` (each site's log-density shape from its
        distribution and value: computing Pyro's log-densities is the certification's job)."""
        sites = [s for s in _sites(real) if s["name"] not in self.point_sites]
        priors = [s for s in _sites(real) if s["name"] in self.point_sites]
        for s in sites:
            if not any(f.name == self.plate and f.vectorized for f in s["cond_indep_stack"]):
                raise NotCompilable(f"site {s['name']!r} is outside the data plate {self.plate!r}")
            if not s["is_observed"] and s["infer"].get("_enumerate_dim") is None:
                raise NotCompilable(f"site {s['name']!r} is a latent site that is not enumerated")
        chain = [s for s in sites if s["infer"].get("_enumerate_dim") is not None]
        if not chain:
            raise NotCompilable("no enumerated site")
        ks = {int(s["fn"].enumerate_support(expand=False).shape[0]) for s in chain}
        if len(ks) != 1:
            raise NotCompilable("the enumerated sites take different numbers of values")
        self.K, self.T = ks.pop(), len(chain)
        self.N = len(self.data[0])
        _log_prob_shapes(real)
        real.pack_tensors()
        symbol = {s["infer"]["_enumerate_symbol"]: t for t, s in enumerate(chain)}
        enum_dim = {t: s["infer"]["_enumerate_dim"] for t, s in enumerate(chain)}
        probe_sites = {s["name"]: s for s in _sites(self._probe_traces())}
        self._priors(priors, probe_sites)
        groups: OrderedDict = OrderedDict()
        self.tables: list[Table] = []
        self.reads: list[tuple] = []
        rank = max([self.nesting, *(-d for d in enum_dim.values()), *(s["log_prob"].dim() for s in sites)])
        for s in sites:
            deps = sorted(symbol[d] for d in s["packed"]["log_prob"]._pyro_dims if d in symbol)
            own = symbol.get(s["infer"].get("_enumerate_symbol"))
            if own is not None and (
                deps[-1] != own or (len(deps) == 2 and deps[0] != own - 1) or len(deps) > 2
            ):
                raise NotCompilable(
                    f"site {s['name']!r} does not depend on the previous site of the chain alone"
                )
            if len(deps) > 2 or (len(deps) == 2 and deps[0] != deps[1] - 1):
                raise NotCompilable(
                    f"site {s['name']!r} depends on sites that are not neighbours in the chain"
                )
            base, event, fmask = _unwrap(s["fn"])
            family = type(base)
            if family not in FAMILIES:
                raise NotCompilable(
                    f"site {s['name']!r} is a {family.__name__}, not one of {[f.__name__ for f in FAMILIES]}"
                )
            lp = s["log_prob"]
            shape = list((1,) * (rank - lp.dim()) + tuple(lp.shape))
            data_dim = next(f.dim for f in s["cond_indep_stack"] if f.name == self.plate)
            shape[data_dim] = self.N
            dims = {}
            if deps:
                dims["j"] = enum_dim[deps[-1]]
            if len(deps) == 2:
                dims["i"] = enum_dim[deps[0]]
            for d in dims.values():
                shape[d] = self.K

            def ar(d, size):
                v = torch.arange(size, device=self.device)
                return v.reshape((size,) + (1,) * (-d - 1))

            weight = torch.ones((), dtype=self.dtype, device=self.device)
            if s["scale"] is not None and not (isinstance(s["scale"], (int, float)) and s["scale"] == 1.0):
                weight = weight * s["scale"]
            if s["mask"] is False:
                weight = weight * 0
            elif isinstance(s["mask"], torch.Tensor):
                weight = weight * s["mask"].to(self.dtype)
            wshape = (1,) * (rank - weight.dim()) + tuple(weight.shape)
            # an expanded factor that reads nothing per row is computed once for all rows
            args = _mvn_args(base) if family is dist.MultivariateNormal else FAMILIES[family]
            if family is dist.Categorical:
                read = [(base.probs, 1), (s["value"], 0)]
            elif family is dist.MultivariateNormal:
                read = [(base.loc, event + 1), (_arg(base, args[1]), event + 2), (s["value"], event + 1)]
            else:
                read = [(_arg(base, a), event) for a in args] + [(s["value"], event)]
            shared = all(
                t.dim() - e < -data_dim or t.shape[data_dim - e] == 1 or t.stride(data_dim - e) == 0
                for t, e in read
            )
            shared = shared and wshape[rank + data_dim] == 1 and fmask is None
            if shared:
                n, shape[data_dim], base_kind = 0, 1, 3
            else:
                n, base_kind = ar(data_dim, self.N), 0
            if not deps:
                pos, kind = n + torch.zeros((), dtype=torch.long, device=self.device), base_kind
            elif len(deps) == 1:
                pos, kind = (n * self.T + deps[0]) * self.K + ar(dims["j"], self.K), base_kind + 1
            else:
                pos = ((n * self.T + deps[1]) * self.K + ar(dims["i"], self.K)) * self.K + ar(
                    dims["j"], self.K
                )
                kind = base_kind + 2
            batch = torch.Size(shape)
            event_shape = tuple(base.batch_shape[len(base.batch_shape) - event :]) if event else ()
            full = batch + torch.Size(event_shape)

            rows_at, events = data_dim - len(event_shape), len(event_shape)

            def flat(t, size=full, at=rows_at, shared=shared, trailing=()):
                """A tensor aligned to ``size`` + ``trailing`` (rows narrowed to one where shared),
                flattened over ``size``."""
                t = torch.as_tensor(t, device=self.device)
                at, size = at - len(trailing), tuple(size) + tuple(trailing)
                if shared and t.dim() >= -at and t.shape[at] > 1:
                    t = t.narrow(at, 0, 1)
                t = t.reshape((1,) * (len(size) - t.dim()) + tuple(t.shape)).expand(size)
                return t.reshape((-1, *trailing))

            def batch_only(t, events=events, flat=flat):
                """A tensor of the batch shape, repeated over the event dims, flattened."""
                return flat(t.reshape(t.shape + (1,) * events))

            # the arguments decoded once, for a table or the general layout
            if family is not dist.Categorical:
                sources, decoded = self._decode_site(s, base, args, probe_sites)
            tabled = EMISSION_TABLES and not shared and len(deps) == 1
            axes = (len(batch) + data_dim, len(batch) + dims.get("j", 0))
            if tabled and family is dist.MultivariateNormal and not event:
                w_full = weight.reshape(wshape)
                if self._mvn_table(s, base, sources, args, decoded, w_full, fmask, full, axes, deps[0]):
                    continue
            if tabled and family in TABLE_FAMILIES:
                w_full = weight.reshape(wshape + (1,) * events)
                if self._table(s, family, sources, args, decoded, w_full, fmask, full, axes, deps[0]):
                    continue
            value = s["value"]
            if family is dist.Categorical:
                name, row = self._decode_rows(_arg(_unwrap(probe_sites[s["name"]]["fn"])[0], "probs"))
                self._read(s["name"], "probs", "rows", name, row)
                idx = [flat(row * self.values[name].shape[-1] + value.long())]
                sources = (("param", name),)
                y = flat(value.long())
            elif family is dist.MultivariateNormal:
                if event:
                    raise NotCompilable(f"site {s['name']!r} reinterprets a MultivariateNormal's batch dims")
                d = base.event_shape[0]
                (src_loc, src_mat), (ix, rows) = sources, decoded
                idx = [
                    flat(ix, trailing=(d,))
                    if src_loc[0] == "param"
                    else flat(ix.to(self.dtype), trailing=(d,)),
                    flat(rows) if src_mat[0] == "param" else flat(rows.to(self.dtype), trailing=(d, d)),
                ]
                y = flat(value.to(self.dtype), trailing=(d,))
            else:
                idx = [flat(self._placed(src, ix)) for src, ix in zip(sources, decoded)]
                y = flat(value.to(self.dtype))
                if family is dist.Bernoulli and not bool(((y == 0) | (y == 1)).all()):
                    raise NotCompilable(f"site {s['name']!r} has Bernoulli values other than 0 and 1")
            weight = batch_only(weight.reshape(wshape))
            if fmask is not None:
                weight = weight * flat(fmask.to(self.dtype))
            g = groups.setdefault((family, sources, args), _Group(family, sources, args))
            g.idx.append(idx)
            g.y.append(y)
            g.pos.append(batch_only(pos.expand(batch)))
            g.kind.append(torch.full((len(y),), kind, dtype=torch.int8, device=self.device))
            g.weight.append(weight)
        self.groups = list(groups.values())
        for g in self.groups:
            g.finish()
        for tab in self.tables:
            tab.finish()
        self.row_pairs = any(g.sel[2] is None or len(g.sel[2]) for g in self.groups)
        self._roles()

    def _decode_site(self, s, base, args, probe_sites) -> tuple:
        """The sources of a site's arguments (a param gather or a constant) and their indices or
        values (a MultivariateNormal's second argument a matrix), each param gather remembered
        for :meth:`_check_reads`."""
        pb = _unwrap(probe_sites[s["name"]]["fn"])[0]
        sources, decoded = [], []
        for i, arg in enumerate(args):
            matrix = type(base) is dist.MultivariateNormal and i == 1
            decode = self._decode_matrix if matrix else self._decode_entries
            src, ix = decode(_arg(pb, arg), _arg(base, arg))
            if src[0] == "param":
                self._read(s["name"], arg, "matrix" if matrix else "entries", src[1], ix)
            sources.append(src)
            decoded.append(ix)
        return tuple(sources), decoded

    def _table(self, s, family, sources, args, decoded, weight, fmask, full, axes, step: int) -> bool:
        """Keep site ``s`` (at chain step ``step``) as an emission table (:mod:`.chain_tables`)
        where its layout fits: False leaves it to the general layout."""
        idx = [self._placed(src, ix) for src, ix in zip(sources, decoded)]
        if fmask is not None:
            weight = weight * fmask.to(self.dtype)
        layout = table_layout(idx, s["value"].to(self.dtype), weight, tuple(full), *axes)
        if layout is None:
            return False
        idx, y, w = layout
        if family is dist.Bernoulli and not bool(((y == 0) | (y == 1) | (w == 0)).all()):
            raise NotCompilable(f"site {s['name']!r} has Bernoulli values other than 0 and 1")
        self._add_to_table(Table, family, sources, args, idx, step, y, w)
        return True

    def _mvn_table(self, s, base, sources, args, decoded, weight, fmask, full, axes, step: int) -> bool:
        """Keep a MultivariateNormal site as a table (one loc row and one matrix per state) where
        its layout fits: False leaves it to the general layout."""
        d = base.event_shape[0]
        loc, mat = (self._placed(src, ix) for src, ix in zip(sources, decoded))
        if fmask is not None:
            weight = weight * fmask.to(self.dtype)
        value = s["value"].to(self.dtype)
        layout = mvn_table_layout(loc, mat, sources[1][0] == "param", value, weight, tuple(full), *axes)
        if layout is None:
            return False
        loc, mat, y, w = layout
        if sources[0][0] == "param":  # whole rows of the loc param, or the general layout
            rows = loc[:, 0] // d
            if not torch.equal(loc, rows[:, None] * d + torch.arange(d, device=loc.device)):
                return False
        self._add_to_table(MvnTable, dist.MultivariateNormal, sources, args, [loc, mat], step, y, w)
        return True

    def _placed(self, src: tuple, ix: torch.Tensor) -> torch.Tensor:
        """A param's indices as they are; a constant on the data's device and dtype."""
        return ix if src[0] == "param" else ix.to(self.device, self.dtype)

    def _add_to_table(self, kind, family, sources, args, idx, step: int, y, w) -> None:
        """Step ``step``'s values and weights join the table of the same family, argument sources
        and param entries, or a new one."""
        tab = next((t for t in self.tables if t.accepts(family, sources, args, idx)), None)
        if tab is None:
            tab = kind(family, sources, args, idx)
            self.tables.append(tab)
        tab.ts.append(step)
        tab.y.append(y)
        tab.w.append(w)

    def _priors(self, priors: list, probe_sites: dict) -> None:
        """The prior of every point-estimated global: its site's value must be one whole param of
        the guide, outside the data plate; ``self.priors`` maps the param to its site, the
        distribution, the site's scale, and the prior's arguments per entry where they are
        constants (None where they depend on the params)."""
        self.priors = {}
        for s in priors:
            name = s["name"]
            if any(f.name == self.plate for f in s["cond_indep_stack"]):
                raise NotCompilable(
                    f"the point-estimated site {name!r} is inside the data plate {self.plate!r}"
                )
            probe = probe_sites[name]["value"]
            param = next(
                (
                    n
                    for n, v in self.probe_values.items()
                    if v.shape == probe.shape and torch.equal(v.to(probe.dtype), probe)
                ),
                None,
            )
            if param is None or param in self.priors:
                raise NotCompilable(f"the point estimate of site {name!r} is not one pyro.param of the guide")
            if s["mask"] is not None or not isinstance(s["scale"], (int, float)):
                raise NotCompilable(f"the prior of site {name!r} is masked or scaled by a tensor")
            base = _unwrap(s["fn"])[0]
            pb = _unwrap(probe_sites[name]["fn"])[0]
            args = None
            names = next((a for (_, fam), a in CONJUGATE.items() if fam is type(base)), ())
            if names and all(torch.equal(getattr(pb, a).double(), getattr(base, a).double()) for a in names):
                shape = self.values[param].shape
                args = [torch.broadcast_to(getattr(base, a), shape).reshape(-1).to(self.dtype) for a in names]
            self.priors[param] = dict(
                site=name, fn=s["fn"], scale=float(s["scale"]), family=type(base), args=args
            )

    def log_prior(self, values: dict, names=None) -> torch.Tensor:
        """sum over the point-estimated globals (those in ``names``; all when None) of their prior's
        log-density (times the site's scale)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for n, p in self.priors.items():
            if names is None or n in names:
                total = total + p["fn"].log_prob(values[n]).sum() * p["scale"]
        return total

    def _roles(self) -> None:
        """Each param's route: closed form where all its uses are one role whose support its
        constraint matches, else gradient steps on Q."""
        uses: dict[str, set] = {n: set() for n in self.names}
        for tab in self.tables:
            for arg, src in zip(tab.args, tab.sources):
                if src[0] == "param":
                    uses[src[1]].add((tab.family, arg))
        for g in self.groups:
            for arg, src in zip(g.args, g.sources):
                if src[0] == "param":
                    # a MultivariateNormal's loc read other than as whole rows has no closed form
                    whole = arg != "loc" or g.family is not dist.MultivariateNormal or g.loc_rows is not None
                    uses[src[1]].add((g.family, arg) if whole else (g.family, "loc entries"))
        self.roles, self.routes = {}, {}
        for n in self.names:
            role = next(iter(uses[n])) if len(uses[n]) == 1 else None
            ok = role in ROLES and _same_constraint(self.constraints[n], ROLES[role])
            if ok and role == (dist.Categorical, "probs") and self.values[n].dim() == 0:
                ok = False
            route = "closed_form"
            prior = self.priors.get(n)
            if ok and prior is not None:
                ok = prior["args"] is not None and (role, prior["family"]) in CONJUGATE
                # a mode inside the support: Dirichlet, Beta and Gamma concentrations of at least 1
                if ok and prior["family"] is not dist.Normal:
                    shapes = prior["args"] if prior["family"] is dist.Beta else prior["args"][:1]
                    ok = all(bool((a >= 1).all()) for a in shapes)
                route = "closed_form_map"
            self.roles[n] = role if ok else None
            self.routes[n] = route if ok else ("gradient" if uses[n] or prior is not None else "unused")

    # ------------------------------------------------------------------ evaluation

    def _args(self, g: _Group, values: dict) -> list[torch.Tensor]:
        return [
            values[src[1]].reshape(-1)[ix] if src[0] == "param" else ix for src, ix in zip(g.sources, g.idx)
        ]

    @staticmethod
    def _tril(g: _Group, values: dict) -> torch.Tensor:
        """A MultivariateNormal group's Cholesky factors: one per row of its matrix param
        (R, D, D), or one per event (E, D, D) for constant matrices."""
        d = g.y.shape[-1]
        src, ix = g.sources[1], g.idx[1]
        m = values[src[1]].reshape(-1, d, d) if src[0] == "param" else ix
        return torch.linalg.cholesky(m) if g.args[1] == "covariance_matrix" else m

    def _mvn_log_probs(self, g: _Group, values: dict) -> torch.Tensor:
        """log N(y_e | loc_e, L_e L_e^T) = -|L_e^-1 (y_e - loc_e)|^2 / 2 - log det L_e - D log(2 pi) / 2,
        with L^-1 formed once per row of a matrix param and applied to that row's events (no
        (E, D, D) tensor)."""
        diff = g.y - self._args(g, values)[0]
        tril = self._tril(g, values)
        half_log_det = tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        if g.by_row is None:
            z = torch.linalg.solve_triangular(tril, diff.unsqueeze(-1), upper=False).squeeze(-1)
            maha = (z**2).sum(-1)
        else:
            eye = torch.eye(diff.shape[-1], dtype=diff.dtype, device=diff.device)
            inverse = torch.linalg.solve_triangular(tril, eye, upper=False)
            chunks = diff[g.row_order].split(g.by_row[1])
            parts = [((chunk @ inverse[r].T) ** 2).sum(-1) for r, chunk in zip(g.by_row[0], chunks)]
            maha = torch.cat(parts)[g.row_inverse]
            half_log_det = half_log_det[g.idx[1]]
        return -0.5 * maha - half_log_det - 0.5 * g.y.shape[-1] * math.log(2 * math.pi)

    def log_probs(self, g: _Group, values: dict) -> torch.Tensor:
        """Every element's log-density under ``values`` (masked elements 0)."""
        f = g.family
        if f is dist.MultivariateNormal:
            lp = self._mvn_log_probs(g, values)
            return torch.where(g.weight != 0, lp * g.weight, lp.new_zeros(()))
        args, y = self._args(g, values), g.y
        if f is dist.Categorical:
            lp = args[0].log()
        elif f is dist.Bernoulli:
            lp = torch.where(y > 0.5, args[0].log(), torch.log1p(-args[0]))
        elif f is dist.Poisson:
            lp = torch.xlogy(y, args[0]) - args[0] - torch.lgamma(y + 1)
        elif f is dist.Normal:
            loc, scale = args
            lp = -0.5 * ((y - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        elif f is dist.Exponential:
            lp = args[0].log() - args[0] * y
        else:
            a, b = args
            lp = torch.xlogy(a, b) + torch.xlogy(a - 1, y) - b * y - torch.lgamma(a)
        return torch.where(g.weight != 0, lp * g.weight, lp.new_zeros(()))

    def potentials(self, values: dict):
        """Log-potentials: per row const (N,), unary (N, T, K) and pairwise (N, T, K, K) (None
        when no pairwise factor reads the row, as an HMM's transitions), and the pairwise
        potentials shared by all rows (T, K, K)."""
        N, T, K = self.N, self.T, self.K
        sizes = (N, N * T * K, N * T * K * K if self.row_pairs else 0, 1, T * K, T * K * K)
        out = [torch.zeros(n, dtype=self.dtype, device=self.device) for n in sizes]
        for g in self.groups:
            lp = self.log_probs(g, values)
            for kind in range(6):
                if g.sel[kind] is None:
                    out[kind].index_add_(0, g.at[kind], lp)
                elif len(g.sel[kind]):
                    out[kind].index_add_(0, g.at[kind], lp[g.sel[kind]])
        c = out[0] + out[3]
        u = out[1].reshape(N, T, K) + out[4].reshape(T, K)
        for tab in self.tables:
            u = u.index_add(1, tab.steps, tab.log_probs(values))
        rows = out[2].reshape(N, T, K, K) if self.row_pairs else None
        return c, u, rows, out[5].reshape(T, K, K)

    @staticmethod
    def forward_backward(c, u, p_rows, p_shared, weights=None):
        """log p(x_n) per row and the posterior marginals of the unary cells (N, T, K) and of the
        pairwise cells: per row (N, T, K, K) when ``p_rows`` is given, else summed over rows
        (T, K, K), each row weighted by ``weights``. The scaled forward-backward recursions
        (Rabiner's: every step normalized, so nothing under- or overflows), the potentials
        exponentiated once relative to their maxima."""
        N, T, K = u.shape
        mu = u.amax(-1, keepdim=True)
        U = (u - mu).exp()
        p = p_shared[1:] if p_rows is None else p_rows[:, 1:] + p_shared[1:]
        mp = p.amax((-2, -1), keepdim=True)
        P = (p - mp).exp()  # step t's pairwise potential is P[..., t - 1, :, :]
        a, s = torch.empty_like(U), U.new_empty(N, T)
        s[:, 0] = U[:, 0].sum(-1)
        a[:, 0] = U[:, 0] / s[:, 0, None]
        for t in range(1, T):
            if p_rows is None:
                at = (a[:, t - 1] @ P[t - 1]) * U[:, t]
            else:
                at = torch.bmm(a[:, t - 1].unsqueeze(1), P[:, t - 1]).squeeze(1) * U[:, t]
            s[:, t] = at.sum(-1)
            a[:, t] = at / s[:, t, None]
        b = torch.empty_like(U)
        b[:, T - 1] = 1.0
        for t in range(T - 1, 0, -1):
            v = U[:, t] * b[:, t]
            if p_rows is None:
                b[:, t - 1] = (v @ P[t - 1].T) / s[:, t, None]
            else:
                b[:, t - 1] = torch.bmm(P[:, t - 1], v.unsqueeze(-1)).squeeze(-1) / s[:, t, None]
        log_z = s.log().sum(1) + mu.sum((1, 2)) + c
        log_z = log_z + (mp.sum() if p_rows is None else mp.sum((1, 2, 3)))
        qu = a * b
        v = (U[:, 1:] * b[:, 1:]) / s[:, 1:, None]
        if weights is not None:
            qu = qu * weights[:, None, None]
            v = v * weights[:, None, None]
        if p_rows is None:
            qp = u.new_zeros(T, K, K)
            if T > 1:
                qp[1:] = torch.einsum("nti,ntj->tij", a[:, :-1], v) * P
        else:
            qp = u.new_zeros(N, T, K, K)
            if T > 1:
                qp[:, 1:] = a[:, :-1, :, None] * P * v[:, :, None, :]
        return log_z, qu, qp

    def log_z(self, values: dict) -> torch.Tensor:
        """log p(x_n | theta) per row."""
        return self.forward_backward(*self.potentials(values))[0]

    def posterior(self, qc, qu, qp) -> tuple:
        """(Weighted) marginals -> the six flat cell posteriors, one per kind of element."""
        rows = qp.reshape(-1) if self.row_pairs else None
        shared = (qp.sum(0) if self.row_pairs else qp).reshape(-1)
        return (qc, qu.reshape(-1), rows, qc.sum(0, keepdim=True), qu.sum(0).reshape(-1), shared)

    @torch.no_grad()
    def e_step(self, values: dict, sample_weight: torch.Tensor | None = None):
        """sum_n w_n log p(x_n | theta) and the (weighted) posterior marginal of every cell."""
        rows, qu, qp = self.forward_backward(*self.potentials(values), weights=sample_weight)
        qc = torch.ones_like(rows) if sample_weight is None else sample_weight.to(rows)
        total = (rows * qc).sum()
        return total, self.posterior(qc, qu, qp)

    @staticmethod
    def posterior_at(g: _Group, post) -> torch.Tensor:
        """The posterior marginal of the cell each element of ``g`` adds to."""
        q = torch.zeros_like(g.weight)
        for kind in range(6):
            if g.sel[kind] is None:
                return post[kind][g.at[kind]]
            if len(g.sel[kind]):
                q[g.sel[kind]] = post[kind][g.at[kind]]
        return q

    def expected_log_joint(self, values: dict, post, names=None) -> torch.Tensor:
        """Q = sum_e q_e log f_e over the groups that read any of ``names`` (all when None)."""
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for tab in self.tables:
            if names is not None and not any(s[0] == "param" and s[1] in names for s in tab.sources):
                continue
            q, lp = tab.posterior(post, self.T, self.K), tab.log_probs(values)
            total = total + torch.where(q != 0, q * lp, lp.new_zeros(())).sum()
        for g in self.groups:
            if names is not None and not any(s[0] == "param" and s[1] in names for s in g.sources):
                continue
            q = self.posterior_at(g, post)
            lp = self.log_probs(g, values)
            total = total + torch.where(q != 0, q * lp, lp.new_zeros(())).sum()
        return total

    # ------------------------------------------------------------------ the M-step

    def closed_form(self, values: dict, post) -> dict:
        """The closed-form params' new values (exact conditional maximization of Q): the solve of
        the expected sufficient statistics (:mod:`.chain_statistics`)."""
        return solve(self, expected_statistics(self, values, post), values)

    # ------------------------------------------------------------------ certification

    def _pyro_log_z(self, values: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x | theta) by Pyro's own tensor variable elimination on a trace of the model, and
        the log-density of the point-estimated globals' priors in the same trace."""
        tr = _trace(self.model, self.data, self.nesting, values)
        tr.compute_log_prob()
        tr.pack_tensors()
        factors: OrderedDict = OrderedDict()
        sum_dims = set()
        log_prior = sum((s["log_prob_sum"] for s in _sites(tr) if s["name"] in self.point_sites), 0.0)
        for s in _sites(tr):
            if s["name"] in self.point_sites:
                continue
            ordinal = frozenset(tr.plate_to_symbol[f.name] for f in s["cond_indep_stack"] if f.vectorized)
            factors.setdefault(ordinal, []).append(s["packed"]["log_prob"])
            if s["infer"].get("_enumerate_symbol") is not None:
                sum_dims.add(s["infer"]["_enumerate_symbol"])
        present = {d for terms in factors.values() for t in terms for d in t._pyro_dims}
        absent = {s for o in factors for s in o} - present
        merged: OrderedDict = OrderedDict()
        for o, terms in factors.items():
            merged.setdefault(o - absent, []).extend(terms)
        return contract_to_tensor(merged, sum_dims).sum(), torch.as_tensor(log_prior)

    def _perturbed(self, gen: torch.Generator) -> dict:
        """The params moved by a random step in their unconstrained space."""
        perturbed = {}
        for n, v in self.values.items():
            t = transform_to(self.constraints[n])
            z = t.inv(v)
            noise = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(z.device, z.dtype)
            perturbed[n] = t(torch.where(torch.isfinite(z), z, torch.zeros_like(z)) + 0.5 * noise).detach()
        return perturbed

    @torch.no_grad()
    def _check_reads(self, gen: torch.Generator) -> None:
        """Where the full certification is skipped (rows beyond the certified ones, a later
        minibatch): every distribution argument the compile reads as a gather of a param equals
        that gather in a trace of the model at randomly perturbed params. The log-density
        formulas were certified on other rows; this catches an argument that is not a plain
        gather on these rows (say ``coef[z, 0] + x_n`` with an integer x_n, whose probe codes
        read as ``coef[z, x_n]``). One trace, no log-densities."""
        perturbed = self._perturbed(gen)
        sites = {s["name"]: s for s in _sites(_trace(self.model, self.data, self.nesting, perturbed, False))}
        tol = dict(rtol=1e-10, atol=0.0) if self.dtype == torch.float64 else dict(rtol=1e-5, atol=0.0)
        for site, arg, kind, name, index in self.reads:
            theirs = _arg(_unwrap(sites[site]["fn"])[0], arg).to(self.dtype)
            value = perturbed[name].to(self.dtype)
            if kind == "entries":
                ours, theirs = value.reshape(-1)[index], compact(theirs)
            elif kind == "rows":
                k = value.shape[-1]
                ours = value.reshape(-1, k)[index]
                ours, theirs = ours / ours.sum(-1, keepdim=True), compact(theirs, trailing=1)
            else:
                d = value.shape[-1]
                ours, theirs = value.reshape(-1, d, d)[index], compact(theirs, trailing=2)
            ours, theirs = torch.broadcast_tensors(ours, theirs)
            if not torch.allclose(ours, theirs, **tol):
                raise NotCompilable(
                    f"the argument {arg!r} of site {site!r} is not a gather of param {name!r} on every row"
                )

    def _certify(self, real, gen: torch.Generator) -> None:
        """The compiled log Z equals Pyro's at a random perturbation of the params (random, so no
        symmetry of the start, such as equal scales, can hide a misplaced factor)."""
        tol = 1e-10 if self.dtype == torch.float64 else 1e-4
        perturbed = self._perturbed(gen)
        with torch.no_grad():
            for values in (perturbed,):
                theirs, prior = (float(t) for t in self._pyro_log_z(values))
                ours = float(self.log_z(values).sum())
                scale = abs(theirs) + 1.0
                if not (math.isfinite(ours) and abs(ours - theirs) <= tol * scale):
                    raise NotCompilable(
                        f"the compiled log-likelihood ({ours:.12g}) differs from Pyro's ({theirs:.12g})"
                    )
                ours = float(self.log_prior(values))
                if not abs(ours - prior) <= tol * (abs(prior) + 1.0):
                    raise NotCompilable(
                        f"the priors' log-density ({ours:.12g}) differs from Pyro's ({prior:.12g})"
                    )
