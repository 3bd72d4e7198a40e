"""The per-data-point log density of a Pyro program: the one definition every wrapper uses.

For data points x_1..x_N in the plate the user names (``data_plate``, "data" by default) and
global values theta (held fixed: a point estimate, or one posterior draw), a model defines

    log p(x_i | theta) = log sum_{d_i} integral p(x_i, d_i, z_i | theta) dz_i,

where d_i are the discrete sites summed out by enumeration and z_i the local latent sites
the guide samples. This module computes, per data point and per particle z_i^(j) ~ q(z | x_i),

    log w_ij = log sum_{d_i} p(x_i, d_i, z_i^(j) | theta) - log q(z_i^(j) | x_i, theta),

with the enumerated sites contracted by Pyro's tensor variable elimination
(``pyro.ops.contract``, the machinery behind ``TraceEnum_ELBO``), so ``pyro.markov`` chains
whose enumeration dims are reused, plates nested inside the data plate and several observed
sites are all right. Then log p(x_i | theta) ~= logmeanexp_j log w_ij (exact when the model
has no local latent sites the guide samples, and equal to the ELBO's per-point term at one
particle). ``evaluate.log_likelihood``, ``diagnostics`` (the ArviZ export, PSIS k-hat, LOO)
and ``em`` go through here, and so does the check that a guide matches its model.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from lvm_pyro.errors import LVMError, ModelContractError
from lvm_pyro.models.base import DATA_PLATE, Program

#: Name of the plate over importance samples; it sits left of every plate of the model.
PARTICLE_PLATE = "_lvm_pyro_particles"


# ------------------------------------------------------------------------------------------
# Sites
# ------------------------------------------------------------------------------------------


def sample_sites(trace: poutine.Trace) -> list[dict]:
    """The sample sites of a trace, without plates' subsample sites."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def is_latent(site: dict) -> bool:
    """A latent site the guide must sample: not observed, not enumerated, not auxiliary."""
    return (
        not site["is_observed"]
        and not site["infer"].get("enumerate")
        and not site["infer"].get("is_auxiliary")
    )


def data_frame(site: dict, plate: str):
    """The site's frame of the plate named ``plate``, or None when it sits outside that plate."""
    return next((f for f in site["cond_indep_stack"] if f.name == plate), None)


def point_mass(fn) -> bool:
    """A Delta, possibly wrapped (Independent, masked, expanded, transformed)."""
    while not isinstance(fn, dist.Delta):
        fn = getattr(fn, "base_dist", None)
        if fn is None:
            return False
    return True


def check_guide(model_trace: poutine.Trace, guide_trace: poutine.Trace, *,
                enumerable_ok: bool = False) -> None:
    """The one check that a guide matches its model, for every wrapper.

    Every latent site of the model is sampled by the guide (or marked for enumeration, or,
    with ``enumerable_ok``, discrete and left to the wrapper to enumerate), and every site
    the guide samples is a latent site of the model. A mismatched guide gives numbers that
    are not bounds of anything (a "log-likelihood" above the truth), so it is refused.
    """
    model_sites = {s["name"]: s for s in sample_sites(model_trace)}
    missing = [
        name for name, s in model_sites.items()
        if is_latent(s) and name not in guide_trace.nodes
        and not (enumerable_ok and s["fn"].has_enumerate_support)
    ]
    extra = [
        s["name"] for s in sample_sites(guide_trace)
        if not s["infer"].get("is_auxiliary")
        and (s["name"] not in model_sites or model_sites[s["name"]]["is_observed"])
    ]
    if missing or extra:
        parts = []
        if missing:
            kinds = ", ".join(f"{n!r} ({type(model_sites[n]['fn']).__name__})" for n in missing)
            parts.append(
                f"the guide does not sample the model's latent site(s) {missing}: {kinds} "
                f"{'is' if len(missing) == 1 else 'are'} neither enumerable nor sampled by the "
                f"guide: add pyro.sample({missing[0]!r}, ...) to the guide (a point estimate: "
                "AutoDelta), or, for a discrete site, mark it infer={'enumerate': 'parallel'} "
                "in the model"
            )
        if extra:
            parts.append(
                f"the guide samples site(s) {extra} that are not latent sites of the model: "
                "name each guide site exactly as the model's latent site it approximates"
            )
        raise ModelContractError("; ".join(parts))


