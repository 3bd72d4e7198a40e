"""The export: diagnostics data (InferenceData under arviz 0.2x, xarray.DataTree under ArviZ 1.x)
from SVI, EM and NUTS results.

:func:`to_inference_data` works on any Pyro model through the model contract: posterior
draws of the latent sites come from the guide (a ``fit`` result, one chain), from the point
estimate of an ``em`` result (one draw), or from NUTS (an ``mcmc`` result, several chains).
For each draw the model is replayed on the data (:mod:`lvm_pyro.diagnostics.replay`): the
pointwise log-likelihood of every observed site per data point (enumerated discrete sites,
such as a mixture's z, summed out), and a posterior predictive draw with the observations
removed. Local latents (those inside the ``"data"`` plate) are part of each draw: the
log-likelihood and posterior predictive of an amortized model are conditional on the guide's
z_i ~ q(z | x_i). The groups are built here, as arrays with their dims and coords, and handed
to the ArviZ adapter (:mod:`lvm_pyro.diagnostics.arviz`), which makes the InferenceData or the
DataTree; no converter of ArviZ's (``from_pyro``) is used.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pyro
import torch
import xarray as xr
from pyro import poutine

from lvm_pyro.checks import check_count, check_seed
from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.diagnostics.replay import (
    Replayer,
    Source,
    Structure,
    eval_mode,
    resolve_plate,
    source_of,
    to_numpy,
)
from lvm_pyro.errors import ConfigurationError, DiagnosticWarning, ModelContractError
from lvm_pyro.infer import logdensity
from lvm_pyro.infer.params import claim_module_params, restoring_param_store

__all__ = ["to_inference_data"]


# ------------------------------------------------------------------------------------------
# Dims and coords
# ------------------------------------------------------------------------------------------


def _value_dims(
    name: str,
    site: dict,
    value_shape: tuple[int, ...],
    sizes: dict[str, int | None],
    declared: Mapping[str, Sequence[str]],
    data_plate: str,
    data_dim: str = "obs",
) -> list[str]:
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


@restoring_param_store()
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
    arviz_api: int | None = None,
):
    """ArviZ data of a fitted model (an InferenceData, or a DataTree under ArviZ 1.x): posterior
    draws, pointwise log-likelihood, more.

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
        arviz_api: 0 for an ``arviz.InferenceData`` (arviz 0.2x), 1 for an ``xarray.DataTree``
            (arviz-base, the ArviZ 1.x API); default :func:`lvm_pyro.diagnostics.arviz.api`
            (the environment variable ``LVM_PYRO_ARVIZ``, else arviz 0.2x where installed).
            Both hold the same groups, variables, dims, coords and attrs.

    Groups: posterior, log_likelihood (chain, draw, obs), observed_data, posterior_predictive,
    sample_stats (SVI: the loss per step and the validation ELBO per epoch; EM: the
    log-likelihood per iteration; NUTS: diverging, acceptance_rate, step_size per draw). An EM
    export's posterior also holds the fitted ``pyro.param`` parameters (one draw).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from lvm_pyro import fit, loo
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
    version = adapter.api(arviz_api)
    src = source_of(result, data, num_samples)
    claim_module_params(src.module)
    src.data_plate = resolve_plate(data_plate, result)
    if seed is not None:
        pyro.set_rng_seed(seed)
    replayer = Replayer(src, local_samples)
    n = replayer.n
    C, S = src.num_chains, src.num_draws
    posterior: dict[str, list] = {}
    loglik: dict[str, list] = {}
    predictive: dict[str, list] = {}
    first_trace, names, with_discrete = None, [], False
    with eval_mode(src.module):
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
            arr = to_numpy(torch.stack([v.reshape(values[0].shape) for v in values]))
            out[name] = arr.reshape((C, S) + arr.shape[1:])
        return out

    post, ll, pp = stack(posterior), stack(loglik), stack(predictive)
    if src.kind == "em":
        post.update(_fitted_parameters(first_trace, post, C, S))
    observed = {name: to_numpy(first_trace.nodes[name]["value"]) for name in st.observed}
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
    all_coords = {
        **_coords({k: v for k, v in all_dims.items() if k in post}, post, 2),
        **_coords({k: v for k, v in all_dims.items() if k in observed}, observed, 0),
    }
    all_coords.update(coords or {})
    stats = _sample_stats(src, C, S)
    idata = adapter.build(
        {"posterior": post, "log_likelihood": ll, "posterior_predictive": pp, "observed_data": observed},
        coords=all_coords,
        dims=all_dims,
        attrs={
            "inference": src.kind,
            "lvm_pyro_num_data": n,
            "lvm_pyro_data_dim": data_dim,
            "lvm_pyro_point_estimate": int(not _has_global_draws(src, st, first_trace)),
        },
        extra={"sample_stats": stats} if stats is not None else None,
        api_version=version,
    )
    _check_groups(idata, ll, observed, pp)
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
        present = adapter.group_names(idata)
        if values and (group not in present or set(values) - set(adapter.group(idata, group).data_vars)):
            raise ModelContractError(
                f"ArviZ dropped the {group} group or some of its variables {sorted(values)}: a site "
                "name clashes with a dim name; pass dims=... naming the dims of those sites"
            )


def _has_global_draws(src: Source, st: Structure, trace: poutine.Trace) -> bool:
    """Whether the draws vary the global latent values (else they share one point estimate)."""
    if src.kind == "em":
        return False
    varying = [n for n in st.latent if n not in st.local and not logdensity.point_mass(trace.nodes[n]["fn"])]
    return bool(varying) if src.kind != "mcmc" else bool([n for n in st.latent if n not in st.local])


def _warn_about_meaning(src: Source, st: Structure, trace: poutine.Trace) -> None:
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
        value = to_numpy(site["value"]).copy()
        out[name] = np.broadcast_to(value, (chains, draws) + value.shape).copy()
    return out


def _sample_stats(src: Source, chains: int, draws: int) -> xr.Dataset | None:
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
