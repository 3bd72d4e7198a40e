"""``mcmc``: a NUTS baseline for small models, to check a variational posterior against.

Chains run one after another in this process, each with its own seed and its own random
initialization (Pyro's ``MCMC`` with num_chains > 1 forks one process per chain, and falls
back to sequential sampling anyway when there are fewer spare CPUs than chains). Discrete
sites marked ``infer={"enumerate": "parallel"}`` are summed out inside NUTS, so the
Bayesian Gaussian mixture samples its continuous parameters with z marginalized.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide.initialization import (
    InitMessenger,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_to_sample,
    init_to_uniform,
    init_to_value,
)
from pyro.poutine.util import site_is_subsample

from lvm_pyro.checks import check_seed
from lvm_pyro.data import validate_data, validate_with_conditions
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.models.base import LatentVariableModel

#: ``init_strategy`` names and the Pyro initialization function each one stands for.
INIT_STRATEGIES: dict[str, Callable] = {
    "uniform": init_to_uniform,
    "median": init_to_median,
    "mean": init_to_mean,
    "sample": init_to_sample,
    "feasible": init_to_feasible,
}


@dataclass
class MCMCResult:
    """What ``mcmc`` returns.

    ``samples``: latent site -> tensor (chain, draw, *site shape) (enumerated sites are summed
    out, so they are absent); ``sample_stats``: per draw "diverging", "acceptance_rate"
    (NUTS's mean Metropolis acceptance over the tree) and "step_size", each (chain, draw);
    ``data``: the model's arguments; ``model``: the Pyro model function; ``source``: the
    object passed in. ``lvm_pyro.diagnostics.to_inference_data(result)`` turns it into
    ArviZ InferenceData (R-hat, ESS, LOO).
    """

    samples: dict[str, torch.Tensor]
    sample_stats: dict[str, np.ndarray]
    data: tuple[torch.Tensor, ...]
    model: Callable
    source: object
    num_chains: int
    num_samples: int
    warmup_steps: int
    max_plate_nesting: int | None
    wall_time: float
    config: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: chains, draws, sites and their shapes, divergences, wall time (the draws
        themselves are in ``samples``)."""
        sites = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        return (f"MCMCResult(num_chains={self.num_chains}, num_samples={self.num_samples}, "
                f"warmup_steps={self.warmup_steps}, sites=[{sites}], "
                f"divergences={self.num_divergences}, wall_time={self.wall_time:.1f}s)")

    def get_samples(self, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        """Samples per site, (chain, draw, ...) or with chains concatenated (chain * draw, ...)."""
        if group_by_chain:
            return dict(self.samples)
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    @property
    def num_divergences(self) -> int:
        """Divergent transitions after warm-up, over all chains."""
        return int(self.sample_stats["diverging"].sum())

    def validate(self, x, name: str = "data") -> torch.Tensor:
        """Validate new data the way ``mcmc`` validated the data it sampled with: the model's own
        checks, else the shape of one example of the sampled data."""
        if isinstance(self.source, LatentVariableModel):
            return self.source.validate(x, name)
        return validate_data(x, name=name, event_shape=tuple(self.data[0].shape[1:]))


def _validate(source, x, name: str) -> torch.Tensor:
    if isinstance(source, LatentVariableModel):
        return source.validate(x, name)
    shape = tuple(np.shape(x))
    return validate_data(x, name=name, event_shape=shape[1:] if shape else None)


class _StatsHook:
    """Records per-draw NUTS statistics from the kernel after every sample."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.diverging: list[bool] = []
        self.accept: list[float] = []
        self.step_size: list[float] = []
        self._n_div = 0
        self._mean = 0.0

    def __call__(self, kernel, params, stage, i) -> None:
        if kernel._t <= self.warmup_steps:
            return
        n = kernel._t - self.warmup_steps
        mean = kernel._mean_accept_prob
        # the kernel keeps a running mean over the draws so far: recover this draw's value
        self.accept.append(mean if n == 1 else self._mean + n * (mean - self._mean))
        self._mean = mean
        divergences = len(kernel._divergences)
        self.diverging.append(divergences > self._n_div)
        self._n_div = divergences
        self.step_size.append(float(kernel.step_size))


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@restoring_param_store()
def mcmc(
    model,
    data,
    *,
    num_samples: int = 500,
    warmup_steps: int | None = None,
    num_chains: int = 2,
    seed: int | None = 0,
    progress: bool = False,
    max_plate_nesting: int | None = None,
    jit_compile: bool = False,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    init_strategy: str | Callable | Mapping[str, object] = "uniform",
) -> MCMCResult:
    """Sample p(theta | x) proportional to p(theta) p(x | theta) with NUTS (Hoffman & Gelman, 2014).

    Args:
        model: a Pyro model callable ``model(x, *cond)``, or an object with a ``model``
            method (a LatentVariableModel). Every latent site must be continuous or marked
            for enumeration; its guide (if any) is not used.
        data: x, or a tuple (x, cond, ...) of per-example tensors passed as ``model(x, *cond)``.
        num_samples: draws kept per chain (after warm-up).
        warmup_steps: adaptation steps per chain (default: num_samples).
        num_chains: independent chains, run one after another (seeds seed, seed + 1, ...).
        seed: seeds Pyro's RNG for each chain; None leaves the RNG alone.
        progress: show Pyro's progress bar.
        max_plate_nesting: plates nested in the model (needed with enumerated sites; default:
            the model's attribute, else inferred by Pyro).
        jit_compile: compile the potential energy with the PyTorch JIT.
        target_accept_prob, max_tree_depth: NUTS settings.
        init_strategy: where each chain starts, passed to NUTS: a name, "uniform" (Pyro's
            default: uniform in (-2, 2) in unconstrained space, a different start per chain),
            "median" or "mean" (of 15 prior draws; the same start for every chain up to that
            draw), "sample" (one prior draw), "feasible" (zero in unconstrained space); a Pyro
            initialization function such as ``init_to_median(num_samples=50)`` or
            ``init_to_value(values={...})``; or a dict {site: value} (e.g. an SVI or EM
            estimate), checked against the model's sites, shapes and supports, the other sites
            starting "uniform".

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> result = mcmc(model, torch.randn(20) + 3, num_samples=50, num_chains=1)
        >>> result.samples["mu"].shape
        torch.Size([1, 50])
    """
    num_samples = _check_count(num_samples, "num_samples")
    warmup_steps = num_samples if warmup_steps is None else _check_count(warmup_steps, "warmup_steps", 0)
    num_chains = _check_count(num_chains, "num_chains")
    max_tree_depth = _check_count(max_tree_depth, "max_tree_depth")
    seed = check_seed(seed, span=num_chains)
    numeric = isinstance(target_accept_prob, (int, float)) and not isinstance(target_accept_prob, bool)
    if not numeric or not 0 < target_accept_prob < 1:
        raise ConfigurationError(
            f"target_accept_prob must be a number strictly between 0 and 1 (e.g. 0.8; higher for "
            f"smaller steps), got {target_accept_prob!r}"
        )
    if max_plate_nesting is not None:
        max_plate_nesting = _check_count(max_plate_nesting, "max_plate_nesting", 0)
    if not isinstance(jit_compile, bool):
        raise ConfigurationError(f"jit_compile must be True or False, got {jit_compile!r}")
    fn = getattr(model, "model", model)
    if not callable(fn):
        raise ConfigurationError(
            f"mcmc needs a Pyro model: a callable model(x, *cond) or an object with a model method, "
            f"got {type(model).__name__}"
        )
    if max_plate_nesting is None:
        max_plate_nesting = getattr(model, "max_plate_nesting", None)
    args = validate_with_conditions(data, lambda value, name: _validate(model, value, name))
    module = model if isinstance(model, torch.nn.Module) else None
    if module is not None:  # the model follows the data's device and floating dtype, as in fit
        x0 = args[0]
        module.to(device=x0.device, dtype=x0.dtype if x0.is_floating_point() else None)
    claim_module_params(module)
    latent = _check_latents(fn, args)
    init_fn = _init_strategy(init_strategy, latent)

    started = time.perf_counter()
    chains, stats = [], []
    for chain in range(num_chains):
        if seed is not None:
            pyro.set_rng_seed(seed + chain)
        hook = _StatsHook(warmup_steps)
        kernel = NUTS(fn, max_plate_nesting=max_plate_nesting, jit_compile=jit_compile,
                      ignore_jit_warnings=True, target_accept_prob=target_accept_prob,
                      max_tree_depth=max_tree_depth, init_strategy=init_fn)
        run = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=1,
                   hook_fn=hook, disable_progbar=not progress)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            run.run(*args)
        chains.append({k: v[0] for k, v in run.get_samples(group_by_chain=True).items()})
        stats.append(hook)
    samples = {k: torch.stack([c[k] for c in chains]) for k in chains[0]}
    sample_stats = {
        "diverging": np.array([h.diverging for h in stats], dtype=bool),
        "acceptance_rate": np.array([h.accept for h in stats], dtype=float),
        "step_size": np.array([h.step_size for h in stats], dtype=float),
    }
    return MCMCResult(
        samples=samples,
        sample_stats=sample_stats,
        data=args,
        model=fn,
        source=model,
        num_chains=num_chains,
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        max_plate_nesting=max_plate_nesting,
        wall_time=time.perf_counter() - started,
        config={"seed": seed, "jit_compile": jit_compile, "target_accept_prob": target_accept_prob,
                "max_tree_depth": max_tree_depth,
                "init_strategy": _describe(init_strategy)},
    )


def _check_latents(fn: Callable, args: tuple) -> dict[str, dict]:
    """The latent sites NUTS samples, by name; refuse a model with none, or with a discrete one
    not enumerated."""
    with pyro.validation_enabled(False):  # flat (ImproperUniform) priors cannot be sampled: start uniform
        tr = poutine.trace(InitMessenger(_flat_start(args))(fn)).get_trace(*args)
    latent = [
        s for s in tr.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
        and not s["infer"].get("enumerate")
    ]
    discrete = [s["name"] for s in latent if s["fn"].support.is_discrete]
    if discrete:
        raise ModelContractError(
            f"NUTS samples continuous sites only, but {discrete} are discrete: mark them "
            "infer={'enumerate': 'parallel'} so they are summed out"
        )
    if not latent:
        raise ModelContractError(
            "the model has no continuous latent sample sites for NUTS to sample: add a latent "
            "variable (pyro.sample without obs=) with a prior"
        )
    flat = [s["name"] for s in latent if isinstance(_base(s["fn"]), dist.ImproperUniform)]
    if flat:
        raise ModelContractError(
            f"the sites {flat} have flat improper priors (ImproperUniform), so the posterior NUTS "
            "would sample need not be a distribution (a mixture's empty component can wander to "
            "infinity): give them proper priors (for GaussianMixtureModel, prior=GMMPrior(weight_"
            "concentration=1.0, mean_scale=10.0, precision_df=n_features + 1)), or fit a point "
            "estimate with em"
        )
    return {s["name"]: s for s in latent}


def _flat_start(args: tuple) -> Callable:
    """Pyro's ``init_to_uniform``, and a point of the support for a flat prior (which cannot
    be sampled), in the data's floating dtype and device: to trace the model once."""
    like = next((a for a in args if torch.is_tensor(a) and a.is_floating_point()), torch.zeros(()))

    def init(site):
        if isinstance(_base(site["fn"]), dist.ImproperUniform):
            to_support = biject_to(site["fn"].support)
            shape = to_support.inverse_shape(site["fn"].shape())
            return to_support(like.new_zeros(shape))
        if site["fn"].support.is_discrete:  # refused or summed out later: any draw
            return site["fn"].sample()
        return init_to_uniform(site)

    return init


def _base(fn):
    """A site's distribution without Independent / masking wrappers."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _describe(init_strategy) -> str:
    """A short JSON-friendly name of an init_strategy for ``MCMCResult.config``."""
    if isinstance(init_strategy, str):
        return init_strategy
    if isinstance(init_strategy, Mapping):
        return f"values for {sorted(init_strategy)}"
    fn = getattr(init_strategy, "func", init_strategy)  # functools.partial, as init_to_* return
    return getattr(fn, "__name__", type(fn).__name__)


def _init_strategy(init_strategy, latent: dict[str, dict]) -> Callable:
    """The Pyro initialization function for ``mcmc``'s ``init_strategy`` (see there)."""
    if isinstance(init_strategy, str):
        if init_strategy not in INIT_STRATEGIES:
            raise ConfigurationError(
                f"unknown init_strategy {init_strategy!r}; valid: {', '.join(INIT_STRATEGIES)}, a Pyro "
                "initialization function (pyro.infer.autoguide.init_to_*), or a dict {site: value}"
            )
        return INIT_STRATEGIES[init_strategy]
    if isinstance(init_strategy, Mapping):
        values = {}
        for name, value in init_strategy.items():
            if name not in latent:
                raise ConfigurationError(
                    f"init_strategy sets {name!r}, which is not a latent site NUTS samples; "
                    f"the sites are {sorted(latent)}"
                )
            site = latent[name]
            like = site["value"]
            try:
                value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ConfigurationError(f"init_strategy[{name!r}] is not a number or tensor: {exc}") from exc
            if value.shape != like.shape:
                raise ConfigurationError(
                    f"init_strategy[{name!r}] has shape {tuple(value.shape)}, but site {name!r} has shape "
                    f"{tuple(like.shape)}"
                )
            if not bool(torch.all(site["fn"].support.check(value))):
                raise ConfigurationError(
                    f"init_strategy[{name!r}] is outside the support of site {name!r} "
                    f"({site['fn'].support}): start from a value the prior allows"
                )
            values[name] = value
        return init_to_value(values=values)
    if callable(init_strategy):
        return init_strategy
    raise ConfigurationError(
        f"init_strategy must be a name ({', '.join(INIT_STRATEGIES)}), a Pyro initialization function or a "
        f"dict {{site: value}}, got {type(init_strategy).__name__}"
    )
