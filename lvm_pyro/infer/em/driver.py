"""``em()``: expectation-maximization for Pyro models with discrete latent sites.

Each iteration raises log p(x | theta) + log p(theta), never lowering it (up to the
``reg_covar`` a Gaussian mixture adds to its covariances, and re-seeding, which is reported):

- E-step: the exact posterior q(z) = p(z | x, theta_old) over the discrete sites, so the
  bound log p(x) >= E_q[log p(x, z)] + H[q] is tight.
- M-step: theta_new = argmax_theta E_q[log p(x, z | theta)] + log p(theta).

Two routes run the E-step, and ``EMResult.e_step`` says which one ran:

- ``"enum"``: Pyro's enumeration. The model is traced under ``poutine.enum`` with the guide's
  point estimates of the global parameters replayed, and Pyro's tensor variable elimination
  (``pyro.ops.contract.contract_to_tensor``, the machinery behind ``TraceEnum_ELBO``)
  gives log p(x) and the posterior marginal of every log-factor over the discrete sites it
  depends on. This works for any model whose latent sites are either enumerable (discrete,
  marked ``infer={"enumerate": "parallel"}`` or left unmarked: ``em`` enumerates every
  discrete latent site the guide does not sample) or point-estimated by the guide.
- ``"closed_form"``: a model that provides ``expected_statistics(x, shift, chunk_size)``
  and ``m_step_from_statistics(stats)`` (the Gaussian mixture) does the E-step and the
  sufficient statistics as matrix products over chunks of rows; this is tested equal to the
  enumeration route and is the default for such models (``e_step="auto"``). For a mixture
  with N=100,000, D=8, K=16 (full) it is about 8x faster than the enumeration route
  (``benchmarks/gmm_em.py`` prints both).

The model is any Pyro program: a ``LatentVariableModel``, a (model, guide) pair, or a model
callable alone when every latent site is discrete and every parameter a ``pyro.param`` (the
style of Pyro's ``examples/hmm.py``; it runs with an empty guide). ``data_plate`` names its
plate over the rows of x ("data" by default, "sequences" in Pyro's HMM example); chunks
(``chunk_size``) and shards (``distributed``) call the model on slices of those rows.

A model may also define ``check_fit_data(x)`` (warnings about the data worth giving once,
at fit time: the mixture flags constant features). The M-step is the model's own where it
has one: ``m_step_from_statistics`` (closed_form
route) or ``m_step(x, posterior)`` with ``posterior`` a dict of the enumerated sites'
marginals (enum route), ``posterior["z"]`` of shape (rows, ..., values), and of every factor's
marginal over two or more enumerated sites, ``posterior[("z_0", "z_1")]`` of shape
(rows, ..., values of z_0, values of z_1) (the pairwise posteriors a transition matrix needs).
A user's model without an M-step of its own whose discrete sites form a chain of
exponential-family sites over ``pyro.param``s takes closed-form M-steps found automatically
(:mod:`lvm_pyro.infer.em.chain`, ``e_step == "chain"``); global sites point-estimated by a Delta
guide (``AutoDelta``) whose prior is conjugate to their role take the MAP in closed form.
Otherwise it is generalized EM:
``m_step_steps`` Adam steps on
Q(theta) = sum_f E_q[log f(theta)] + log p(theta) (every log-factor f weighted by its
posterior marginal, held fixed), keeping the best parameters seen, so Q never decreases.
An M-step whose steps find no higher Q where one exists (a small gradient step gains more than
``tol`` per point) is a stall, reported
as such (``EMResult.stop_reason == "stalled"``, a warning, ``converged=False``), never as
convergence.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from opt_einsum import shared_intermediates
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints, transform_to
from tqdm.auto import tqdm

from lvm_pyro.data import resolve_device, validate_with_conditions
from lvm_pyro.errors import (
    ConfigurationError,
    ConvergenceWarning,
    DataError,
    DiagnosticWarning,
    DivergenceError,
    LVMError,
    ModelContractError,
)
from lvm_pyro.infer import logdensity
from lvm_pyro.infer.distributed import DistributedContext, join_group
from lvm_pyro.infer.em.chain import CompiledChain, NotCompilable, compile_chain, plain_constraint
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.models.base import DATA_PLATE, Program, as_program, empty_guide

INITS = ("auto", "current", "kmeans++", "k-means++", "kmeans", "random_from_data", "random")
E_STEPS = ("auto", "closed_form", "enum")


@dataclass(frozen=True)
class ReseedEvent:
    """A component re-seeded because its expected count fell below the model's threshold."""

    init: int
    iteration: int
    component: int
    count: float


@dataclass
class EMState:
    """What the EM loop knows, passed to every callback after each iteration.

    A callback may set ``stop = True`` (and ``stop_reason``) to end the current start.
    ``log_likelihood`` and ``objective`` are per data point, one entry per E-step so far.
    """

    model: object
    init: int
    iteration: int
    log_likelihood: list[float]
    objective: list[float]
    stop: bool = False
    stop_reason: str = ""


@dataclass
class EMResult:
    """What ``em`` returns (for the best of the ``n_init`` starts).

    ``log_likelihood[i]``: mean log p(x_n | theta) after i M-steps (entry 0: the start; the
    last entry: the returned parameters). ``objective``: the same plus log p(theta) / N, the
    quantity EM never decreases (equal to ``log_likelihood`` with flat priors).
    ``lower_bound``: the objective at the last E-step inside the loop (scikit-learn's
    ``lower_bound_``). ``n_iter``: M-steps done. ``best_init``: index of the winning start;
    ``init_objectives``: the final objective of every start. ``reseeded``: re-seeding
    events. ``e_step`` / ``m_step``: the routes that ran ("closed_form" or "enum";
    "closed_form", "model" or "gradient"). ``stop_reason``: why the winning start stopped:
    "converged" (the objective changed by less than ``tol`` after an M-step that moved, or
    an M-step found no higher Q and no gradient step gains more than ``tol`` per point: a
    fixed point), "stalled" (a generalized M-step found no higher Q although gradient steps
    gain more than ``tol`` per point: not converged; raise ``m_step_steps`` or change
    ``m_step_lr``),
    "max_iter", or "callback" (a callback set ``stop``; its ``stop_reason`` is appended).
    ``param_routes``: for a user's model on the compiled chain route (``e_step == "chain"``),
    each ``pyro.param``'s M-step, "closed_form", "closed_form_map" (the MAP under a conjugate
    prior, for a point-estimated global) or "gradient" (``m_step`` is then
    "closed_form", "gradient" or "closed_form+gradient"). ``closed_form_refused``: why a
    user's model without its own M-step did not take the chain route (None when it did, or
    when the model brings its own M-step).
    """

    model: object
    log_likelihood: list[float]
    objective: list[float]
    converged: bool
    n_iter: int
    best_init: int
    init_objectives: list[float]
    reseeded: list[ReseedEvent]
    lower_bound: float
    e_step: str
    m_step: str
    wall_time: float
    config: dict = field(default_factory=dict)
    stop_reason: str = ""
    param_routes: dict = field(default_factory=dict)
    closed_form_refused: str | None = None

    def __repr__(self) -> str:
        ll = self.log_likelihood
        start = f" from {ll[0]:.6g}" if len(ll) > 1 else ""
        n_starts = len(self.init_objectives)
        starts = f", best_init={self.best_init} of {n_starts}" if n_starts > 1 else ""
        reseeded = f", reseeded={len(self.reseeded)}" if self.reseeded else ""
        return (
            f"EMResult(model={_name(self.model)}, "
            f"e_step={self.e_step!r}, m_step={self.m_step!r}, log_likelihood={ll[-1]:.6g}{start} per point, "
            f"n_iter={self.n_iter}, converged={self.converged}, stop_reason={self.stop_reason!r}"
            f"{starts}{reseeded}, "
            f"wall_time={self.wall_time:.3g}s)"
        )


def _name(model) -> str:
    """A model's short name: a function's name, else its class's (a (model, guide) pair: the model's)."""
    if isinstance(model, tuple) and model:
        model = model[0]
    if callable(model) and not hasattr(model, "model") and hasattr(model, "__name__"):
        return model.__name__
    return type(model).__name__


# --------------------------------------------------------------------------- enumeration


