"""The model replayed on each posterior draw: the shared machinery of the export and of PSIS.

A fitted result (``fit``, ``em``, ``mcmc``, a ``pyro.infer.MCMC`` run, or a model with its
guide) becomes a :class:`Source`: the model, the data, and where the latent draws come from
(the guide, a stored sample, or the point estimate). :class:`Replayer` runs the model against
one draw and returns what the diagnostics need: the site structure, the pointwise
log-likelihood (through ``lvm_pyro.infer.logdensity``), the enumerated sites drawn from their
posterior, and a posterior predictive trace. Nothing here knows ArviZ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine
from pyro.infer import MCMC, config_enumerate, infer_discrete

from lvm_pyro.data import validate_with_conditions
from lvm_pyro.errors import ConfigurationError, DataError, LVMError, ModelContractError
from lvm_pyro.infer import logdensity
from lvm_pyro.infer.em import EMResult
from lvm_pyro.infer.mcmc import MCMCResult
from lvm_pyro.infer.svi import FitResult
from lvm_pyro.models.base import DATA_PLATE, LatentVariableModel, Program, as_program, empty_guide

__all__ = [
    "Replayer",
    "Source",
    "Structure",
    "eval_mode",
    "fitted_like",
    "prepare_args",
    "resolve_plate",
    "source_of",
    "structure",
    "to_numpy",
]


@dataclass
class Source:
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
            tr.add_node(name, name=name, type="sample", is_observed=False, infer={}, value=value[chain, draw])
        return tr


@contextmanager
def eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
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
class Structure:
    """The model's sites as seen on the first draw."""

    latent: list[str]
    local: set[str]
    observed: list[str]
    enumerated: list[str]
    max_plate_nesting: int
    n_components: int | None
    plate: str = DATA_PLATE