#: What a model/guide pair raises when it cannot run on the data it is given.
PAIR_ERRORS = (ValueError, RuntimeError, TypeError, IndexError, KeyError, NotImplementedError)


def pair_failed(exc: Exception, args: tuple) -> ModelContractError:
    """The error for a model/guide pair that failed on its first run (raise it ``from exc``)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ModelContractError(
        f"the guide and model fail when run once on a batch of {len(args[0])} rows (x of shape "
        f"{tuple(args[0].shape)}): {type(exc).__name__}: {first}. Check that they accept this "
        "data (shape, dtype, number of conditions) and give their distributions valid (finite, "
        "in-support) parameters; a guide with parameters for each data point (an autoguide of "
        "the model's local latent sites, such as the x_unobserved of Pyro's obs_mask) runs on "
        "the whole data only: pass batch_size=len(data). The cause is chained below"
    )


def check_program(program: Program, args: tuple, *, enumerable_ok: bool = False) -> Program:
    """Run the guide and the model on it once (no enumeration, nothing recorded) and
    :func:`check_guide` them: the check every wrapper makes before it computes anything. Returns
    the program to use: ``program``, its model summing out ``obs_mask``'s missing entries where
    the guide does not impute them (:func:`summing_out_missing`)."""
    try:
        with poutine.block():
            guide_trace = poutine.trace(program.guide).get_trace(*args)
            missing = MarginalizeMissing(sampled=guide_trace.nodes)
            model = poutine.replay(missing(program.model), trace=guide_trace)
            model_trace = poutine.trace(model).get_trace(*args)
    except LVMError:
        raise
    except PAIR_ERRORS as exc:
        raise pair_failed(exc, args) from exc
    check_guide(model_trace, guide_trace, enumerable_ok=enumerable_ok)
    return summing_out_missing(program, guide_trace, missing)


def check_per_point(program: Program, args: tuple, *, plate: str, nesting: int) -> None:
    """Refuse, from one unvectorized run, what has no per-data-point log density: a guide that
    does not match the model, a global latent the guide samples from a proper distribution,
    no data plate. Run before vectorizing particles, so the user gets this message and not a
    shape error from a model written for one draw."""
    traces = trace_pair(program, args, plate=plate, nesting=nesting, hold_point_globals=True)
    _refuse_sampled_globals(traces)
    point_log_weights(traces)


def broadcasts_over_particles(program: Program, args: tuple, nesting: int | None) -> bool:
    """Whether guide and model run with a vectorized particle dim left of their plates.

    Models written for one draw (``alpha[group]``, ``x @ w``, as Pyro's regression tutorials
    write them) do not; Pyro's own ELBOs then draw particles in sequence.
    """
    rank = (nesting if nesting is not None else plate_nesting(program, args)) + 1
    particles = pyro.plate(PARTICLE_PLATE, 2, dim=-rank)
    try:
        with poutine.block():
            guide_trace = poutine.trace(particles(program.guide)).get_trace(*args)
            model = poutine.enum(particles(config_enumerate(program.model)), first_available_dim=-rank - 1)
            poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    except (RuntimeError, ValueError, IndexError, TypeError):
        return False
    return True


def plate_nesting(program: Program, args: tuple) -> int:
    """The model's ``max_plate_nesting``, else the deepest vectorized plate in one run of the
    model (at least 1). The guide is not run: an autoguide then meets the data first where the
    wrapper calls it, and the guide's sites sit in the model's plates anyway."""
    if program.max_plate_nesting is not None:
        return program.max_plate_nesting
    with poutine.block():
        model_trace = poutine.trace(config_enumerate(program.model)).get_trace(*args)
    dims = [-f.dim for site in sample_sites(model_trace) for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=1)


# ------------------------------------------------------------------------------------------
# Missing values (Pyro's obs_mask)
# ------------------------------------------------------------------------------------------


class MarginalizeMissing(Messenger):
    """Sums out the entries that Pyro's ``obs_mask`` marks missing, where no guide samples them.

    ``pyro.sample("x", fn, obs=x, obs_mask=m)`` splits the site into ``x_observed`` (masked to
    the observed entries) and ``x_unobserved``, a latent site masked to the missing ones, whose
    values a guide would impute. When the guide does not sample ``x_unobserved`` (an empty guide,
    em), this handler makes it an observed site of weight 0 at the observed values: the missing
    entries' density integrates to one, so log p(x) is the exact marginal of the observed
    entries, p(x_obs | z) = prod over observed entries. Right as long as the model uses the
    returned value of ``x`` only as its observation (as a likelihood does), not as an input to
    later sites. ``sampled``: the sites the guide samples (left alone).
    """

    SUFFIX_OBSERVED, SUFFIX_MISSING = "_observed", "_unobserved"

    def __init__(self, sampled: Iterable[str] = ()) -> None:
        super().__init__()
        self.sampled = set(sampled)
        self.observed: dict[str, torch.Tensor] = {}
        self.marginalized: set[str] = set()  # the sites summed out so far

    def _pyro_sample(self, msg: dict) -> None:
        name = msg["name"]
        if name.endswith(self.SUFFIX_OBSERVED) and msg["is_observed"]:
            self.observed[name[: -len(self.SUFFIX_OBSERVED)]] = msg["value"]
            return
        prefix = name[: -len(self.SUFFIX_MISSING)] if name.endswith(self.SUFFIX_MISSING) else None
        if prefix in self.observed and not msg["is_observed"] and name not in self.sampled:
            msg["value"] = self.observed[prefix]
            msg["is_observed"] = True
            msg["mask"] = False
            self.marginalized.add(name)


def summing_out_missing(program: Program, guide_trace: poutine.Trace,
                        handler: MarginalizeMissing) -> Program:
    """``program`` with its model summing out the missing entries of Pyro's ``obs_mask`` that
    the guide does not impute, when the check run (model under ``handler``, replayed against
    ``guide_trace``) found any; else ``program`` itself. For the wrappers that train or evaluate
    with Pyro's ELBOs (``fit``, ``elbo``, ``gradient_variance``): their bound is then on
    log p(x_observed), as ``log_likelihood`` and ``em`` compute it. A guide that samples
    ``x_unobserved`` (an autoguide of the whole model) imputes the entries instead, as in plain
    Pyro.
    """
    if not handler.marginalized:
        return program
    sampled = {n for n, site in guide_trace.nodes.items() if site["type"] == "sample"}
    return replace(program, model=MarginalizeMissing(sampled=sampled)(program.model))


# ------------------------------------------------------------------------------------------
# Global values held fixed
# ------------------------------------------------------------------------------------------


class HoldGlobals(Messenger):
    """Holds global sites (outside the data plate) at one value, outside the particle plate.

    Recording (``values`` None, around the guide): every latent sample site outside ``plate``
    whose distribution is a point mass (Delta, as in ``AutoDelta`` or the mixture's guide) is
    sampled once, unbatched, and its value kept in ``values``. Fixing (``values`` given, around
    the guide or the model): the sites named in ``values`` take those values. Either way the site
    stops here, so the particle plate, enumeration and the traces outside never see it: the
    weights are those of p(x_i, z_i | theta) / q(z_i | x_i, theta). Broadcasting a fixed value
    over particles would only add a particle dim to global tensors, which a model indexing them
    by an enumerated site (``locs[z]``) cannot take.
    """

    def __init__(self, plate: str, values: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.plate = plate
        self.recording = values is None
        self.values: dict[str, torch.Tensor] = {} if values is None else dict(values)
        self._held: set[str] = set()

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["is_observed"] = True
        elif self.recording and not msg["is_observed"] and point_mass(msg["fn"]) \
                and data_frame(msg, self.plate) is None:
            self._held.add(msg["name"])
        else:
            return
        msg["stop"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        if msg["name"] in self._held:
            self.values[msg["name"]] = msg["value"]


# ------------------------------------------------------------------------------------------
# Traces and the contraction per data point
# ------------------------------------------------------------------------------------------


@dataclass
class WeightedTraces:
    """A guide trace and the model replayed on it under enumeration, ready to contract."""

    model: poutine.Trace
    guide: poutine.Trace
    plate: str
    particles: int | None
    rank: int

    @functools.cached_property
    def _frame(self) -> tuple[int, int]:
        return _data_plate_frame(self.model, self.plate)

    @property
    def num_data(self) -> int:
        """The data plate's size (a ModelContractError naming data_plate= where there is none)."""
        return self._frame[0]

    @property
    def data_dim(self) -> int:
        return self._frame[1]


def trace_pair(
    program: Program,
    args: tuple,
    *,
    plate: str = DATA_PLATE,
    nesting: int,
    particles: int | None = None,
    fixed: dict[str, torch.Tensor] | None = None,
    hold_point_globals: bool = False,
    guide_trace: poutine.Trace | None = None,
    check: bool = True,
) -> WeightedTraces:
    """Trace the guide (or take ``guide_trace``), then the model replayed on it with every
    discrete site the guide does not sample enumerated.

    ``particles``: draw that many samples of the guide's local sites in a vectorized plate left
    of the model's plates (None: one draw, no particle dim). ``fixed``: values of global sites
    held fixed in guide and model (a posterior draw, a point estimate). ``hold_point_globals``:
    hold the guide's point-mass global sites at their value (see :class:`HoldGlobals`).
    ``check``: refuse a guide that does not match the model (:func:`check_guide`); off only
    for stored draws (NUTS samples) replayed as a guide trace.
    """
    rank = nesting + (particles is not None)
    guide, model = program.guide, config_enumerate(program.model)
    fix_model = None
    if fixed is not None or hold_point_globals:
        hold = HoldGlobals(plate, values=fixed)
        guide = hold(guide)
        fix_model = hold
    if particles is not None:
        plate_fn = pyro.plate(PARTICLE_PLATE, particles, dim=-rank)
        guide = plate_fn(guide)
    if guide_trace is None:
        guide_trace = poutine.trace(guide).get_trace(*args)
    if fix_model is not None:
        model = HoldGlobals(plate, values=fix_model.values)(model)
    if particles is not None:
        model = pyro.plate(PARTICLE_PLATE, particles, dim=-rank)(model)
    model = MarginalizeMissing(sampled=guide_trace.nodes)(model)
    model = poutine.enum(model, first_available_dim=-rank - 1)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    if check:
        check_guide(model_trace, guide_trace, enumerable_ok=True)
    return WeightedTraces(model_trace, guide_trace, plate, particles, rank)


def _data_plate_frame(trace: poutine.Trace, plate: str) -> tuple[int, int]:
    """The data plate's size and dim."""
    for site in sample_sites(trace):
        frame = data_frame(site, plate)
        if frame is not None:
            if not frame.vectorized:
                raise ModelContractError(
                    f"the plate {plate!r} is a sequential plate (a Python loop over "
                    f"pyro.plate); per-data-point log densities need a vectorized plate: write "
                    f"`with pyro.plate({plate!r}, N, dim=...)`"
                )
            return int(frame.size), frame.dim
    found = sorted({f.name for site in sample_sites(trace) for f in site["cond_indep_stack"]
                    if f.vectorized and f.name != PARTICLE_PLATE})
    hint = f"the model's plates are {found}: pass data_plate=" + repr(found[0]) if len(found) == 1 else (
        f"the model's plates are {found}: name the one over data points with data_plate=..." if found
        else f"the model has no plate: put the observations inside pyro.plate({plate!r}, len(x))"
    )
    raise ModelContractError(f"no sample site of the model is inside a plate named {plate!r}; {hint}")


@dataclass
class PointLogWeights:
    """Per-data-point log weights of one traced run.

    ``local`` (particles, N): log sum_d p(x_i, d_i, z_i | theta) - log q(z_i | x_i) over the
    sites inside the data plate (N only when the run had no particle plate). ``global_``
    (particles,) or (): the same for the sites outside it (0 where they were held fixed).
    ``by_site`` (when asked for): for the k-th observed site in the model's order, ``local``
    with only the first k observed sites included (the others left out, i.e. summed out):
    cumulative weights, whose :func:`sequential_conditionals` split log p(x_i) by the chain
    rule into log p(x_i^(1)) + log p(x_i^(2) | x_i^(1)) + ... (for an HMM: the one-step-ahead
    predictive log p(y_t | y_<t) of each time step).
    """

    local: torch.Tensor
    global_: torch.Tensor
    by_site: dict[str, torch.Tensor]


def point_log_weights(traces: WeightedTraces, *, by_site: bool = False,
                      observed_only: bool = False) -> PointLogWeights:
    """Contract the model's log-factors per data point and subtract the guide's.

    ``observed_only``: leave the local latent sites' p and q out (log p(x_i | d-summed, z_i)),
    the likelihood conditional on the draw of z_i.
    """
    model, guide = traces.model, traces.guide
    traces.num_data  # noqa: B018  (no plate over data points: refused first, naming data_plate=)
    model.compute_log_prob()
    if not observed_only:
        guide.compute_log_prob()
    enumerated = any(s["infer"].get("_enumerate_dim") is not None for s in sample_sites(model))
    if enumerated:
        model.pack_tensors()
    sum_dims: set = set()
    local: list[tuple[str, dict]] = []
    global_p = None
    for site in sample_sites(model):
        name = site["name"]
        if site["infer"].get("_enumerate_dim") is not None:
            sum_dims.add(site["infer"]["_enumerate_symbol"])
            if data_frame(site, traces.plate) is None:
                raise ModelContractError(
                    f"the discrete site {name!r} is enumerated outside the {traces.plate!r} plate, "
                    "so log p(x) does not split into one term per data point: move it inside "
                    f"pyro.plate({traces.plate!r}, ...), or use a total (elbo, em) instead of a "
                    "per-point quantity"
                )
        if data_frame(site, traces.plate) is None:
            if site["is_observed"] and not observed_only:
                raise ModelContractError(
                    f"observed site {name!r} is outside the {traces.plate!r} plate, so it has no "
                    f"value per data point: put it inside pyro.plate({traces.plate!r}, len(x)), or "
                    "name the model's data plate with data_plate=..."
                )
            if not site["is_observed"]:
                global_p = _add(global_p, _reduce(site["log_prob"], site, traces, keep_data=False))
            continue
        if (observed_only and is_latent(site)) or site["mask"] is False:
            continue  # a site masked out entirely (obs_mask's missing entries) adds nothing
        local.append((name, site))
    observed = [n for n, site in local if site["is_observed"]]
    if not observed:
        raise ModelContractError(
            f"no observed site of the model is inside the {traces.plate!r} plate: pass the data to "
            "a sample site with obs=x inside that plate"
        )
    log_q_local, log_q_global = None, None
    if not observed_only:
        for site in sample_sites(guide):
            if site["infer"].get("enumerate"):
                raise ModelContractError(
                    f"guide site {site['name']!r} is marked for enumeration; per-point log densities "
                    "sample the guide: enumerate discrete sites in the model instead"
                )
            if data_frame(site, traces.plate) is None:
                log_q_global = _add(log_q_global, _reduce(site["log_prob"], site, traces, keep_data=False))
            else:
                log_q_local = _add(log_q_local, _reduce(site["log_prob"], site, traces, keep_data=True))

    def contract(keep: Iterable[str]) -> torch.Tensor:
        keep = set(keep)
        if not enumerated:  # nothing to sum out: the log-factors simply add up per point
            terms = [_reduce(site["log_prob"], site, traces, keep_data=True)
                     for n, site in local if n in keep]
            return sum(terms[1:], terms[0])
        to_symbol = model.plate_to_symbol
        tree: OrderedDict = OrderedDict()
        for name, site in local:
            if name in keep:
                ordinal = frozenset(to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
                tree.setdefault(ordinal, []).append(site["packed"]["log_prob"])
        target = {to_symbol[traces.plate]}
        if traces.particles is not None:
            target.add(to_symbol[PARTICLE_PLATE])
        present = {d for terms in tree.values() for t in terms for d in t._pyro_dims}
        # a plate of size 1 leaves no dim in a packed tensor: contract to what is there
        out = contract_to_tensor(tree, sum_dims, target_ordinal=frozenset(target & present))
        out = packed.unpack(out, model.symbol_to_dim)
        return _to_points(out, traces)

    everything = [n for n, _ in local]
    total = contract(everything)
    sites = {}
    if by_site:
        for k, name in enumerate(observed[:-1]):
            sites[name] = contract(n for n in everything if n not in observed[k + 1:])
        sites[observed[-1]] = total
    if log_q_local is not None:
        total = total - log_q_local
        sites = {k: v - log_q_local for k, v in sites.items()}
    global_w = total.new_zeros(total.shape[:-1])
    if global_p is not None:
        global_w = global_w + global_p
    if log_q_global is not None:
        global_w = global_w - log_q_global
    return PointLogWeights(total, global_w, sites)


def sequential_conditionals(cumulative: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cumulative log densities log p(x^(1..k)) -> per site log p(x^(k) | x^(1..k-1)): differences
    of consecutive entries, so the values add up exactly to the joint (the last entry)."""
    out, previous = {}, None
    for name, value in cumulative.items():
        out[name] = value if previous is None else value - previous
        previous = value
    return out


def _add(a, b):
    return b if a is None else a + b


def to_points(term: torch.Tensor, rank: int, *, particles: bool, data_dim: int | None) -> torch.Tensor:
    """A log-density summed over every plate dim but the particle dim (the leftmost of ``rank``,
    kept when ``particles``) and the data plate's dim ``data_dim`` (kept unless None): shape
    (particles, N), (particles,), (N,) or (), each kept dim of size 1 where it was broadcast."""
    term = term.reshape((1,) * (rank - term.dim()) + term.shape) if term.dim() < rank else term
    keep = ([0] if particles else []) + ([rank + data_dim] if data_dim is not None else [])
    others = [d for d in range(rank) if d not in keep]
    if others:
        term = term.sum(others, keepdim=True)
    return term.reshape([term.shape[d] for d in keep])


def _points_shape(traces: WeightedTraces, data: bool) -> list[int]:
    return ([traces.particles] if traces.particles is not None else []) + ([traces.num_data] if data else [])


def _reduce(term: torch.Tensor, site: dict, traces: WeightedTraces, *, keep_data: bool) -> torch.Tensor:
    """A site's log-density as (particles, N), (particles,), (N,) or () (see :func:`to_points`)."""
    if term.dim() > traces.rank:
        raise ModelContractError(
            f"site {site['name']!r} has a batch dim left of the model's plates (shape "
            f"{tuple(term.shape)}): declare max_plate_nesting, or enumerate that site in the model"
        )
    frame = data_frame(site, traces.plate) if keep_data else None
    out = to_points(term, traces.rank, particles=traces.particles is not None,
                    data_dim=frame.dim if frame is not None else None)
    return out.expand(_points_shape(traces, frame is not None))


def _to_points(term: torch.Tensor, traces: WeightedTraces) -> torch.Tensor:
    """An unpacked contraction (only particle and data dims left) as (particles, N) or (N,)."""
    out = to_points(term, traces.rank, particles=traces.particles is not None, data_dim=traces.data_dim)
    return out.expand(_points_shape(traces, True))


# ------------------------------------------------------------------------------------------
# log p(x_i | theta) by importance sampling, in bounded memory
# ------------------------------------------------------------------------------------------


def has_local_latents(traces: WeightedTraces) -> bool:
    """Whether the guide samples any site inside the data plate (then log p(x_i) is estimated)."""
    return any(data_frame(s, traces.plate) is not None for s in sample_sites(traces.guide))


def logmeanexp_chunks(log_weights, num_samples: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logmeanexp over ``num_samples`` particles of ``log_weights(s)`` (shape (s, ...)), drawn in
    chunks of at most ``chunk`` and combined by a running logsumexp, so memory stays bounded.

    Returns the estimate and the effective sample size (sum_j w_j)^2 / sum_j w_j^2, each of
    shape (...).
    """
    total = total_sq = None
    done = 0
    while done < num_samples:
        s = min(chunk, num_samples - done)
        log_w = log_weights(s)
        part, part_sq = log_w.logsumexp(0), (2 * log_w).logsumexp(0)
        total = part if total is None else torch.logaddexp(total, part)
        total_sq = part_sq if total_sq is None else torch.logaddexp(total_sq, part_sq)
        done += s
    return total - math.log(num_samples), (2 * total - total_sq).exp()


def local_log_weights(program: Program, args: tuple, num: int, *, plate: str, nesting: int,
                      fixed: dict[str, torch.Tensor] | None = None, by_site: bool = False) -> torch.Tensor:
    """log w_ij for ``num`` particles: shape (num, N), or (num, N, 1 + sites) with ``by_site``
    (the total, then each observed site's own marginal weights).

    Global sites are held at ``fixed`` (a posterior draw), or else at the guide's point
    estimates; a guide sampling a global latent from a proper distribution is refused, since
    its marginal does not split into one term per data point.
    """
    traces = trace_pair(program, args, plate=plate, nesting=nesting, particles=num, fixed=fixed,
                        hold_point_globals=fixed is None)
    if fixed is None:
        _refuse_sampled_globals(traces)
    w = point_log_weights(traces, by_site=by_site)
    if not by_site:
        return w.local
    return torch.stack([w.local, *w.by_site.values()], -1)


def _refuse_sampled_globals(traces: WeightedTraces) -> None:
    sampled = [s["name"] for s in sample_sites(traces.guide) if data_frame(s, traces.plate) is None]
    if sampled:
        raise ModelContractError(
            f"log p(x_i) is estimated for each data point, but sample site {sampled[0]!r} is outside "
            f"the {traces.plate!r} plate and the guide samples it from a distribution (global "
            f"latent site(s) {sampled}): the marginal over a global latent does not split into one "
            "term per data point. Use a point-estimating guide for global sites (AutoDelta), or "
            "diagnose the posterior with to_inference_data / loo, which condition on each draw"
        )


def global_values(trace: poutine.Trace, plate: str) -> dict[str, torch.Tensor]:
    """The values of a trace's latent sites outside the data plate."""
    return {
        s["name"]: s["value"] for s in sample_sites(trace)
        if not s["is_observed"] and data_frame(s, plate) is None
    }


__all__: list[str] = [
    "PARTICLE_PLATE",
    "HoldGlobals",
    "MarginalizeMissing",
    "summing_out_missing",
    "PointLogWeights",
    "WeightedTraces",
    "broadcasts_over_particles",
    "check_guide",
    "check_per_point",
    "check_program",
    "global_values",
    "local_log_weights",
    "logmeanexp_chunks",
    "plate_nesting",
    "point_log_weights",
    "sequential_conditionals",
    "to_points",
    "trace_pair",
]