def _base(fn):
    while isinstance(fn, (dist.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _ordinal(trace, site) -> frozenset:
    return frozenset(trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)


@dataclass
class _EnumTrace:
    """The packed log-factors of one enumerated trace of the model."""

    factors: OrderedDict  # ordinal -> [packed log-factor]
    named: list  # (site name, ordinal, packed log-factor, its enumerated symbols)
    sum_dims: set
    enum_sites: dict  # site name -> (symbol, ordinal, enum dim)
    log_prior: torch.Tensor
    symbol_to_dim: dict
    data_symbol: str | None


def _trace_enum(program: Program, data: tuple[torch.Tensor, ...] | torch.Tensor, nesting: int,
                data_plate: str = DATA_PLATE) -> _EnumTrace:
    """Trace the guide, then the model under enumeration with the guide replayed; pack the
    log-factors. ``data`` is x or (x, condition, ...), passed to both as positional arguments;
    ``data_plate`` names the plate over its rows."""
    data = data if isinstance(data, tuple) else (data,)
    traces = logdensity.trace_pair(program, data, plate=data_plate, nesting=nesting)  # checks the guide
    guide_tr, model_tr = traces.guide, traces.model
    globals_ = {s["name"] for s in logdensity.sample_sites(guide_tr)}
    for name in globals_:
        fn = _base(guide_tr.nodes[name]["fn"])
        if not logdensity.point_mass(guide_tr.nodes[name]["fn"]):
            raise ModelContractError(
                f"em fits point estimates, but the guide samples site {name!r} from a "
                f"{type(fn).__name__}: use a Delta guide (e.g. pyro.infer.autoguide.AutoDelta) "
                "for the global parameters, or train this model with fit()"
            )
    model_tr.compute_log_prob()
    model_tr.pack_tensors()
    factors, named, sum_dims, enum_sites = OrderedDict(), [], set(), {}
    log_prior = data[0].new_zeros(())
    for name, site in model_tr.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if name in globals_:
            log_prior = log_prior + site["log_prob_sum"]
            continue
        ordinal = _ordinal(model_tr, site)
        if site["infer"].get("_enumerate_dim") is not None:
            symbol = site["infer"]["_enumerate_symbol"]
            sum_dims.add(symbol)
            enum_sites[name] = (symbol, ordinal, site["infer"]["_enumerate_dim"])
        elif not site["is_observed"]:
            raise ModelContractError(
                f"latent site {name!r} ({type(_base(site['fn'])).__name__}) is neither "
                "enumerable nor sampled by the guide: em needs every latent site to be discrete "
                "(summed out) or a point estimate in the guide (Delta / AutoDelta)"
            )
        if site["mask"] is False:  # no factor at all (a masked-out site: obs_mask's missing entries)
            continue
        term = site["packed"]["log_prob"]
        factors.setdefault(ordinal, []).append(term)
        named.append((name, ordinal, term))
    if not enum_sites:
        raise ModelContractError(
            "em needs a discrete latent site to enumerate, and this model has none (every "
            "latent site is in the guide or observed): add a discrete site such as "
            "pyro.sample('z', dist.Categorical(w), infer={'enumerate': 'parallel'}), or train "
            "the model with fit()"
        )
    named = [(n, o, t, set(t._pyro_dims) & sum_dims) for n, o, t in named]
    data_symbol = model_tr.plate_to_symbol.get(data_plate)
    return _EnumTrace(factors, named, sum_dims, enum_sites, log_prior, model_tr.symbol_to_dim, data_symbol)


def _normalize(log_q: torch.Tensor, symbols: set) -> torch.Tensor:
    dims = log_q._pyro_dims
    axes = [i for i, s in enumerate(dims) if s in symbols]
    q = (log_q - torch.logsumexp(log_q, axes, keepdim=True)).exp()
    q._pyro_dims = dims
    return q


def _site_marginal(q: torch.Tensor, symbol_to_dim: dict, enum_dim: int) -> torch.Tensor:
    """A packed marginal over one site's values -> (..., values), as compute_marginals does."""
    probs = packed.unpack(q, symbol_to_dim)
    probs = probs.unsqueeze(-1).transpose(-1, enum_dim - 1).squeeze(enum_dim - 1)
    while probs.dim() > 1 and probs.shape[0] == 1:
        probs = probs.squeeze(0)
    return probs


@dataclass
class _ChunkPosterior:
    """The E-step of one chunk: per-factor weights and per-site marginals (all detached)."""

    weights: dict  # site name -> packed posterior over the factor's symbols (times the row weights)
    marginals: dict  # enumerated site name -> (..., values)
    row_weight: torch.Tensor | None = None  # the chunk's sample weights, or None
    axes: dict = field(default_factory=dict)  # marginal's key -> its axis over rows (negative)


def _factor_marginal(q: torch.Tensor, tr: _EnumTrace, sites: list[str]) -> torch.Tensor:
    """A packed factor posterior -> (..., values of sites[0], values of sites[1], ...)."""
    probs = packed.unpack(q, tr.symbol_to_dim)
    d = probs.dim()
    enum = [d + tr.enum_sites[name][2] for name in sites]
    probs = probs.permute([i for i in range(d) if i not in enum] + enum)
    while probs.dim() > len(sites) and probs.shape[0] == 1:
        probs = probs.squeeze(0)
    return probs


def _weighted_rows(term: torch.Tensor, weight: torch.Tensor | None, data_symbol) -> torch.Tensor:
    """A packed tensor inside the data plate times each row's sample weight (a tensor without
    the data dim, one shared by all rows or a chunk of one row, times their sum)."""
    if weight is None:
        return term
    dims = term._pyro_dims
    if data_symbol in dims:
        i = dims.index(data_symbol)
        out = term * weight.reshape((-1,) + (1,) * (term.dim() - i - 1))
    else:
        out = term * weight.sum()
    out._pyro_dims = dims
    return out


def _enum_e_step(
    tr: _EnumTrace, row_weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, _ChunkPosterior]:
    """log p(x) (sum_n w_n log p(x_n) with row weights) and the posterior of every factor's
    discrete sites, by variable elimination.

    Factors over the same sites in the same plates share one contraction (for a mixture the
    prior of z and the likelihood of x need the same posterior p(z_n | x_n)).
    """
    done: dict = {}
    # a plate of size 1 (one row, or a last chunk of one row) is packed away: no factor has its
    # dim, so it is dropped from the ordinals (a plate of one element is no plate)
    present = {d for terms in tr.factors.values() for t in terms for d in t._pyro_dims}
    absent = {s for o in tr.factors for s in o} - present
    factors = OrderedDict()
    for o, terms in tr.factors.items():
        factors.setdefault(o - absent, []).extend(terms)

    def posterior(ordinal: frozenset, symbols: set) -> torch.Tensor:
        ordinal = ordinal - absent
        key = (ordinal, frozenset(symbols))
        if key not in done:
            log_q = contract_to_tensor(
                factors, tr.sum_dims, target_ordinal=ordinal, target_dims=set(symbols), cache=cache
            )
            done[key] = _normalize(log_q, symbols)
        return done[key]

    with shared_intermediates() as cache:
        if row_weight is None:
            total = contract_to_tensor(factors, tr.sum_dims, cache=cache).sum()
        else:
            rows = contract_to_tensor(
                factors, tr.sum_dims, target_ordinal=frozenset({tr.data_symbol}) - absent, cache=cache
            )
            total = _weighted_rows(rows, row_weight, tr.data_symbol).sum()
        # a factor's posterior lives in the plates of its enumerated sites (the entries of a plate
        # nested inside them, say features, share it)
        site_ordinal = {symbol: ordinal for symbol, ordinal, _ in tr.enum_sites.values()}
        weights = {
            name: posterior(o & frozenset.intersection(*(site_ordinal[s] for s in syms)), syms)
            for name, o, _, syms in tr.named
            if syms
        }
        marginals = {
            name: _site_marginal(posterior(ordinal, {symbol}), tr.symbol_to_dim, enum_dim)
            for name, (symbol, ordinal, enum_dim) in tr.enum_sites.items()
        }
    axes = _add_factor_marginals(tr, weights, marginals)
    return total, _ChunkPosterior(_weigh_rows(tr, weights, row_weight), marginals, row_weight, axes)


def _add_factor_marginals(tr: _EnumTrace, weights: dict, marginals: dict) -> dict:
    """Add every factor over two or more enumerated sites (an HMM's (z_{t-1}, z_t)) to
    ``marginals``, for a model's m_step; returns the data axis of each marginal."""
    order = list(tr.enum_sites)
    symbol_site = {symbol: name for name, (symbol, _, _) in tr.enum_sites.items()}
    data_dim = tr.symbol_to_dim.get(tr.data_symbol, -1)
    axes = {name: data_dim - 1 for name in marginals}
    for name, _, _, syms in tr.named:
        if len(syms) > 1:
            key = tuple(sorted((symbol_site[s] for s in syms), key=order.index))
            marginals[key] = _factor_marginal(weights[name], tr, list(key))
            axes[key] = data_dim - len(key)
    return axes


def _weigh_rows(tr: _EnumTrace, weights: dict, row_weight: torch.Tensor | None) -> dict:
    """The factors' posteriors with each data row multiplied by its sample weight."""
    if row_weight is None:
        return weights
    return {name: _weighted_rows(weights[name], row_weight, tr.data_symbol) if tr.data_symbol in o
            else weights[name] for name, o, _, syms in tr.named if syms}


def _random_posterior(
    tr: _EnumTrace, gen: torch.Generator, row_weight: torch.Tensor | None = None
) -> _ChunkPosterior:
    """Independent uniform-random marginals per enumerated site (a random start)."""
    dim_to_symbol = {d: s for s, d in tr.symbol_to_dim.items()}
    site_q, marginals = {}, {}
    own = {name: term for name, _, term, _ in tr.named}
    for name, (symbol, _, enum_dim) in tr.enum_sites.items():
        term = own[name]
        shape = [
            size if (s == symbol or s not in tr.sum_dims) else 1
            for s, size in zip(term._pyro_dims, term.shape)
        ]
        r = torch.rand(shape, generator=gen, dtype=term.dtype).to(term.device)
        r._pyro_dims = term._pyro_dims
        r = packed.unpack(r, tr.symbol_to_dim)
        r = r / r.sum(enum_dim, keepdim=True)
        site_q[symbol] = r
        q = packed.pack(r, dim_to_symbol)
        marginals[name] = _site_marginal(q, tr.symbol_to_dim, enum_dim)
    weights = {}
    for name, _, _, symbols in tr.named:
        if symbols:
            prod = math.prod(site_q[s] for s in sorted(symbols))
            weights[name] = packed.pack(prod, dim_to_symbol)
    axes = _add_factor_marginals(tr, weights, marginals)
    return _ChunkPosterior(_weigh_rows(tr, weights, row_weight), marginals, row_weight, axes)


def _expected_log_joint(tr: _EnumTrace, post: _ChunkPosterior) -> torch.Tensor:
    """Q = sum over log-factors f of sum q_f * log f (q_f = 1 for factors without a discrete site)."""
    total = tr.log_prior.new_zeros(())
    for name, ordinal, term, symbols in tr.named:
        if not symbols:
            if tr.data_symbol in ordinal:
                term = _weighted_rows(term, post.row_weight, tr.data_symbol)
            total = total + term.sum()
            continue
        q = post.weights[name]
        total = total + torch.einsum(f"{q._pyro_dims},{term._pyro_dims}->", q, term)
    return total


@contextlib.contextmanager
def _model_errors(rows: int, data_plate: str):
    """A model or guide that fails on the data (shapes, indices, dtypes) raises a
    ModelContractError saying where, instead of a traceback from inside Pyro or torch."""
    try:
        yield
    except LVMError:
        raise
    except (ValueError, RuntimeError, IndexError, TypeError, KeyError) as exc:
        raise ModelContractError(
            f"the model or guide failed on {rows} rows of the data ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}): check that they take the data as "
            f"em passes it, model(x, *conditions), that every observed site has one value per row "
            f"inside pyro.plate({data_plate!r}, len(x)), and that each tensor's shape matches "
            "its plates"
        ) from exc


class _SiteFrames(Messenger):
    """Records the plates (``cond_indep_stack``) of every sample site a program runs, and the
    enumerated sites that are masked somewhere (``poutine.mask`` with a False entry)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: dict[str, tuple] = {}
        self.masked_enumerated: list[str] = []

    def _pyro_post_sample(self, msg: dict) -> None:
        if site_is_subsample(msg):
            return
        self.frames[msg["name"]] = tuple(msg["cond_indep_stack"])
        mask = msg["mask"]
        if msg["infer"].get("_enumerate_dim") is not None and mask is not None and (
            mask is False or (isinstance(mask, torch.Tensor) and not bool(mask.all()))
        ):
            self.masked_enumerated.append(msg["name"])


# --------------------------------------------------------------------------- the two routes
#
# Both routes take the data as a tuple (x, condition, ...). Under distributed=True every
# process holds all of it, runs the E-step on its own shard of rows and sums the partial
# results over processes, so every process takes the same M-step.


class _ClosedFormRoute:
    """The model's own E-step statistics and M-step (the Gaussian mixture)."""

    e_step_name = "closed_form"
    m_step_name = "closed_form"

    def __init__(self, model, data: tuple, chunk_size: int | None,
                 group: DistributedContext | None = None) -> None:
        self.model, self.chunk_size, self.group = model, chunk_size, group
        self.shift = data[0].nanmean(0)  # NaN: missing values (the Gaussian mixture)
        self.sample_weight = None

    def _rows(self, data: tuple) -> torch.Tensor:
        return data[0] if self.group is None else self.group.shard(data[:1])[0]

    def e_step(self, data: tuple):
        if self.sample_weight is not None:
            total, stats = self.model.expected_statistics(self._rows(data), self.shift, self.chunk_size,
                                                          sample_weight=self.sample_weight)
        else:
            total, stats = self.model.expected_statistics(self._rows(data), self.shift, self.chunk_size)
        if self.group is not None:
            self.group.all_reduce_([total, stats.nk, stats.sx, stats.sxx])
        return total, stats

    def log_likelihood(self, data: tuple) -> torch.Tensor:
        """sum_n log p(x_n), without the statistics (the final evaluation)."""
        log_p = self.model.log_prob(self._rows(data), self.chunk_size)
        if self.sample_weight is not None:
            log_p = log_p * self.sample_weight
        total = log_p.sum(dtype=torch.float64)
        if self.group is not None:
            self.group.all_reduce_([total])
        return total

    def m_step(self, data: tuple, stats) -> bool:
        self.model.m_step_from_statistics(stats)
        return True

    def log_prior(self) -> float:
        return float(self.model.log_prior()) if hasattr(self.model, "log_prior") else 0.0

    def reseed(self, data: tuple, stats, gen) -> list[tuple[int, float]]:
        if not hasattr(self.model, "reseed_"):
            return []
        counts = stats.nk.tolist()
        # every process holds all rows and the same generator: the same points are drawn
        return [(k, counts[k]) for k in self.model.reseed_(data[0], stats, gen)]

    def initialize(self, data: tuple, method: str, gen) -> None:
        self.model.initialize_(data[0], method, gen, self.chunk_size)

    def random_start(self, data: tuple, gen) -> None:
        self.initialize(data, "random", gen)


class _EnumRoute:
    """Pyro's enumeration E-step for any model; the model's m_step or generalized EM."""

    e_step_name = "enum"

    def __init__(self, program: Program, data: tuple, chunk_size, steps: int, lr: float,
                 group: DistributedContext | None = None, data_plate: str = DATA_PLATE):
        self.program, self.group, self.data_plate = program, group, data_plate
        self.n = data[0].shape[0]
        self.rows = self.n if chunk_size is None else min(chunk_size, self.n)
        with _model_errors(self.rows, data_plate):
            self.nesting = logdensity.plate_nesting(program, data)
        self.steps, self.lr = steps, lr
        self.closed_m_step = getattr(program.source, "m_step", None)
        self.m_step_name = "model" if self.closed_m_step is not None else "gradient"
        self.params: list[torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.possible_gain = 0.0  # per point, after an M-step without progress
        self._log_prior = 0.0
        self.sample_weight = None
        self._check_data_plate(data)

    def _check_data_plate(self, data: tuple) -> None:
        """The plate ``data_plate`` runs over the rows of x, whole, wherever rows are split.

        Chunks (``chunk_size``) and shards (``distributed``) call the model on a slice of the
        rows, which is right only if the plate over them is ``pyro.plate(data_plate, len(x))``
        and every observed or enumerated site sits inside it. A name the user gave must exist.
        """
        split = self.rows < self.n or self.group is not None
        chunk = tuple(t[: self.rows] for t in data)
        watch_model, watch_guide = _SiteFrames(), _SiteFrames()
        model = poutine.enum(config_enumerate(watch_model(self.program.model)),
                             first_available_dim=-1 - self.nesting)
        with poutine.block(), _model_errors(len(chunk[0]), self.data_plate):
            guide_tr = poutine.trace(watch_guide(self.program.guide)).get_trace(*chunk)
            poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*chunk)
        if watch_model.masked_enumerated:
            names = watch_model.masked_enumerated
            warnings.warn(
                f"em: the enumerated site(s) {names[:5]}{' ...' if len(names) > 5 else ''} are "
                "masked (poutine.mask) for some rows. Pyro gives a masked discrete site weight 1 "
                "for each of its K values, so where its observations are masked too (padded "
                "sequences), log_likelihood and objective include log K per masked value, a "
                "constant that leaves the EM updates unchanged; to report log p(x) of the "
                "unpadded data, subtract it, or pass sequences without padding",
                DiagnosticWarning,
                stacklevel=5,
            )
        plates = sorted({f.name for frames in watch_model.frames.values() for f in frames})
        frames = [f for fs in watch_model.frames.values() for f in fs if f.name == self.data_plate]
        if not frames:
            if split or self.data_plate != DATA_PLATE:
                why = ("chunk_size and distributed split the rows of that plate; "
                       if split else "")
                raise ModelContractError(
                    f"em found no plate named {self.data_plate!r} in the model (its plates: "
                    f"{plates or 'none'}): {why}pass data_plate=<the name of the model's plate over "
                    "the rows of x> (e.g. data_plate='sequences'), or put the observations inside "
                    f"pyro.plate({self.data_plate!r}, len(x))"
                )
            return
        frame = frames[0]
        if not frame.vectorized:
            raise ModelContractError(
                f"the data plate {self.data_plate!r} is a sequential plate (a Python loop over "
                "pyro.plate): em needs a vectorized plate, `with pyro.plate("
                f"{self.data_plate!r}, len(x), dim=...)`, or data_plate= naming another plate"
            )
        if frame.full_size is not None and frame.size != frame.full_size:
            raise ModelContractError(
                f"the model subsamples its data plate {self.data_plate!r} itself ({frame.size} of "
                f"{frame.full_size} rows): every E-step needs every row, so drop the plate's "
                "subsample_size / subsample and bound memory with em's chunk_size= instead"
            )
        rows = len(chunk[0])
        if frame.size != rows:
            raise ModelContractError(
                f"the data plate {self.data_plate!r} has size {frame.size}, but the model was "
                f"called with {rows} rows of x: em calls the model on the rows of x (in chunks with "
                f"chunk_size=), so the plate must be pyro.plate({self.data_plate!r}, len(x)) over "
                "the first dimension of x; or pass data_plate= naming the plate over the rows"
            )
        if split:
            local_points = [name for name, fs in watch_guide.frames.items()
                            if any(f.name == self.data_plate for f in fs)]
            if local_points:
                raise ModelContractError(
                    f"the guide samples site(s) {local_points} inside the data plate "
                    f"{self.data_plate!r}: em treats guide sites as global point estimates, counted "
                    "once, so chunks or shards of rows cannot split them. Enumerate these sites in "
                    "the model (discrete), or leave chunk_size=None and distributed=False"
                )
            outside = [
                name for name, fs in watch_model.frames.items()
                if name not in watch_guide.frames and all(f.name != self.data_plate for f in fs)
            ]
            if outside:
                raise ModelContractError(
                    f"site(s) {outside} are outside the data plate {self.data_plate!r}, so a chunk "
                    "or shard of rows would count them once per piece: move them inside "
                    f"pyro.plate({self.data_plate!r}, len(x)), or leave chunk_size=None and "
                    "distributed=False"
                )

    def _local(self, data: tuple) -> tuple:
        return data if self.group is None else self.group.shard(data)

    def _chunks(self, data: tuple) -> list[tuple]:
        return list(zip(*(t.split(self.rows) for t in data)))

    def _weights(self) -> list:
        """The sample weights of each chunk (None for every chunk without weights)."""
        if self.sample_weight is None:
            return [None] * math.ceil(self.n / self.rows)
        return list(self.sample_weight.split(self.rows))

    def _trace(self, chunk: tuple) -> _EnumTrace:
        tr = _trace_enum(self.program, chunk, self.nesting, self.data_plate)
        if len(chunk[0]) < self.n:
            global_sites = [n for n, (_, o, _) in tr.enum_sites.items() if tr.data_symbol not in o]
            if global_sites:
                raise ConfigurationError(
                    f"site(s) {global_sites} are enumerated outside the plate {self.data_plate!r}, so "
                    "their posterior needs all the data at once: leave chunk_size=None and "
                    "distributed=False"
                )
        return tr

    @torch.no_grad()
    def e_step(self, data: tuple):
        local = self._local(data)
        total, posts = local[0].new_zeros((), dtype=torch.float64), []
        for i, (chunk, weight) in enumerate(zip(self._chunks(local), self._weights())):
            tr = self._trace(chunk)
            if i == 0:
                self._log_prior = float(tr.log_prior)
            ll, post = _enum_e_step(tr, weight)
            total += ll.double()
            posts.append(post)
        if self.group is not None:
            self.group.all_reduce_([total])
        return total, posts

    def log_prior(self) -> float:
        return self._log_prior

    def log_likelihood(self, data: tuple) -> torch.Tensor:
        return self.e_step(data)[0]

    def reseed(self, data: tuple, posts, gen) -> list:
        return []

    def m_step(self, data: tuple, posts: list[_ChunkPosterior]) -> bool:
        """Take the M-step; False when it left the parameters where they were (a stall)."""
        if self.closed_m_step is not None:
            axes = posts[0].axes
            marginals = {name: _cat_rows([p.marginals[name] for p in posts], axes.get(name, -2))
                         for name in posts[0].marginals}
            if self.group is not None:  # the model's M-step sees every row's posterior
                marginals = {name: self.group.all_gather_rows(m, dim=axes.get(name, -2))
                             for name, m in marginals.items()}
            self.closed_m_step(*data, marginals)
            return True
        return self._gradient_m_step(self._local(data), posts)

    def _q(self, local: tuple, posts, backward: bool) -> float:
        """This process's share of Q; its gradient (of -Q / N) accumulates in the parameters."""
        total = 0.0
        with_prior = self.group is None or self.group.is_main  # log p(theta) counted once
        for i, (chunk, post) in enumerate(zip(self._chunks(local), posts)):
            tr = self._trace(chunk)
            q = _expected_log_joint(tr, post) + (tr.log_prior if i == 0 and with_prior else 0.0)
            if backward:
                (-q / self.n).backward()
            total += float(q.detach())
        return total

    def _sum_q(self, q: float, backward: bool) -> float:
        """Q and its gradients summed over processes."""
        if self.group is None:
            return q
        if backward:
            return float(self.group.all_reduce_step(torch.tensor(q, dtype=torch.float64), self.params))
        return self.group.all_reduce_sum(q, self.params[0].device)

    def _collect_params(self, local: tuple, posts) -> list[torch.Tensor]:
        """The module's parameters and every pyro.param the model and guide touch, once each."""
        with poutine.trace(param_only=True) as capture, torch.no_grad():
            chunk = self._chunks(local)[0]
            _expected_log_joint(_trace_enum(self.program, chunk, self.nesting, self.data_plate), posts[0])
        module = self.program.module
        candidates = list(module.parameters()) if module is not None else []
        for site in capture.trace.nodes.values():
            value = site["value"]
            candidates.append(value.unconstrained() if hasattr(value, "unconstrained") else value)
        params = list({id(p): p for p in candidates if p.requires_grad and p.is_leaf}.values())
        if not params:
            raise ModelContractError(
                "em found no parameters to fit: declare the global parameters with pyro.param, "
                "as PyroParams of the model, or as Delta guide sites built from them"
            )
        return params

    def _gradient_m_step(self, local: tuple, posts) -> bool:
        """Adam steps on Q, keeping the best parameters seen (the start included), so Q never
        decreases. Returns whether Q rose above its value at the start (False: a stall)."""
        if self.params is None:
            self.params = self._collect_params(local, posts)
            self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        start_q, best_q, best = -math.inf, -math.inf, None
        for step in range(self.steps):
            self.optimizer.zero_grad()
            q = self._sum_q(self._q(local, posts, backward=True), backward=True)
            if step == 0:
                start_q = q
            if q > best_q:
                best_q, best = q, [p.detach().clone() for p in self.params]
            self.optimizer.step()
        with torch.no_grad():
            final_q = self._sum_q(self._q(local, posts, backward=False), backward=False)
            if final_q < best_q:
                for p, b in zip(self.params, best):
                    p.copy_(b)
        moved = max(final_q, best_q) > start_q
        self.possible_gain = 0.0 if moved else self._probe_gain(local, posts)
        return moved

    def _probe_gain(self, local: tuple, posts) -> float:
        """After an M-step without progress: the largest rise of Q per point that plain gradient
        steps of sizes m_step_lr * 4**-k (k = 0..11) find, the parameters left unchanged.

        About zero at a fixed point of EM (converged); clearly positive when Adam's steps
        missed an ascent that exists (a stall)."""
        self.optimizer.zero_grad()
        start_q = self._sum_q(self._q(local, posts, backward=True), backward=True)
        start = [p.detach().clone() for p in self.params]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params]
        best = 0.0
        with torch.no_grad():
            for k in range(12):
                eta = self.lr * 4.0**-k
                for p, p0, g in zip(self.params, start, grads):
                    p.copy_(p0 - eta * g)  # g is the gradient of -Q / N
                q = self._sum_q(self._q(local, posts, backward=False), backward=False)
                if math.isfinite(q):
                    best = max(best, (q - start_q) / self.n)
            for p, p0 in zip(self.params, start):
                p.copy_(p0)
        self.optimizer.zero_grad()
        return best

    @torch.no_grad()
    def random_start(self, data: tuple, gen) -> None:
        # on all rows in every process (the same generator: the same start everywhere)
        group, self.group = self.group, None
        try:
            posts = [_random_posterior(self._trace(chunk), gen, weight)
                     for chunk, weight in zip(self._chunks(data), self._weights())]
            with torch.enable_grad():
                self.m_step(data, posts)
        finally:
            self.group = group

    def initialize(self, data: tuple, method: str, gen) -> None:
        init = getattr(self.program.source, "initialize_", None)
        if init is None:
            raise ConfigurationError(
                f"init={method!r} needs a model with an initialize_(x, method, generator) "
                "method; use init='current' (the model's parameters as they are) or 'random'"
            )
        init(_user_data(data), method, gen)

    def reset(self) -> None:
        self.params, self.optimizer = None, None


class _ChainRoute:
    """A user's chain model (mixture, HMM) compiled once (:mod:`.chain`): forward recursion for
    the E-step, closed-form M-steps where certified, gradient steps on Q for the other params."""

    e_step_name = "chain"

    def __init__(self, compiled: CompiledChain, steps: int, lr: float) -> None:
        self.c = compiled
        self.steps, self.lr = steps, lr
        self.routes = dict(compiled.routes)
        closed = [n for n, r in self.routes.items() if r.startswith("closed_form")]
        self.gradient = [n for n, r in self.routes.items() if r == "gradient"]
        mixed = "closed_form+gradient" if closed else "gradient"
        self.m_step_name = "closed_form" if not self.gradient else mixed
        self.possible_gain = 0.0
        self.sample_weight = None
        self.optimizer = None
        store = dict(pyro.get_param_store().named_parameters())
        self.unconstrained = {n: store[n] for n in compiled.names}

    def values(self) -> dict:
        return {n: transform_to(self.c.constraints[n])(self.unconstrained[n]).detach() for n in self.c.names}

    @torch.no_grad()
    def e_step(self, data: tuple):
        total, post = self.c.e_step(self.values(), self.sample_weight)
        return total.double(), post

    def log_likelihood(self, data: tuple) -> torch.Tensor:
        return self.e_step(data)[0]

    @torch.no_grad()
    def log_prior(self) -> float:
        return float(self.c.log_prior(self.values()))

    def reseed(self, data: tuple, post, gen) -> list:
        return []

    @torch.no_grad()
    def _write(self, name: str, value: torch.Tensor) -> None:
        value = value.to(self.unconstrained[name].dtype)  # the solve works in float64
        constraint = self.c.constraints[name]
        plain = plain_constraint(constraint)  # an AutoDelta's independent(simplex, 1) and the like
        tiny = torch.finfo(value.dtype).tiny
        if plain is constraints.simplex:
            value = value.clamp_min(tiny)
            value = value / value.sum(-1, keepdim=True)
        elif plain is constraints.positive or plain is constraints.nonnegative:
            value = value.clamp_min(tiny)
        elif plain is constraints.unit_interval:
            eps = torch.finfo(value.dtype).eps
            value = value.clamp(eps, 1 - eps)
        self.unconstrained[name].copy_(transform_to(constraint).inv(value))

    def m_step(self, data: tuple, post) -> bool:
        values = self.values()
        with torch.no_grad():
            new = self.c.closed_form(values, post)
            for n in new:
                if self.routes[n].startswith("closed_form"):
                    self._write(n, new[n])
        if not self.gradient:
            return True
        return self._gradient_steps(post)

    def _q(self, post) -> torch.Tensor:
        values = {n: transform_to(self.c.constraints[n])(self.unconstrained[n]) for n in self.c.names}
        names = set(self.gradient)
        return self.c.expected_log_joint(values, post, names=names) + self.c.log_prior(values, names=names)

    def _gradient_steps(self, post) -> bool:
        """Adam on the gradient-route params' Q (the closed-form ones held), keeping the best."""
        params = [self.unconstrained[n] for n in self.gradient]
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(params, lr=self.lr)
        n = self.c.N
        start_q, best_q, best = -math.inf, -math.inf, None
        for step in range(self.steps + 1):
            self.optimizer.zero_grad()
            q = self._q(post)
            value = float(q.detach())
            if step == 0:
                start_q = value
            if value > best_q:
                best_q, best = value, [p.detach().clone() for p in params]
            if step == self.steps:
                break
            (-q / n).backward()
            self.optimizer.step()
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
        moved = best_q > start_q
        self.possible_gain = 0.0 if moved else self._probe_gain(post, params, start_q)
        return moved

    def _probe_gain(self, post, params, start_q: float) -> float:
        self.optimizer.zero_grad()
        (-self._q(post) / self.c.N).backward()
        start = [p.detach().clone() for p in params]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        best = 0.0
        with torch.no_grad():
            for k in range(12):
                for p, p0, g in zip(params, start, grads):
                    p.copy_(p0 - self.lr * 4.0**-k * g)
                q = float(self._q(post))
                if math.isfinite(q):
                    best = max(best, (q - start_q) / self.c.N)
            for p, p0 in zip(params, start):
                p.copy_(p0)
        self.optimizer.zero_grad()
        return best

    @torch.no_grad()
    def random_start(self, data: tuple, gen) -> None:
        """Random independent marginals per row and step, then an M-step."""
        c = self.c
        qu = torch.rand(c.N, c.T, c.K, generator=gen, dtype=torch.float64).to(c.device, c.dtype)
        qu = qu / qu.sum(-1, keepdim=True)
        qc = torch.ones(c.N, dtype=c.dtype, device=c.device)
        if self.sample_weight is not None:
            qc, qu = self.sample_weight, qu * self.sample_weight[:, None, None]
        qp = torch.zeros(c.N, c.T, c.K, c.K, dtype=c.dtype, device=c.device)
        qp[:, 1:] = qu[:, :-1, :, None] * (qu[:, 1:, None, :] / qc[:, None, None, None])
        with torch.enable_grad():
            self.m_step(data, c.posterior(qc, qu, qp if c.row_pairs else qp.sum(0)))

    def initialize(self, data: tuple, method: str, gen) -> None:
        raise ConfigurationError(
            f"init={method!r} needs a model with an initialize_(x, method, generator) "
            "method; use init='current' (the model's parameters as they are) or 'random'"
        )

    def reset(self) -> None:
        self.optimizer = None


def _cat_rows(parts: list[torch.Tensor], axis: int = -2) -> torch.Tensor:
    """Chunks' marginals (rows, ..., values) joined over rows (the negative ``axis``); a chunk
    of one row, whose row dim the marginal squeezed away, gets it back."""
    dim = max(-axis, *(p.dim() for p in parts))
    return torch.cat([p.reshape((1,) * (dim - p.dim()) + p.shape) for p in parts], dim=axis)


def _user_data(data: tuple):
    """The data as the user passed it: x, or the tuple (x, condition, ...)."""
    return data[0] if len(data) == 1 else data


# --------------------------------------------------------------------------- em


def _integer(value, name: str, minimum: int, hint: str, optional: bool = False) -> int | None:
    """An integer >= minimum (numpy integers too; bool refused), or None where allowed."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a non-negative" if minimum == 0 else "a positive" if minimum == 1 else "an"
        allowed = " or None" if optional else ""
        raise ConfigurationError(f"{name} must be {kind} integer{allowed}, got {value!r}: {hint}")
    return int(value)


def _number(value, name: str, hint: str, *, positive: bool) -> float:
    """A finite real number, > 0 (``positive``) or >= 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigurationError(f"{name} must be a finite {kind} number, got {value!r}: {hint}")
    return float(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(value, name: str, choices: tuple, allow_callable: bool = False) -> None:
    if allow_callable and callable(value):
        return
    if not isinstance(value, str) or value not in choices:
        extra = " or a callable" if allow_callable else ""
        raise ConfigurationError(f"{name} must be one of {choices}{extra}, got {value!r}")


def _check_config(max_iter, tol, n_init, init, e_step, m_step_steps, m_step_lr, *, chunk_size=None,
                  seed=None, data_plate=DATA_PLATE, callbacks=(), progress=False,
                  canonical_order=True, distributed=False, guide=None) -> dict:
    """Every argument of ``em`` checked before it reaches torch; returns the numbers, normalized."""
    out = dict(
        max_iter=_integer(max_iter, "max_iter", 0, "the number of EM iterations (0 only evaluates)"),
        n_init=_integer(n_init, "n_init", 1, "the number of starts, e.g. n_init=3"),
        tol=_number(tol, "tol", "the per-point change of the objective that counts as "
                    "convergence (0 runs all max_iter iterations)", positive=False),
        m_step_steps=_integer(m_step_steps, "m_step_steps", 1,
                              "Adam steps per generalized M-step, e.g. 20"),
        m_step_lr=_number(m_step_lr, "m_step_lr", "the Adam learning rate of the generalized "
                          "M-step, e.g. 0.05", positive=True),
        chunk_size=_integer(chunk_size, "chunk_size", 1, "rows per E-step chunk; None takes them "
                            "all at once", optional=True),
    )
    _choice(init, "init", INITS, allow_callable=True)
    _choice(e_step, "e_step", E_STEPS)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2**63):
        raise ConfigurationError(f"seed must be an integer in [0, 2**63) or None, got {seed!r}")
    out["seed"] = None if seed is None else int(seed)
    if not isinstance(data_plate, str) or not data_plate:
        raise ConfigurationError(
            f"data_plate must be the name of the model's plate over the rows of x (a non-empty "
            f"string such as 'data' or 'sequences'), got {data_plate!r}"
        )
    if callable(callbacks) or isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        raise ConfigurationError(
            f"callbacks must be a list of callables (pass callbacks=[f] for one), got {callbacks!r}"
        )
    callbacks = list(callbacks)
    bad = [cb for cb in callbacks if not callable(cb)]
    if bad:
        raise ConfigurationError(f"every callback must be callable (a function of EMState), got {bad[0]!r}")
    out["callbacks"] = callbacks
    _flag(progress, "progress")
    _flag(canonical_order, "canonical_order")
    _flag(distributed, "distributed")
    if guide is not None and not callable(guide):
        raise ConfigurationError(
            f"guide must be a callable Pyro program (e.g. pyro.infer.autoguide.AutoDelta(model)) "
            f"or None, got {guide!r}"
        )
    return out


def _program(model, guide) -> Program:
    """``as_program``, with an empty guide for a plain model callable that has none (all its
    latents are enumerated and its parameters are ``pyro.param``s)."""
    plain = (
        guide is None and callable(model) and not isinstance(model, (tuple, Program))
        and not (hasattr(model, "model") and hasattr(model, "guide"))
    )
    return as_program(model, empty_guide if plain else guide)


def _make_route(program: Program, data: tuple, e_step, chunk_size, m_step_steps, m_step_lr, group,
                data_plate: str = DATA_PLATE, gen: torch.Generator | None = None):
    source = program.source
    closed = hasattr(source, "expected_statistics") and hasattr(source, "m_step_from_statistics")
    if e_step == "closed_form" and not closed:
        raise ConfigurationError(
            "e_step='closed_form' needs a model with expected_statistics() and "
            "m_step_from_statistics(); use e_step='enum' (Pyro's enumeration)"
        )
    if closed and e_step != "enum":
        if data_plate != DATA_PLATE:
            raise ModelContractError(
                f"{type(source).__name__} keeps its rows in the plate {DATA_PLATE!r}, not "
                f"{data_plate!r}: leave data_plate={DATA_PLATE!r}"
            )
        if len(data) > 1:
            raise ConfigurationError(
                f"{type(source).__name__} takes the data x alone, but data is a tuple of "
                f"{len(data)} tensors: pass x, not (x, condition, ...)"
            )
        return _ClosedFormRoute(source, data, chunk_size, group)
    route = _EnumRoute(program, data, chunk_size, m_step_steps, m_step_lr, group, data_plate)
    route.closed_form_refused = None
    if e_step == "auto" and route.closed_m_step is None:
        why = _chain_unsupported(program, data, route, chunk_size, group)
        if why is None:
            try:
                compiled = compile_chain(
                    program.model, data, nesting=route.nesting, plate=data_plate, gen=gen, guide=program.guide
                )
            except NotCompilable as exc:
                why = str(exc)
            except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as exc:
                why = f"{type(exc).__name__} while compiling: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                chain = _ChainRoute(compiled, m_step_steps, m_step_lr)
                held = {id(t) for t in chain.unconstrained.values()}
                others = [] if program.module is None else [
                    n for n, t in program.module.named_parameters() if id(t) not in held]
                if not others:
                    return chain
                why = f"the model's torch parameters {others[:3]} are not pyro.params the sites read"
        route.closed_form_refused = why
    return route


def _chain_unsupported(program: Program, data: tuple, route: _EnumRoute, chunk_size, group) -> str | None:
    """Why the compiled chain route does not apply before compiling (None: try it)."""
    if group is not None:
        return "distributed runs take the general route"
    if chunk_size is not None and chunk_size < len(data[0]):
        return "chunk_size splits the rows; the compiled route holds them all"
    return None


def _resolve_init(init, source, n_init: int):
    if init == "auto":
        if hasattr(source, "initialize_"):
            return "kmeans++"
        return "current" if n_init == 1 else "random"
    if init == "current" and n_init > 1:
        raise ConfigurationError(
            "n_init > 1 with init='current' would repeat the same start: pass init='random' "
            "or another data-based init"
        )
    return "kmeans++" if init == "k-means++" else init


def _validate(program: Program, data, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """x (validated against the model) and its per-row conditions, on ``dev``; floating
    conditions take x's dtype."""
    x, *conds = validate_with_conditions(data, program.validate)
    x = x.to(dev)
    return (x, *(c.to(dev, x.dtype) if c.is_floating_point() else c.to(dev) for c in conds))


@restoring_param_store()
def em(
    model,
    data,
    *,
    guide: Callable | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    n_init: int = 1,
    init: str | Callable = "auto",
    chunk_size: int | None = None,
    device: str | torch.device | None = "auto",
    seed: int | None = None,
    progress: bool = False,
    callbacks: Sequence[Callable[[EMState], None]] = (),
    e_step: str = "auto",
    m_step_steps: int = 20,
    m_step_lr: float = 0.05,
    canonical_order: bool = True,
    distributed: bool = False,
    data_plate: str = DATA_PLATE,
    sample_weight=None,
    batch_size: int | None = None,
) -> EMResult:
    """Expectation-maximization: theta <- argmax E_{p(z | x, theta_old)}[log p(x, z | theta)] + log p(theta).

    Args:
        model: a model with enumerable discrete latent sites (see the module docstring): a
            ``LatentVariableModel``, an object with ``model``/``guide``, a (model, guide)
            pair whose guide point-estimates the global parameters, or a model callable alone
            when every latent site is discrete and every parameter a ``pyro.param`` (as in
            Pyro's ``examples/hmm.py``): it then runs with an empty guide.
        data: x, an (N, ...) tensor, array or nested list; or a tuple (x, condition, ...)
            of per-row tensors, passed to the model and guide as ``model(x, condition, ...)``
            (a model's own ``m_step`` then receives ``m_step(x, condition, ..., posterior)``).
        max_iter, tol: at most max_iter iterations; stop when the per-point objective
            changes by less than tol (scikit-learn's rule; tol=0 runs all iterations). A
            generalized M-step that finds no higher Q while gradient steps still gain more
            than tol per point is a stall, not convergence: ``stop_reason="stalled"``, a
            warning, and ``converged=False``.
        n_init: number of starts; the one with the highest final objective is kept.
        init: "auto" (k-means++ for models with ``initialize_``, else the current parameters,
            or random posteriors when n_init > 1), "kmeans++", "kmeans", "random_from_data",
            "random" (random responsibilities then an M-step), "current", or a callable
            ``init(model, data, generator)``.
        chunk_size: rows per E-step chunk (default: sized to ~4 MiB blocks for the closed
            form, all rows for the enum route); memory stays bounded by it.
        device: "auto" (CUDA when available), "cpu", "cuda", ...; model and data move there
            and the model takes the data's floating dtype.
        seed: makes the starts reproducible.
        progress: show a tqdm bar over iterations.
        callbacks: callables receiving an :class:`EMState` after every iteration.
        e_step: "auto", "closed_form" or "enum" (force Pyro's enumeration and the model's own or
            the generalized M-step). With "auto", a user's model without its own M-step whose
            discrete sites form a chain (a mixture, an HMM) of exponential-family sites over
            ``pyro.param`` gathers is compiled once and fitted with closed-form M-steps
            (``e_step="chain"`` in the result; see :mod:`lvm_pyro.infer.em.chain`).
        m_step_steps, m_step_lr: Adam steps and learning rate of the generalized M-step.
        data_plate: the name of the model's plate over the rows of x (as in ``fit``), e.g.
            "sequences" for a model written like Pyro's HMM example. Chunks (``chunk_size``)
            and shards (``distributed``) split the rows of this plate; a name given here must
            exist in the model.
        sample_weight: one non-negative weight per row of x (None: all 1): every M-step maximizes
            sum_n w_n E[log p(x_n, z_n)], so integer weights equal fitting replicated rows, and the
            reported log-likelihood is the weighted mean sum_n w_n log p(x_n) / sum_n w_n. Works on
            every route but a model's own ``m_step`` (which receives no weights) and
            ``distributed=True``.
        batch_size: online EM (Cappe and Moulines 2009, :func:`lvm_pyro.infer.online_em.online_em`)
            in minibatches of this many rows, for a model with the statistics protocol
            (``expected_statistics`` / ``m_step_from_statistics``, the Gaussian mixture) or a
            user's chain model (mixture, HMM) whose params all take the closed form
            (:mod:`lvm_pyro.infer.em.online_chain`): memory is bounded by the batch, and
            ``data`` may be an array, a memmap, a ``.npy`` path or a DataLoader. ``max_iter``
            then counts passes over the data, ``log_likelihood`` holds each pass's mean batch
            log-likelihood, and ``m_step`` is "online".
        canonical_order: call the model's ``canonicalize_()`` (label order) at the end.
        distributed: run in the torch.distributed group that ``torchrun`` describes (gloo
            on CPU, nccl on CUDA). Every process passes all the data (as with ``fit``); each
            runs the E-step on its own shard of rows, and the sufficient statistics (closed
            form), the log-likelihood, the posteriors a model's own ``m_step`` needs, or the
            gradients of the generalized M-step are summed over processes, so every process
            holds the same parameters, equal to single-process EM up to floating-point
            rounding. Starts are drawn on all rows from a seed shared by the processes.

    Raises DataError (bad data, fewer points than components), ConfigurationError,
    ModelContractError (no enumerable site, a continuous latent outside the guide, no plate
    named ``data_plate`` where one is needed) and DivergenceError (non-finite log-likelihood).

    Example:
        >>> from lvm_pyro.models.gmm import GaussianMixtureModel
        >>> x = torch.cat([torch.randn(100, 2) - 4, torch.randn(100, 2) + 4])
        >>> result = em(GaussianMixtureModel(2, 2, "diag"), x, seed=0, device="cpu")
        >>> result.converged, sorted(round(m) for m in result.model.loc[:, 0].tolist())
        (True, [-4, 4])
    """
    started = time.perf_counter()
    if batch_size is not None:
        return _online(model, data, guide=guide, batch_size=batch_size, max_iter=max_iter, tol=tol,
                       n_init=n_init, init=init, chunk_size=chunk_size, device=device, seed=seed,
                       sample_weight=sample_weight, e_step=e_step, distributed=distributed,
                       canonical_order=canonical_order, started=started, data_plate=data_plate,
                       m_step_steps=m_step_steps, m_step_lr=m_step_lr)
    checked = _check_config(max_iter, tol, n_init, init, e_step, m_step_steps, m_step_lr,
                            chunk_size=chunk_size, seed=seed, data_plate=data_plate,
                            callbacks=callbacks, progress=progress, canonical_order=canonical_order,
                            distributed=distributed, guide=guide)
    max_iter, n_init, tol = checked["max_iter"], checked["n_init"], checked["tol"]
    m_step_steps, m_step_lr, chunk_size = checked["m_step_steps"], checked["m_step_lr"], checked["chunk_size"]
    seed, callbacks = checked["seed"], checked["callbacks"]
    program = _program(model, guide)
    source = program.source
    dev = resolve_device(device)
    group, dev = join_group(dev, distributed)
    batch = _validate(program, data, dev)
    x = batch[0]
    n_components = getattr(source, "n_components", None)
    if n_components is not None and n_components > len(x):
        raise DataError(
            f"n_components={n_components} is larger than the number of points ({len(x)}): "
            "use n_components <= n_samples, or more data"
        )
    if group is not None and group.world_size > len(x):
        raise DataError(
            f"{group.world_size} processes need at least as many data points, got {len(x)}: "
            "launch fewer processes"
        )
    if program.module is not None:
        program.module.to(device=dev, dtype=x.dtype)
        claim_module_params(program.module)
    if hasattr(source, "check_fit_data") and (group is None or group.is_main):
        source.check_fit_data(x)
    seed_value = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    if group is not None:  # one seed, so every process draws the same starts
        seed_value = group.broadcast_int(seed_value, dev)
    gen = torch.Generator()
    gen.manual_seed(seed_value)
    route = _make_route(program, batch, e_step, chunk_size, m_step_steps, m_step_lr, group, data_plate,
                        torch.Generator().manual_seed(seed_value))
    if sample_weight is not None:
        route.sample_weight = _sample_weight(sample_weight, x, route, group)
    init = _resolve_init(init, source, n_init)
    config = dict(
        max_iter=max_iter,
        tol=tol,
        n_init=n_init,
        init=init if not callable(init) else "callable",
        chunk_size=chunk_size,
        device=str(dev),
        seed=seed,
        dtype=str(x.dtype),
        e_step=route.e_step_name,
        m_step=route.m_step_name,
        m_step_steps=m_step_steps,
        m_step_lr=m_step_lr,
        data_plate=data_plate,
        world_size=1 if group is None else group.world_size,
    )

    best = None
    scores, all_reseeds, reasons = [], [], []
    for start in range(n_init):
        if hasattr(route, "reset"):
            route.reset()
        if callable(init):
            init(source, _user_data(batch), gen)
        elif init == "random":
            route.random_start(batch, gen)
        elif init != "current":
            route.initialize(batch, init, gen)
        if group is not None:  # the starts agree already; make it exact
            _broadcast_parameters(program, group)
        show = progress and (group is None or group.is_main)
        run = _run(route, source, batch, start, max_iter, tol, gen, show, callbacks)
        all_reseeds.extend(run["reseeded"])
        scores.append(run["objective"][-1])
        reasons.append(run["stop_reason"])
        if best is None or scores[-1] > best["objective"][-1]:
            best = run
            best["init"] = start
            best["state"] = _snapshot(program) if n_init > 1 else None
    if best["state"] is not None:
        _restore(program, best["state"])
    if best["stop_reason"] == "stalled" and (group is None or group.is_main):
        stalled = sum(r == "stalled" for r in reasons)
        warnings.warn(
            f"em stopped without converging: at iteration {best['n_iter']} of start {best['init']} "
            f"({stalled} of {n_init} start(s) stalled) the generalized M-step ({m_step_steps} Adam "
            f"steps at m_step_lr={m_step_lr}) found no parameters with a higher expected "
            "log-likelihood, although small gradient steps still gain more than tol per point. Raise "
            "m_step_steps, or change m_step_lr (smaller if the steps overshoot, larger if they "
            "crawl); result.stop_reason is 'stalled' and result.converged is False",
            ConvergenceWarning,
            stacklevel=2,
        )
    if canonical_order and hasattr(source, "canonicalize_"):
        source.canonicalize_()
    return EMResult(
        model=model,
        log_likelihood=best["log_likelihood"],
        objective=best["objective"],
        converged=best["converged"],
        n_iter=best["n_iter"],
        best_init=best["init"],
        init_objectives=scores,
        reseeded=all_reseeds,
        lower_bound=best["objective"][max(best["n_iter"] - 1, 0)],
        e_step=route.e_step_name,
        m_step=route.m_step_name,
        wall_time=time.perf_counter() - started,
        config=config,
        stop_reason=best["stop_reason"],
        param_routes=dict(getattr(route, "routes", {})),
        closed_form_refused=getattr(route, "closed_form_refused", None),
    )


def _online(model, data, *, guide, batch_size, max_iter, tol, n_init, init, chunk_size, device, seed,
            sample_weight, e_step, distributed, canonical_order, started, data_plate, m_step_steps,
            m_step_lr) -> EMResult:
    """em(..., batch_size=): online EM over minibatches, for a model with the statistics protocol
    (the Gaussian mixture) or a user's chain model whose params all take the closed form."""
    from lvm_pyro.infer.em.online_chain import OnlineChain
    from lvm_pyro.infer.online_em import _load, online_em

    batch_size = _integer(batch_size, "batch_size", 1, "rows per online-EM step, e.g. 65536", optional=True)
    max_iter = _integer(max_iter, "max_iter", 1, "passes over the data with batch_size=")
    tol = _number(tol, "tol", "the change of a pass's mean log-likelihood that counts as convergence",
                  positive=False)
    if e_step == "enum" or distributed or n_init != 1:
        raise ConfigurationError(
            "em(..., batch_size=) takes neither e_step='enum', distributed=True nor n_init > 1"
        )
    if isinstance(data, tuple):
        raise ConfigurationError(
            "em(..., batch_size=) reads the rows x alone, but data is a tuple of "
            f"{len(data)} tensors: leave batch_size=None to pass (x, condition, ...)"
        )
    program = _program(model, guide)
    source = program.source
    seed = seed if seed is not None else int(torch.randint(0, 2**62, ()))
    dev = None if device == "auto" else device
    dtype = None
    if hasattr(source, "expected_statistics") and hasattr(source, "m_step_from_statistics") and guide is None:
        target = source
        if init == "auto":
            init = "kmeans"
    else:
        if chunk_size is not None:
            raise ConfigurationError(
                "chunk_size does not apply to online EM on a user's model: batch_size bounds its memory"
            )
        if program.module is not None:
            claim_module_params(program.module)
        gen = torch.Generator().manual_seed(seed)
        target = OnlineChain(
            program,
            lambda batch: _make_route(program, batch, e_step, None, m_step_steps, m_step_lr, None,
                                      data_plate, gen),
            gen,
        )
        if init in ("auto", "current"):
            init = None
        elif callable(init):
            user_init = init
            init = lambda _, x, g: user_init(source, x, g)  # noqa: E731  (em's callable takes the model)
        data = _load(data)  # a .npy path: its memmap, whose dtype the computation keeps
        floating = getattr(data, "dtype", None)
        if isinstance(floating, np.dtype):
            floating = torch.from_numpy(np.zeros(0, dtype=floating)).dtype
        # an array's floating dtype; None: each batch keeps its own (a DataLoader's float64 stays)
        dtype = floating if isinstance(floating, torch.dtype) and floating.is_floating_point else None
        dev = resolve_device(device)
    run = online_em(target, data, batch_size=batch_size, max_passes=max_iter, tol=tol, init=init,
                    seed=seed, chunk_size=chunk_size, sample_weight=sample_weight, device=dev, dtype=dtype)
    if canonical_order and hasattr(source, "canonicalize_"):
        source.canonicalize_()
    lls = list(run.pass_log_likelihood)
    chain = getattr(target, "route", None)
    return EMResult(
        model=model,
        log_likelihood=lls,
        objective=lls,
        converged=run.converged,
        n_iter=run.n_passes,
        best_init=0,
        init_objectives=lls[-1:],
        reseeded=[],
        lower_bound=lls[-1] if lls else math.nan,
        e_step="closed_form" if chain is None else "chain",
        m_step="online",
        wall_time=time.perf_counter() - started,
        config=dict(batch_size=batch_size, max_passes=max_iter, tol=tol, init=str(init), seed=seed,
                    n_steps=run.n_steps, n_seen=run.n_seen),
        stop_reason="converged" if run.converged else "max_iter",
        param_routes={} if chain is None else dict(chain.routes),
    )


def _sample_weight(sample_weight, x: torch.Tensor, route, group) -> torch.Tensor:
    """The sample weights checked (one finite non-negative number per row, not all zero) on x's
    device and dtype; refused where a route cannot use them."""
    if group is not None:
        raise ConfigurationError("sample_weight is not supported with distributed=True: drop one of them")
    if getattr(route, "closed_m_step", None) is not None:
        raise ConfigurationError(
            "sample_weight cannot reach a model's own m_step(x, posterior), which receives no "
            "weights: fit without sample_weight, or drop the m_step so that em finds the M-step"
        )
    if isinstance(route, _ClosedFormRoute) and "sample_weight" not in inspect.signature(
            route.model.expected_statistics).parameters:
        raise ConfigurationError(
            f"{type(route.model).__name__}.expected_statistics takes no sample_weight: fit without "
            "sample_weight, or with e_step='enum'"
        )
    try:
        w = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64) if not isinstance(
            sample_weight, torch.Tensor) else sample_weight)
    except (TypeError, ValueError) as exc:
        raise DataError(f"sample_weight must be an array of numbers, one per row: {exc}") from exc
    if w.dim() != 1 or len(w) != len(x):
        raise DataError(
            f"sample_weight must hold one weight per row of x ({len(x)}), got shape {tuple(w.shape)}"
        )
    if not w.is_floating_point() and w.dtype != torch.bool:
        w = w.double()
    w = w.to(x.device, x.dtype)
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        raise DataError(
            f"sample_weight must be finite and non-negative: {int(bad.sum())} entries are not "
            f"(the first at index {int(bad.nonzero()[0, 0])})"
        )
    if not float(w.sum()) > 0:
        raise DataError("sample_weight sums to 0: at least one row needs a positive weight")
    return w


