"""ArviZ diagnostics: InferenceData from SVI, EM and NUTS results, PSIS k-hat, LOO, comparison.

This is the only module of lvm_pyro that imports ArviZ; it is written for arviz 0.23
(``az.from_dict``, ``az.psislw``, ``az.loo``, ``az.compare``).

:func:`to_inference_data` works on any Pyro model through the model contract: posterior
draws of the latent sites come from the guide (a ``fit`` result, one chain), from the point
estimate of an ``em`` result (one draw), or from NUTS (an ``mcmc`` result, several chains).
For each draw the model is replayed on the data: the pointwise log-likelihood of every
observed site per data point (enumerated discrete sites, such as a mixture's z, summed out),
and a posterior predictive draw with the observations removed. Local latents (those inside
the ``"data"`` plate) are part of each draw: the log-likelihood and posterior predictive of
an amortized model are conditional on the guide's z_i ~ q(z | x_i).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from matplotlib.figure import Figure
from pyro import poutine
from pyro.infer import MCMC, config_enumerate, infer_discrete

from lvm_pyro.checks import check_count, check_seed
from lvm_pyro.data import validate_with_conditions
from lvm_pyro.errors import ConfigurationError, DataError, DiagnosticWarning, LVMError, ModelContractError
from lvm_pyro.infer import logdensity
from lvm_pyro.infer.em import EMResult
from lvm_pyro.infer.mcmc import MCMCResult
from lvm_pyro.infer.svi import FitResult
from lvm_pyro.models.base import DATA_PLATE, LatentVariableModel, Program, as_program, empty_guide

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az
import xarray as xr

#: k-hat below this: the guide is a good importance proposal for the posterior.
KHAT_GOOD = 0.5
#: k-hat below this (and above KHAT_GOOD): usable, with slower convergence; above: unreliable.
KHAT_OK = 0.7

__all__ = [
    "KHAT_GOOD",
    "KHAT_OK",
    "PSISResult",
    "compare",
    "loo",
    "plot_ppc",
    "psis_khat",
    "to_inference_data",
]


# ------------------------------------------------------------------------------------------
# Draws: where the latent values come from, and the model replayed on each of them
# ------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """What a result offers: a model, the data, and a way to draw latent values."""

    kind: str
    model: Callable
    args: tuple
    num_chains: int
    num_draws: int
    guide: Callable | None = None
    module: torch.nn.Module | None = None
    samples: Mapping[str, torch.Tensor] = field(default_factory=dict)
    max_plate_nesting: int | None = None
    site_dims: Mapping[str, Sequence[str]] = field(default_factory=dict)
    sample_stats: Mapping[str, np.ndarray] = field(default_factory=dict)
    trace_stats: Mapping[str, tuple[str, Sequence[float]]] = field(default_factory=dict)
    data_plate: str = DATA_PLATE

    def latent_trace(self, chain: int, draw: int) -> poutine.Trace:
        """A trace holding one draw of the latent values, to replay the model against."""
        tr = poutine.Trace()
        for name, value in self.samples.items():
            tr.add_node(name, name=name, type="sample", is_observed=False, infer={},
                        value=value[chain, draw])
        return tr


@contextmanager
def _eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """Evaluation mode (dropout off, batch-norm statistics frozen) for the block, then restored."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@dataclass
class _Structure:
    """The model's sites as seen on the first draw."""

    latent: list[str]
    local: set[str]
    observed: list[str]
    enumerated: list[str]
    max_plate_nesting: int
    n_components: int | None
    plate: str = DATA_PLATE


def _structure(trace: poutine.Trace, max_plate_nesting: int | None, plate: str) -> _Structure:
    sites = logdensity.sample_sites(trace)
    latent = [s["name"] for s in sites if logdensity.is_latent(s)]
    observed = [s["name"] for s in sites if s["is_observed"]]
    enumerated = [s["name"] for s in sites if not s["is_observed"] and s["infer"].get("enumerate")]
    if not latent and not enumerated:
        raise ModelContractError(
            "the model has no latent sample sites, so there is no posterior to diagnose: add a "
            "latent variable (pyro.sample without obs=), or use a plain likelihood fit instead"
        )
    if not observed:
        raise ModelContractError("the model observes nothing: pass the data to a sample site with obs=x")
    for name in observed + enumerated:
        if logdensity.data_frame(trace.nodes[name], plate) is None:
            what = "observed" if name in observed else "enumerated"
            raise ModelContractError(
                f"{what} site {name!r} is outside the {plate!r} plate, so it has no value per "
                f"data point: put it inside pyro.plate({plate!r}, len(x)), or name the model's "
                "data plate with data_plate=..."
            )
    nesting = max(
        (-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized), default=0
    )
    mpn = max(nesting, max_plate_nesting or 0)
    sizes = {
        int(trace.nodes[n]["fn"].enumerate_support(expand=False).shape[0]) for n in enumerated
    }
    return _Structure(
        latent=latent,
        local={n for n in latent if logdensity.data_frame(trace.nodes[n], plate) is not None},
        observed=observed,
        enumerated=enumerated,
        max_plate_nesting=mpn,
        n_components=sizes.pop() if len(sizes) == 1 else None,
        plate=plate,
    )