def structure(trace: poutine.Trace, max_plate_nesting: int | None, plate: str) -> Structure:
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
    nesting = max((-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized), default=0)
    mpn = max(nesting, max_plate_nesting or 0)
    sizes = {int(trace.nodes[n]["fn"].enumerate_support(expand=False).shape[0]) for n in enumerated}
    return Structure(
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


class Replayer:
    """Runs the model against each draw: structure, latents, log-likelihood, predictive.

    The log-likelihood goes through ``lvm_pyro.infer.logdensity``: for each draw of the global
    sites, log p(x_i | theta) per data point, with enumerated sites summed out and the guide's
    local latent sites integrated out by importance sampling (``local_samples`` particles).
    """

    def __init__(self, source: Source, local_samples: int = 1) -> None:
        self.source = source
        self.n = int(source.args[0].shape[0])
        self.st: Structure | None = None
        self.local_samples = local_samples
        self.program = Program(
            model=source.model,
            guide=source.guide or _no_guide,
            module=source.module,
            max_plate_nesting=source.max_plate_nesting,
        )
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

    def traces(
        self, latent: poutine.Trace, particles: int | None = None, fixed: dict | None = None
    ) -> logdensity.WeightedTraces:
        src = self.source
        if self.st is None:
            first = self._run(
                lambda *a: poutine.trace(poutine.replay(config_enumerate(src.model), trace=latent)).get_trace(
                    *a
                ),
                *src.args,
            )
            self.st = structure(first, src.max_plate_nesting, src.data_plate)
        stored = src.guide is None
        return self._run(
            lambda *a: logdensity.trace_pair(
                self.program,
                a,
                plate=src.data_plate,
                nesting=self.st.max_plate_nesting,
                particles=particles,
                fixed=fixed,
                guide_trace=latent if particles is None else None,
                check=not stored,
            ),
            *src.args,
        )

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
            return self._run(
                lambda *a: logdensity.local_log_weights(
                    self.program,
                    a,
                    k,
                    plate=st.plate,
                    nesting=st.max_plate_nesting,
                    fixed=fixed,
                    by_site=True,
                ),
                *self.source.args,
            )

        chunk = max(1, 2**16 // max(self.n, 1))
        value, _ = logdensity.logmeanexp_chunks(weights, self.local_samples, chunk)
        out = logdensity.sequential_conditionals({name: value[:, 1 + i] for i, name in enumerate(names)})
        if not fixed:
            self._shared = out
        return out

    def enumerated_draw(self, latent: poutine.Trace) -> dict[str, torch.Tensor]:
        """The enumerated sites drawn from their exact posterior p(d_i | x_i, draw) (infer_discrete)."""
        src = self.source
        fn = infer_discrete(
            poutine.replay(config_enumerate(src.model), trace=latent),
            first_available_dim=-1 - self.st.max_plate_nesting,
            temperature=1,
        )
        tr = self._run(lambda *a: poutine.trace(fn).get_trace(*a), *src.args)
        return {name: tr.nodes[name]["value"] for name in self.st.enumerated}

    def predictive(self, latent: poutine.Trace) -> poutine.Trace:
        """The model with its observations removed, replayed against the draw: x_rep ~ p(x | draw)."""
        fn = poutine.uncondition(poutine.replay(self.source.model, trace=latent))
        return self._run(lambda *a: poutine.trace(fn).get_trace(*a), *self.source.args)


# ------------------------------------------------------------------------------------------
# Results -> sources
# ------------------------------------------------------------------------------------------


def prepare_args(validate: Callable, data, like: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
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


def fitted_like(program: Program, result: FitResult | None) -> torch.Tensor | None:
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


def resolve_plate(data_plate: str | None, result) -> str:
    """The data plate's name: given, else the one ``fit`` trained with, else "data"."""
    if data_plate is not None:
        if not isinstance(data_plate, str) or not data_plate:
            raise ConfigurationError(f"data_plate must be a plate name, got {data_plate!r}")
        return data_plate
    if isinstance(result, FitResult):
        return str(result.config.get("data_plate", DATA_PLATE))
    return DATA_PLATE


def source_of(result, data, num_samples: int) -> Source:
    if isinstance(result, FitResult):
        program = result.program
        args = prepare_args(program.validate, data, fitted_like(program, result))
        losses = {"loss": ("step", result.losses)}
        if result.val_elbo:
            losses["val_elbo"] = ("epoch", result.val_elbo)
        return Source(
            "svi",
            program.model,
            args,
            1,
            num_samples,
            guide=program.guide,
            module=program.module,
            max_plate_nesting=program.max_plate_nesting,
            site_dims=_site_dims_of(program.source),
            trace_stats=losses,
        )
    if isinstance(result, MCMCResult):
        args = result.data if data is None else prepare_args(result.validate, data, result.data[0])
        chains, draws = next(iter(result.samples.values())).shape[:2]
        module = result.source if isinstance(result.source, torch.nn.Module) else None
        return Source(
            "mcmc",
            result.model,
            args,
            chains,
            draws,
            samples=result.samples,
            module=module,
            max_plate_nesting=result.max_plate_nesting,
            site_dims=_site_dims_of(result.source),
            sample_stats=result.sample_stats,
        )
    if isinstance(result, MCMC):
        samples = result.get_samples(group_by_chain=True)
        args = tuple(result._args) if data is None else (data if isinstance(data, tuple) else (data,))
        chains, draws = next(iter(samples.values())).shape[:2]
        diverging = np.zeros((chains, draws), dtype=bool)
        for i, (_, idx) in enumerate(sorted(result.diagnostics()["divergences"].items())):
            diverging[i, idx] = True
        kernel = result.kernel
        return Source(
            "mcmc",
            kernel.model,
            args,
            chains,
            draws,
            samples=samples,
            max_plate_nesting=kernel._max_plate_nesting,
            sample_stats={"diverging": diverging},
        )
    if isinstance(result, EMResult):
        model = result.model
        bare = callable(model) and not hasattr(model, "guide")  # em ran it with no guide
        program = as_program(model, empty_guide) if bare else as_program(model)
        args = prepare_args(program.validate, data, fitted_like(program, None))
        return Source(
            "em",
            program.model,
            args,
            1,
            1,
            guide=program.guide,
            module=program.module,
            max_plate_nesting=program.max_plate_nesting,
            site_dims=_site_dims_of(result.model),
            trace_stats={"log_likelihood": ("iteration", list(result.log_likelihood))},
        )
    if isinstance(result, (LatentVariableModel, tuple, Program)) or (
        hasattr(result, "model") and hasattr(result, "guide")
    ):
        program = as_program(result)
        args = prepare_args(program.validate, data, fitted_like(program, None))
        return Source(
            "guide",
            program.model,
            args,
            1,
            num_samples,
            guide=program.guide,
            module=program.module,
            max_plate_nesting=program.max_plate_nesting,
            site_dims=_site_dims_of(program.source),
        )
    raise _wrong_kind(result)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