def _broadcast_parameters(program: Program, group: DistributedContext) -> None:
    """Every process takes process 0's parameters (module state and Pyro's param store)."""
    tensors = []
    if program.module is not None:
        tensors += [t for t in program.module.state_dict().values() if t.is_floating_point()]
    tensors += [p for _, p in sorted(pyro.get_param_store().named_parameters())]
    group.broadcast_(tensors)


def _snapshot(program: Program) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """Every parameter of a start: the module's state and the (unconstrained) values of Pyro's
    param store, which holds the ``pyro.param``s of the model and guide outside the module."""
    module = copy.deepcopy(program.module.state_dict()) if program.module is not None else None
    store = {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}
    return module, store


@torch.no_grad()
def _restore(program: Program, state: tuple[dict | None, dict[str, torch.Tensor]]) -> None:
    """Copy a snapshot back in place, so the tensors the model, guide and optimizer hold stay
    the ones the param store and module hold."""
    module, store = state
    if module is not None:
        program.module.load_state_dict(module)
    for name, p in pyro.get_param_store().named_parameters():
        if name in store:
            p.copy_(store[name])


def _run(route, source, data, start, max_iter, tol, gen, progress, callbacks) -> dict:
    weight = getattr(route, "sample_weight", None)
    n = len(data[0]) if weight is None else float(weight.sum(dtype=torch.float64))
    lls, objs, reseeded = [], [], []

    def evaluate(state_ll) -> None:
        ll = float(state_ll) / n
        if not math.isfinite(ll):
            raise DivergenceError(
                f"the log-likelihood became {ll} at iteration {len(lls)} of start {start}: "
                "check the data scale, raise reg_covar, or lower n_components"
            )
        lls.append(ll)
        objs.append(ll + route.log_prior() / n)

    converged, n_iter, previous, reason = False, 0, -math.inf, "max_iter"
    bar = tqdm(total=max_iter, disable=not progress, desc=f"em start {start}", leave=False)
    state = EMState(model=source, init=start, iteration=0, log_likelihood=lls, objective=objs)
    try:
        for it in range(1, max_iter + 1):
            total, posterior = route.e_step(data)
            evaluate(total)
            moved = route.m_step(data, posterior)
            events = route.reseed(data, posterior, gen)
            reseeded += [ReseedEvent(start, it, k, c) for k, c in events]
            n_iter = it
            state.iteration = it
            for callback in callbacks:
                callback(state)
            bar.update(1)
            bar.set_postfix(log_lik=f"{objs[-1]:.5g}")
            # objs[-1] - previous is what the previous M-step (which moved) gained
            change = objs[-1] - previous
            if abs(change) < tol and not events:
                converged, reason = True, "converged"
                break
            if not moved:
                # no progress: converged if no step finds more than tol per point, else stalled
                if getattr(route, "possible_gain", math.inf) <= tol:
                    converged, reason = True, "converged"
                else:
                    reason = "stalled"
                break
            previous = objs[-1]
            if state.stop:
                reason = "callback" + (f": {state.stop_reason}" if state.stop_reason else "")
                break
    finally:
        bar.close()
    with torch.no_grad():
        evaluate(route.log_likelihood(data))
    return dict(log_likelihood=lls, objective=objs, converged=converged, n_iter=n_iter,
                reseeded=reseeded, stop_reason=reason)