def _no_guide(*args, **kwargs) -> None:
    """The guide of a source whose draws are stored samples (NUTS): they are replayed instead."""


class _Replayer:
    """Runs the model against each draw: structure, latents, log-likelihood, predictive.

    The log-likelihood goes through ``lvm_pyro.infer.logdensity``: for each draw of the global
    sites, log p(x_i | theta) per data point, with enumerated sites summed out and the guide's
    local latent sites integrated out by importance sampling (``local_samples`` particles).
    """

    def __init__(self, source: _Source, local_samples: int = 1) -> None:
        self.source = source
        self.n = int(source.args[0].shape[0])
        self.st: _Structure | None = None
        self.local_samples = local_samples
        self.program = Program(model=source.model, guide=source.guide or _no_guide, module=source.module,
                               max_plate_nesting=source.max_plate_nesting)
        self._shared: dict[str, torch.Tensor] | None = None  # the estimate when theta never varies

    def _run(self, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, ValueError, IndexError) as exc:
            if isinstance(exc, LVMError):
                raise
            shapes = [tuple(a.shape) for a in self.source.args]
            raise DataError(
                f"running the fitted model on data of shape(s) {shapes} failed ({type(exc).__name__}: "
                f"{exc}); pass data with the shape and conditions the model was fitted on"
            ) from exc

    def latent(self, chain: int, draw: int) -> poutine.Trace:
        """One draw of the latent values: a guide trace, or a stored sample as a trace."""
        if self.source.guide is not None:
            return self._run(lambda *a: poutine.trace(self.source.guide).get_trace(*a), *self.source.args)
        return self.source.latent_trace(chain, draw)

    def traces(self, latent: poutine.Trace, particles: int | None = None,
                fixed: dict | None = None) -> logdensity.WeightedTraces:
        src = self.source
        if self.st is None:
            first = self._run(lambda *a: poutine.trace(
                poutine.replay(config_enumerate(src.model), trace=latent)).get_trace(*a), *src.args)
            self.st = _structure(first, src.max_plate_nesting, src.data_plate)
        stored = src.guide is None
        return self._run(lambda *a: logdensity.trace_pair(
            self.program, a, plate=src.data_plate, nesting=self.st.max_plate_nesting, particles=particles,
            fixed=fixed, guide_trace=latent if particles is None else None, check=not stored), *src.args)

    def model_trace(self, latent: poutine.Trace) -> poutine.Trace:
        """The model replayed against the draw, discrete sites enumerated (in parallel)."""
        return self.traces(latent).model

    def log_likelihood(self, latent: poutine.Trace) -> dict[str, torch.Tensor]:
        """log p(x_i^site | theta of this draw) per observed site, shape (n,) each."""
        traces = self.traces(latent)
        st = self.st
        if self.source.guide is None:  # stored draws: condition on their local latents
            w = logdensity.point_log_weights(traces, by_site=True, observed_only=True)
            return logdensity.sequential_conditionals(w.by_site)
        fixed = logdensity.global_values(latent, st.plate)
        if not logdensity.has_local_latents(traces):
            w = logdensity.point_log_weights(traces, by_site=True)
            return logdensity.sequential_conditionals(w.by_site)
        if not fixed and self._shared is not None:  # every draw shares theta: one estimate serves all
            return self._shared
        names = st.observed

        def weights(k: int) -> torch.Tensor:
            return self._run(lambda *a: logdensity.local_log_weights(
                self.program, a, k, plate=st.plate, nesting=st.max_plate_nesting, fixed=fixed,
                by_site=True), *self.source.args)

        chunk = max(1, 2**16 // max(self.n, 1))
        value, _ = logdensity.logmeanexp_chunks(weights, self.local_samples, chunk)
        out = logdensity.sequential_conditionals({name: value[:, 1 + i] for i, name in enumerate(names)})
        if not fixed:
            self._shared = out
        return out

    def enumerated_draw(self, latent: poutine.Trace) -> dict[str, torch.Tensor]:
        """The enumerated sites drawn from their exact posterior p(d_i | x_i, draw) (infer_discrete)."""
        src = self.source
        fn = infer_discrete(poutine.replay(config_enumerate(src.model), trace=latent),
                            first_available_dim=-1 - self.st.max_plate_nesting, temperature=1)
        tr = self._run(lambda *a: poutine.trace(fn).get_trace(*a), *src.args)
        return {name: tr.nodes[name]["value"] for name in self.st.enumerated}

    def predictive(self, latent: poutine.Trace) -> poutine.Trace:
        """The model with its observations removed, replayed against the draw: x_rep ~ p(x | draw)."""
        fn = poutine.uncondition(poutine.replay(self.source.model, trace=latent))
        return self._run(lambda *a: poutine.trace(fn).get_trace(*a), *self.source.args)


# ------------------------------------------------------------------------------------------
# Results -> sources
# ------------------------------------------------------------------------------------------


def _prepare_args(validate: Callable, data, like: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Validate the data against the model and move it to the model's device and dtype."""
    if data is None:
        raise ConfigurationError(
            "pass the data the model was fitted on: to_inference_data(result, data) (the "
            "observed_data and log_likelihood groups are computed from it)"
        )
    x, *conds = validate_with_conditions(data, validate)
    if like is not None:
        x = x.to(device=like.device, dtype=like.dtype if like.is_floating_point() else x.dtype)
        conds = tuple(c.to(like.device) for c in conds)
    return (x, *conds)


def _reference_tensor(program: Program) -> torch.Tensor | None:
    """A tensor of the model's parameters: the data moves to its device and dtype (None: stays)."""
    module = program.module
    if module is None:
        return None
    first = next(iter(module.parameters()), None)
    return first if first is not None else next(iter(module.buffers()), None)


def _fitted_like(program: Program, result: FitResult | None) -> torch.Tensor | None:
    """The model's device and dtype as a tensor: of its parameters, else those ``fit`` trained on."""
    like = _reference_tensor(program)
    if like is not None or result is None:
        return like
    dtype = getattr(torch, str(result.config.get("dtype", "")).removeprefix("torch."), None)
    device = result.config.get("device")
    if not isinstance(dtype, torch.dtype) or device is None:
        return None
    return torch.empty(0, dtype=dtype, device=device)


def _site_dims_of(obj) -> dict[str, list[str]]:
    dims = getattr(obj, "site_dims", None)
    if callable(dims):
        dims = dims()
    return {k: list(v) for k, v in (dims or {}).items()}


def _wrong_kind(result) -> ConfigurationError:
    return ConfigurationError(
        f"to_inference_data cannot read a {type(result).__name__}: pass the result of "
        "lvm_pyro.fit(...) (SVI), lvm_pyro.em(...) (EM), lvm_pyro.mcmc(...) or a pyro.infer.MCMC "
        "run (NUTS), or a trained model with a guide (a LatentVariableModel or a (model, guide) pair)"
    )


def _resolve_plate(data_plate: str | None, result) -> str:
    """The data plate's name: given, else the one ``fit`` trained with, else "data"."""
    if data_plate is not None:
        if not isinstance(data_plate, str) or not data_plate:
            raise ConfigurationError(f"data_plate must be a plate name, got {data_plate!r}")
        return data_plate
    if isinstance(result, FitResult):
        return str(result.config.get("data_plate", DATA_PLATE))
    return DATA_PLATE


def _source(result, data, num_samples: int) -> _Source:
    if isinstance(result, FitResult):
        program = result.program
        args = _prepare_args(program.validate, data, _fitted_like(program, result))
        losses = {"loss": ("step", result.losses)}
        if result.val_elbo:
            losses["val_elbo"] = ("epoch", result.val_elbo)
        return _Source("svi", program.model, args, 1, num_samples, guide=program.guide,
                       module=program.module, max_plate_nesting=program.max_plate_nesting,
                       site_dims=_site_dims_of(program.source), trace_stats=losses)
    if isinstance(result, MCMCResult):
        args = result.data if data is None else _prepare_args(result.validate, data, result.data[0])
        chains, draws = next(iter(result.samples.values())).shape[:2]
        module = result.source if isinstance(result.source, torch.nn.Module) else None
        return _Source("mcmc", result.model, args, chains, draws, samples=result.samples, module=module,
                       max_plate_nesting=result.max_plate_nesting,
                       site_dims=_site_dims_of(result.source), sample_stats=result.sample_stats)
    if isinstance(result, MCMC):
        samples = result.get_samples(group_by_chain=True)
        args = tuple(result._args) if data is None else (data if isinstance(data, tuple) else (data,))
        chains, draws = next(iter(samples.values())).shape[:2]
        diverging = np.zeros((chains, draws), dtype=bool)
        for i, (_, idx) in enumerate(sorted(result.diagnostics()["divergences"].items())):
            diverging[i, idx] = True
        kernel = result.kernel
        return _Source("mcmc", kernel.model, args, chains, draws, samples=samples,
                       max_plate_nesting=kernel._max_plate_nesting,
                       sample_stats={"diverging": diverging})
    if isinstance(result, EMResult):
        model = result.model
        bare = callable(model) and not hasattr(model, "guide")  # em ran it with no guide
        program = as_program(model, empty_guide) if bare else as_program(model)
        args = _prepare_args(program.validate, data, _fitted_like(program, None))
        return _Source("em", program.model, args, 1, 1, guide=program.guide,
                       module=program.module, max_plate_nesting=program.max_plate_nesting,
                       site_dims=_site_dims_of(result.model),
                       trace_stats={"log_likelihood": ("iteration", list(result.log_likelihood))})
    if isinstance(result, (LatentVariableModel, tuple, Program)) or (
        hasattr(result, "model") and hasattr(result, "guide")
    ):
        program = as_program(result)
        args = _prepare_args(program.validate, data, _fitted_like(program, None))
        return _Source("guide", program.model, args, 1, num_samples, guide=program.guide,
                       module=program.module, max_plate_nesting=program.max_plate_nesting,
                       site_dims=_site_dims_of(program.source))
    raise _wrong_kind(result)


# ------------------------------------------------------------------------------------------
# Dims and coords
# ------------------------------------------------------------------------------------------


def _value_dims(name: str, site: dict, value_shape: tuple[int, ...], sizes: dict[str, int | None],
                declared: Mapping[str, Sequence[str]], data_plate: str, data_dim: str = "obs") -> list[str]:
    """Dim names of one site's value: declared by the model, else plates, else known sizes."""
    if name in declared:
        return list(declared[name])
    n_batch = len(value_shape) - site["fn"].event_dim
    frames = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    dims: list[str] = []
    for i, size in enumerate(value_shape):
        if i < n_batch:
            plate = frames.get(i - n_batch)
            dims.append(f"{name}_dim_{i}" if plate is None else data_dim if plate == data_plate else plate)
            continue
        matches = [k for k, s in sizes.items() if s == size]
        free = [k for k in matches + [f"{k}_2" for k in matches] if k not in dims]
        dims.append(free[0] if free else f"{name}_dim_{i}")
    return dims


def _coords(dims: Mapping[str, Sequence[str]], arrays: Mapping[str, np.ndarray], lead: int) -> dict:
    coords: dict[str, np.ndarray] = {}
    for name, names in dims.items():
        shape = arrays[name].shape[lead:]
        for d, size in zip(names, shape, strict=False):
            coords.setdefault(d, np.arange(size))
    return coords


# ------------------------------------------------------------------------------------------
# to_inference_data
# ------------------------------------------------------------------------------------------


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


@torch.no_grad()
def to_inference_data(
    result,
    data=None,
    *,
    num_samples: int = 200,
    local_latents: bool | str = "auto",
    posterior_predictive: bool = True,
    dims: Mapping[str, Sequence[str]] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    seed: int | None = None,
    data_plate: str | None = None,
    local_samples: int = 64,
) -> az.InferenceData:
    """ArviZ InferenceData of a fitted model: posterior draws, pointwise log-likelihood, more.

    log_likelihood[chain, draw, i] = log p(x_i | theta_s): the local latents of data point i
    integrated out (enumerated discrete sites summed exactly, ``pyro.markov`` chains included;
    sites the guide samples per data point by importance sampling with ``local_samples``
    particles), so that az.loo estimates elpd = sum_i log p(x_i | x_-i) over the posterior of
    the global sites theta. One variable per observed site, each that site's own marginal; the
    data dim is named "obs" (or "obs_id" if a site is named "obs"). Where every draw shares
    one point estimate of theta (EM, a Delta guide, a VAE whose globals are network weights),
    the export warns (``DiagnosticWarning``): LOO then reduces to the in-sample fit.

    Args:
        result: what ``fit`` returns (SVI: ``num_samples`` draws from the guide, one chain),
            what ``em`` returns (one draw: the point estimate), what ``mcmc`` returns or a
            ``pyro.infer.MCMC`` run (NUTS: its chains and draws), or a trained model with a
            guide (a LatentVariableModel or a ``(model, guide)`` pair).
        data: the data the model was fitted on, x or a tuple (x, cond, ...) (optional for an
            ``mcmc`` result, which keeps it).
        num_samples: draws from the guide (SVI); ignored for EM and NUTS.
        local_latents: include latent sites inside the data plate (one value per data point)
            in the posterior group; "auto" includes them when the model has no global latent;
            enumerated sites are then drawn from their posterior p(z_i | x_i, draw).
        posterior_predictive: add x_rep ~ p(x | draw) per draw (memory: draws x data size).
        dims, coords: ArviZ dims (site -> dim names, without chain/draw) and coords, on top of
            the automatic ones: "obs" for the data plate, plate names, "component" (the size of
            an enumerated site), "feature" (the data's last dim), or the model's ``site_dims``.
        seed: seeds Pyro's RNG first.
        data_plate: the name of the model's plate over data points (default: the one
            ``fit`` was given for a fit result, else "data").
        local_samples: importance samples per data point and draw for the local latent
            sites the guide samples (ignored where there are none: the value is then exact).

    Groups: posterior, log_likelihood (chain, draw, obs), observed_data, posterior_predictive,
    sample_stats (SVI: the loss per step and the validation ELBO per epoch; EM: the
    log-likelihood per iteration; NUTS: diverging, acceptance_rate, step_size per draw). An EM
    export's posterior also holds the fitted ``pyro.param`` parameters (one draw).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from lvm_pyro import fit
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     loc = pyro.param("loc", torch.tensor(0.0))
        ...     pyro.sample("mu", dist.Normal(loc, 0.15))
        >>> x = torch.randn(50) + 3
        >>> result = fit(model, x, guide=guide, steps=300, lr=0.05, progress=False, seed=0)
        >>> idata = to_inference_data(result, x, num_samples=100)
        >>> idata.log_likelihood["x"].shape
        (1, 100, 50)
        >>> bool(loo(idata).elpd_loo < 0)
        True
    """
    num_samples = check_count(num_samples, "num_samples")
    local_samples = check_count(local_samples, "local_samples")
    if local_latents not in (True, False, "auto"):
        raise ConfigurationError(f"local_latents must be True, False or 'auto', got {local_latents!r}")
    seed = check_seed(seed)
    src = _source(result, data, num_samples)
    src.data_plate = _resolve_plate(data_plate, result)
    if seed is not None:
        pyro.set_rng_seed(seed)
    replayer = _Replayer(src, local_samples)
    n = replayer.n
    C, S = src.num_chains, src.num_draws
    posterior: dict[str, list] = {}
    loglik: dict[str, list] = {}
    predictive: dict[str, list] = {}
    first_trace, names, with_discrete = None, [], False
    with _eval_mode(src.module):
        for c in range(C):
            for d in range(S):
                latent = replayer.latent(c, d)
                tr = replayer.model_trace(latent)
                st = replayer.st
                if first_trace is None:
                    first_trace = tr
                    keep_local = local_latents is True or (
                        local_latents == "auto" and not set(st.latent) - st.local
                    )
                    names = [s for s in st.latent if keep_local or s not in st.local]
                    with_discrete = keep_local and bool(st.enumerated)
                for name in names:
                    posterior.setdefault(name, []).append(tr.nodes[name]["value"])
                if with_discrete:
                    for name, value in replayer.enumerated_draw(latent).items():
                        posterior.setdefault(name, []).append(value)
                for name, value in replayer.log_likelihood(latent).items():
                    loglik.setdefault(name, []).append(value)
                if posterior_predictive:
                    ptr = replayer.predictive(latent)
                    for name in st.observed:
                        predictive.setdefault(name, []).append(ptr.nodes[name]["value"])
    st = replayer.st
    _warn_about_meaning(src, st, first_trace)

    def stack(groups: dict[str, list]) -> dict[str, np.ndarray]:
        out = {}
        for name, values in groups.items():
            arr = _numpy(torch.stack([v.reshape(values[0].shape) for v in values]))
            out[name] = arr.reshape((C, S) + arr.shape[1:])
        return out

    post, ll, pp = stack(posterior), stack(loglik), stack(predictive)
    if src.kind == "em":
        post.update(_fitted_parameters(first_trace, post, C, S))
    observed = {name: _numpy(first_trace.nodes[name]["value"]) for name in st.observed}
    x = src.args[0]
    sizes = {"component": st.n_components, "feature": int(x.shape[-1]) if x.dim() == 2 else None}
    declared = {**src.site_dims, **(dims or {})}
    data_dim = _data_dim_name(set(post) | set(observed) | set(declared))
    all_dims: dict[str, list[str]] = {}
    for name, arr in {**post, **observed}.items():
        shape = arr.shape[2:] if name in post else arr.shape
        site = first_trace.nodes.get(name)
        if site is None or site["type"] != "sample":  # an EM parameter: its own dims
            all_dims[name] = [f"{name}_dim_{i}" for i in range(len(shape))]
            continue
        all_dims[name] = _value_dims(name, site, shape, sizes, declared, st.plate, data_dim)
    all_coords = {**_coords({k: v for k, v in all_dims.items() if k in post}, post, 2),
                  **_coords({k: v for k, v in all_dims.items() if k in observed}, observed, 0)}
    all_coords.update(coords or {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        idata = az.from_dict(
            posterior=post,
            log_likelihood=ll,
            posterior_predictive=pp or None,
            observed_data=observed,
            coords=all_coords,
            dims=all_dims,
            attrs={"inference": src.kind, "lvm_pyro_num_data": n, "lvm_pyro_data_dim": data_dim,
                   "lvm_pyro_point_estimate": int(not _has_global_draws(src, st, first_trace))},
        )
    _check_groups(idata, ll, observed, pp)
    stats = _sample_stats(src, C, S)
    if stats is not None:
        idata.add_groups(sample_stats=stats)
    return idata


def _data_dim_name(taken: set[str]) -> str:
    """The name of the data points' dim: "obs", unless a site or dim is named so (xarray would
    turn a variable named like its dim into a coordinate and drop the group)."""
    name = "obs"
    while name in taken:
        name = f"{name}_id" if not name.endswith("_id") else f"_{name}"
    return name


def _check_groups(idata, ll: dict, observed: dict, pp: dict) -> None:
    """Every group that was computed is in the InferenceData (never dropped silently)."""
    expected = {"log_likelihood": ll, "observed_data": observed, "posterior_predictive": pp}
    for group, values in expected.items():
        if values and (group not in idata.groups() or set(values) - set(getattr(idata, group).data_vars)):
            raise ModelContractError(
                f"ArviZ dropped the {group} group or some of its variables {sorted(values)}: a site "
                "name clashes with a dim name; pass dims=... naming the dims of those sites"
            )


def _has_global_draws(src: _Source, st: _Structure, trace: poutine.Trace) -> bool:
    """Whether the draws vary the global latent values (else they share one point estimate)."""
    if src.kind == "em":
        return False
    varying = [n for n in st.latent if n not in st.local
               and not logdensity.point_mass(trace.nodes[n]["fn"])]
    return bool(varying) if src.kind != "mcmc" else bool([n for n in st.latent if n not in st.local])


def _warn_about_meaning(src: _Source, st: _Structure, trace: poutine.Trace) -> None:
    """Say where the exported pointwise log-likelihood cannot support LOO as users expect."""
    if not _has_global_draws(src, st, trace):
        warnings.warn(
            "every draw of this InferenceData shares one point estimate of the global parameters "
            "(no global latent site is sampled: an EM fit, a Delta guide, or a model whose globals "
            "are parameters), so az.summary's sd is undefined or zero and PSIS-LOO reduces to the "
            "in-sample log-likelihood: compare such models on held-out data with "
            "lvm_pyro.log_likelihood, or fit a posterior over the globals (AutoNormal, NUTS)",
            DiagnosticWarning,
            stacklevel=3,
        )
    if src.kind == "mcmc" and st.local:
        warnings.warn(
            f"the NUTS draws include local latent site(s) {sorted(st.local)}, and without a guide "
            "the exported pointwise log-likelihood conditions on each draw of them (it is not "
            "log p(x_i | theta)): PSIS-LOO over it is unreliable (expect many high Pareto k)",
            DiagnosticWarning,
            stacklevel=3,
        )


def _fitted_parameters(trace: poutine.Trace, post: dict, chains: int, draws: int) -> dict:
    """An EM fit's parameters that are not sample sites (``pyro.param``s): one draw each."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "param" or name in post or "$$$" in name:
            continue
        value = _numpy(site["value"]).copy()
        out[name] = np.broadcast_to(value, (chains, draws) + value.shape).copy()
    return out


def _sample_stats(src: _Source, chains: int, draws: int) -> xr.Dataset | None:
    if src.sample_stats:
        data = {
            k: (("chain", "draw"), np.asarray(v).reshape(chains, draws)) for k, v in src.sample_stats.items()
        }
        return xr.Dataset(data, coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    if src.trace_stats:
        data = {
            k: (("chain", dim), np.asarray(v, dtype=float)[None]) for k, (dim, v) in src.trace_stats.items()
        }
        return xr.Dataset(data, coords={"chain": [0]})
    return None


# ------------------------------------------------------------------------------------------
# PSIS k-hat
# ------------------------------------------------------------------------------------------


def _label(k: float) -> str:
    if not k < KHAT_OK:
        return "bad" if not math.isnan(k) else "undefined"
    return "good" if k < KHAT_GOOD else "ok"


@dataclass(frozen=True)
class PSISResult:
    """Pareto k-hat of a guide q as an importance proposal for the posterior p(z | x).

    A k-hat of -inf means the largest weights are tied up to rounding: constant weights (q
    equals the posterior, an exact guide) or weights taking a few values (a discrete guide);
    the weights are then bounded and the verdict is "good".
    ``khat``: for the joint weights w_s = p(x, z_s) / q(z_s | x); ``khat_per_point``: for
    each data point's weights p(x_i, z_i,s | theta_s) / q(z_i,s | x_i) over the draws (guides
    with local latents; None otherwise). k < 0.5 good, 0.5 <= k < 0.7 ok (slower
    convergence), k >= 0.7 bad (the guide misses posterior mass; importance-sampled
    estimates are unreliable). ``log_weights``: (num_samples,) joint log weights.
    """

    khat: float
    khat_per_point: np.ndarray | None
    num_samples: int
    log_weights: np.ndarray = field(repr=False)

    @property
    def label(self) -> str:
        """"good", "ok" or "bad" for the joint k-hat."""
        return _label(self.khat)

    def counts(self) -> dict[str, int]:
        """Data points per verdict ("good", "ok", "bad") of the per-point k-hats."""
        ks = self.khat_per_point if self.khat_per_point is not None else np.array([])
        out = {"good": 0, "ok": 0, "bad": 0}
        for k in ks:
            label = _label(float(k))
            out["bad" if label == "undefined" else label] += 1
        return out

    def summary(self) -> str:
        """A few lines reporting the k-hats against the 0.5 and 0.7 thresholds."""
        lines = [
            f"PSIS k-hat of the guide ({self.num_samples} draws): joint {self.khat:.3f} -> "
            f"{self.label} (good < {KHAT_GOOD}, ok < {KHAT_OK})"
            + (" [-inf: the largest weights are tied (exact or discrete guide): bounded, reliable]"
               if self.khat == -math.inf else "")
        ]
        if self.khat_per_point is not None:
            c = self.counts()
            n = len(self.khat_per_point)
            lines.append(
                f"per data point (local latents): good {c['good']}/{n}, ok {c['ok']}/{n}, bad "
                f"{c['bad']}/{n}; max {np.nanmax(self.khat_per_point):.3f}"
            )
            tied = int(np.sum(self.khat_per_point == -np.inf))
            if tied:
                lines.append(f"{tied} point(s) at -inf: their largest weights are tied (bounded weights, "
                             "e.g. a masked point or a discrete guide): reliable")
        return "\n".join(lines)


def _khat(log_w: np.ndarray) -> np.ndarray:
    """Pareto k-hat per row of (rows, draws) log weights.

    -inf where the largest weights are tied to rounding (constant weights, or weights taking a
    few values, as for a discrete guide): the tail is bounded, so importance sampling is
    reliable, but a generalized Pareto distribution cannot be fitted to it (ArviZ returns inf).
    """
    log_w = np.asarray(log_w, dtype=np.float64)
    draws = log_w.shape[-1]
    tail = int(math.ceil(min(0.2 * draws, 3 * math.sqrt(draws))))
    scale = 1.0 + np.abs(log_w).max(-1)
    constant = log_w.max(-1) - log_w.min(-1) <= 1e3 * np.finfo(np.float32).eps * scale
    top = np.sort(log_w, axis=-1)[..., -tail - 1:]
    tied = top.max(-1) - top.min(-1) <= 10 * np.finfo(np.float32).eps * scale  # the same value, rounded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(log_w)
    return np.where(constant | tied, -np.inf, np.asarray(k, dtype=np.float64))


@torch.no_grad()
def psis_khat(
    model,
    data,
    *,
    guide: Callable | None = None,
    num_samples: int = 1000,
    seed: int | None = None,
    data_plate: str | None = None,
) -> PSISResult:
    """Pareto-smoothed importance-sampling k-hat of a guide ("Yes, but did it work?", Yao et al. 2018).

    k-hat is the fitted generalized-Pareto shape of the largest weights w_s = p(x, z_s) / q(z_s | x),
    z_s ~ q; enumerated discrete sites are summed out of p. k < 0.5: q is a good proposal.

    ``model`` is a trained model with its guide (a LatentVariableModel, a (model, guide) pair,
    or a callable with ``guide=``) or a ``fit`` result. For guides with local latents (inside
    the data plate, e.g. an amortized encoder) each data point also gets its own k-hat.
    ``data_plate`` names that plate (default: the one ``fit`` used, else "data").

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def exact(x):   # the posterior N(sum x / (N + 1), 1 / (N + 1))
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), (len(x) + 1) ** -0.5))
        >>> psis_khat(model, torch.randn(20), guide=exact, num_samples=500).label
        'good'
    """
    num_samples = check_count(num_samples, "num_samples")
    if num_samples < 10:
        raise ConfigurationError(
            f"num_samples={num_samples}: the Pareto fit to the largest importance weights needs at "
            "least 10 draws (1000 or more for a reliable k-hat)"
        )
    seed = check_seed(seed)
    if isinstance(model, FitResult):
        if guide is not None:
            raise ConfigurationError("a fit result carries its guide: do not pass guide= as well")
        program = model.program
    elif isinstance(model, (MCMCResult, MCMC, EMResult)):
        raise ConfigurationError(
            f"psis_khat diagnoses a guide's fit to the posterior; a {type(model).__name__} has no "
            "such guide (EM gives a point estimate, NUTS exact draws): pass a fit result or a model "
            "with its guide"
        )
    else:
        try:
            program = as_program(model, guide)
        except ConfigurationError as exc:
            raise ConfigurationError(f"psis_khat needs a model and its guide: {exc}") from exc
    fitted = model if isinstance(model, FitResult) else None
    args = _prepare_args(program.validate, data, _fitted_like(program, fitted))
    if seed is not None:
        pyro.set_rng_seed(seed)
    plate = _resolve_plate(data_plate, model)
    src = _Source("guide", program.model, args, 1, num_samples, guide=program.guide,
                  max_plate_nesting=program.max_plate_nesting, module=program.module, data_plate=plate)
    replayer = _Replayer(src)
    joint, per_point = [], []
    has_local = False
    with _eval_mode(program.module):
        for _ in range(num_samples):
            traces = replayer.traces(replayer.latent(0, 0))
            if not joint and all(logdensity.point_mass(site["fn"])
                                 for site in logdensity.sample_sites(traces.guide)):
                raise ConfigurationError(
                    "psis_khat diagnoses a guide as an importance proposal, but this guide samples "
                    "nothing (point estimates only, discrete sites enumerated in the model), so every "
                    "weight is the same and there is nothing to diagnose: use log_likelihood / em's "
                    "log-likelihood for such a model, or give the guide distributions to sample"
                )
            w = logdensity.point_log_weights(traces)
            has_local = has_local or logdensity.has_local_latents(traces)
            joint.append(float(w.global_ + w.local.sum()))
            per_point.append(_numpy(w.local))
    log_w = np.asarray(joint)
    if not np.all(np.isfinite(log_w)):
        raise ModelContractError(
            "some importance weights log p(x, z) - log q(z | x) are not finite: the guide puts mass "
            "where the model has none (check supports and constraints of the guide's distributions)"
        )
    khat = float(_khat(log_w[None])[0])
    khat_points = _khat(np.stack(per_point, axis=1)) if has_local else None
    return PSISResult(khat=khat, khat_per_point=khat_points, num_samples=num_samples, log_weights=log_w)


# ------------------------------------------------------------------------------------------
# LOO, comparison, PPC
# ------------------------------------------------------------------------------------------


def _as_idata(result, data, **kwargs) -> az.InferenceData:
    return result if isinstance(result, az.InferenceData) else to_inference_data(result, data, **kwargs)


def loo(result, data=None, *, pointwise: bool = True, var_name: str | None = None,
        **kwargs) -> az.ELPDData:
    """PSIS-LOO of a fitted model: elpd_loo = sum_i log p(x_i | x_-i), estimated by Pareto-smoothed
    importance sampling over the posterior draws (az.loo).

    ``result`` is an InferenceData or anything :func:`to_inference_data` accepts (``kwargs``
    are passed to it). The per-point Pareto k of the returned object flags influential points.
    ``var_name`` picks one observed site of a model with several; by default their joint
    log p(x_i | theta) is used (data point i left out with all its sites). LOO from a single point
    estimate is refused, and LOO where every draw shares one point estimate of the globals
    warns (``DiagnosticWarning``): it is then the in-sample fit, not a leave-one-out estimate.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), (len(x) + 1) ** -0.5))
        >>> bool(loo((model, guide), torch.randn(30), num_samples=200).elpd_loo < 0)
        True
    """
    idata = _joint_log_likelihood(_as_idata(result, data, **kwargs), var_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.loo(idata, pointwise=pointwise, var_name=var_name)


def _joint_log_likelihood(idata: az.InferenceData, var_name: str | None) -> az.InferenceData:
    """Checked for LOO; with several observed sites and no ``var_name``, a copy whose
    log_likelihood is their sum, log p(x_i | theta) over every site of data point i (the export's
    variables are the chain-rule terms of that joint)."""
    _check_loo(idata)
    names = list(idata.log_likelihood.data_vars)
    if var_name is not None:
        if var_name not in names:
            raise ConfigurationError(f"var_name {var_name!r} is not in the log_likelihood group: {names}")
        return idata
    if len(names) == 1:
        return idata
    joint = sum(idata.log_likelihood[n] for n in names[1:]) + idata.log_likelihood[names[0]]
    out = idata.copy()
    out.log_likelihood = xr.Dataset({"joint": joint}, attrs=idata.log_likelihood.attrs)
    return out


def _check_loo(idata: az.InferenceData) -> None:
    """Refuse LOO where it cannot mean a leave-one-out estimate."""
    if "log_likelihood" not in idata.groups():
        raise ConfigurationError(
            "LOO needs a log_likelihood group: make the InferenceData with "
            "lvm_pyro.to_inference_data(result, data)"
        )
    draws = idata.log_likelihood.sizes["chain"] * idata.log_likelihood.sizes["draw"]
    if draws < 2:
        raise ConfigurationError(
            "LOO needs posterior draws, but this InferenceData holds one (a point estimate, e.g. "
            "from em), so PSIS-LOO cannot be computed: fit a posterior over the globals by SVI "
            "(e.g. AutoNormal) or NUTS, compare mixtures with select_components(..., "
            "criterion='loo'), or compare on held-out data with lvm_pyro.log_likelihood"
        )
    if idata.attrs.get("lvm_pyro_point_estimate"):
        warnings.warn(
            "every draw shares one point estimate of the global parameters, so this elpd_loo is "
            "the in-sample sum of log p(x_i | theta_hat), not a leave-one-out estimate (optimistic "
            "for a model that overfits): compare such models on held-out data with "
            "lvm_pyro.log_likelihood, or fit a posterior over the globals (AutoNormal, NUTS)",
            DiagnosticWarning,
            stacklevel=3,
        )


def compare(results: Mapping[str, object], data=None, *, ic: str = "loo", **kwargs):
    """Rank models by expected log predictive density (az.compare): a table with elpd_loo, its
    standard error, the difference to the best model and stacking weights.

    ``results`` maps names to InferenceData or to anything :func:`to_inference_data` accepts
    (each converted with ``data`` and ``kwargs``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def good(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), (len(x) + 1) ** -0.5))
        >>> def off(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1) + 2.0, 0.1))
        >>> x = torch.randn(30)
        >>> compare({"good": (model, good), "off": (model, off)}, x, num_samples=200).index[0]
        'good'
    """
    if not isinstance(results, Mapping) or not results:
        raise ConfigurationError("compare needs a dict {name: result or InferenceData} of models")
    if ic not in ("loo", "waic"):
        raise ConfigurationError(f"ic must be 'loo' or 'waic', got {ic!r}")
    idatas = {name: _joint_log_likelihood(_as_idata(r, data, **kwargs), None) for name, r in results.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return az.compare(idatas, ic=ic)


def plot_ppc(
    idata: az.InferenceData,
    *,
    kind: str = "kde",
    num_pp_samples: int | None = 50,
    var_names: Sequence[str] | None = None,
    ax=None,
    seed: int = 0,
) -> Figure:
    """Posterior predictive check: the observed data against replicated data x_rep ~ p(x | draw).

    Draws through ``az.plot_ppc`` (kind "kde", "cumulative" or "scatter") on a new headless
    Figure (or on ``ax``) and returns the Figure.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("mu", dist.Normal(x.mean(), 0.2))
        >>> fig = plot_ppc(to_inference_data((model, guide), torch.randn(30), num_samples=50))
        >>> type(fig).__name__
        'Figure'
    """
    if not isinstance(idata, az.InferenceData) or "posterior_predictive" not in idata.groups():
        raise ConfigurationError(
            "plot_ppc needs an InferenceData with a posterior_predictive group: make it with "
            "to_inference_data(result, data, posterior_predictive=True)"
        )
    if kind not in ("kde", "cumulative", "scatter"):
        raise ConfigurationError(f"kind must be 'kde', 'cumulative' or 'scatter', got {kind!r}")
    if num_pp_samples is not None:
        check_count(num_pp_samples, "num_pp_samples")
    present = list(idata.posterior_predictive.data_vars)
    names = list(var_names) if var_names is not None else present
    unknown = [n for n in names if n not in present]
    if unknown or not names:
        raise ConfigurationError(
            f"var_names {unknown or names} are not in the posterior_predictive group; its observed "
            f"sites are {present}"
        )
    if ax is None:
        fig = Figure(figsize=(5 * len(names), 3.5), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
    else:
        fig = ax.figure
        axes = np.atleast_1d(ax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        az.plot_ppc(idata, kind=kind, num_pp_samples=num_pp_samples, var_names=names,
                    ax=axes if len(axes) > 1 else axes[0], random_seed=seed, show=False)
    return fig
