"""Variance of the ELBO gradient estimators, measured at fixed parameters.

The gradient of the ELBO with respect to the guide's parameters phi can be estimated
pathwise (reparameterization: z = g(eps, phi), grad E_q[f(z)] = E_eps[grad f(g(eps, phi))])
or by the score function (REINFORCE: grad E_q[f(z)] = E_q[f(z) grad log q(z)], less the
baseline b: E_q[(f(z) - b) grad log q(z)]). Both are unbiased; their variances differ by
orders of magnitude, which is why VAEs are trained with the first. :func:`gradient_variance`
draws the estimate many times without an optimizer step and reports its variance per
parameter tensor.

A decaying-average baseline is measured as it works in training: Pyro keeps one average per
position in the batch, and ``fit`` shuffles the data, so each position's average tracks the
cost of a typical data point. Measured on the same batch in the same order it would learn
each point's own cost, and report a variance training never sees; so each draw here sees the
data in a fresh random order (the estimate itself, a sum over the data, does not depend on it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro import poutine

from lvm_pyro.checks import check_seed
from lvm_pyro.data import validate_with_conditions
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.infer.logdensity import check_program
from lvm_pyro.infer.objectives import SCORE_BASELINES, Objective, make_objective
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.infer.svi import FitResult
from lvm_pyro.models.base import Program, as_program

#: Estimators whose gradient variance can be measured (those with a per-draw surrogate loss).
VARIANCE_ESTIMATORS = ("reparam", "meanfield", "score", "iwae")

__all__ = ["VARIANCE_ESTIMATORS", "GradientVariance", "gradient_variance"]


@dataclass(frozen=True)
class GradientVariance:
    """The spread of an ELBO gradient estimator at fixed parameters, over ``num_draws`` draws.

    For each parameter tensor theta with draws g_1..g_S of d(-ELBO)/d theta:
    ``per_parameter[name]`` = mean over the tensor's elements of Var_s[g_s] (unbiased);
    ``total`` = sum over all elements of all tensors of Var_s[g_s] (the trace of the
    gradient's covariance); ``mean_sq_norm`` = |E_s[g_s]|^2, the squared norm of the mean
    gradient, for a signal-to-noise reading (total / mean_sq_norm).
    """

    objective: str
    baseline: str | None
    num_draws: int
    per_parameter: dict[str, float]
    total: float
    mean_sq_norm: float
    sizes: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def estimator(self) -> str:
        """The former name of ``objective``."""
        return self.objective

    @property
    def label(self) -> str:
        return self.objective if self.baseline is None else f"{self.objective} (baseline: {self.baseline})"

    def ratio(self, other: GradientVariance, parameters: list[str] | None = None) -> float:
        """Var(self) / Var(other): summed over all elements, or over the named parameters."""
        if parameters is None:
            return self.total / other.total
        mine = sum(self.per_parameter[p] * self.sizes[p] for p in parameters)
        theirs = sum(other.per_parameter[p] * other.sizes[p] for p in parameters)
        return mine / theirs

    def summary(self) -> str:
        """One line per parameter tensor with its mean per-element variance, and the total."""
        width = max(len(n) for n in self.per_parameter)
        lines = [f"gradient variance of {self.label} over {self.num_draws} draws:"]
        lines += [f"  {n:<{width}}  {v:.4g}" for n, v in self.per_parameter.items()]
        lines.append(f"  {'total':<{width}}  {self.total:.4g} (|mean gradient|^2 {self.mean_sq_norm:.4g})")
        return "\n".join(lines)


def _program(model, guide) -> Program:
    if isinstance(model, FitResult):
        if guide is not None:
            raise ConfigurationError("a fit result carries its guide: do not pass guide= as well")
        return model.program
    program = as_program(model, guide)
    claim_module_params(program.module)
    return program


def _args(program: Program, data) -> tuple[torch.Tensor, ...]:
    x, *conds = validate_with_conditions(data, program.validate)
    ref = next(iter(program.module.parameters()), None) if program.module is not None else None
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype)
        conds = tuple(c.to(ref.device) for c in conds)
    return (x, *conds)


def _parameters(program: Program, args: tuple) -> dict[str, torch.Tensor]:
    """The trainable leaf tensors the model and guide use, by name (module names first)."""
    named: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    if program.module is not None:
        for name, p in program.module.named_parameters():
            if p.requires_grad:
                named[name] = p
                seen.add(id(p))
    with poutine.trace(param_only=True) as tape:
        guide_trace = poutine.trace(program.guide).get_trace(*args)
        poutine.replay(program.model, trace=guide_trace)(*args)
    latent = [
        s for s in guide_trace.nodes.values()
        if s["type"] == "sample" and not s["is_observed"] and not s["infer"].get("is_auxiliary")
    ]
    if not latent:
        raise ModelContractError(
            "the guide samples no latent sites, so there is no ELBO gradient estimator to measure: "
            "add the model's latent variables to the guide"
        )
    for name, site in tape.trace.nodes.items():
        value = site["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        if isinstance(leaf, torch.Tensor) and leaf.is_leaf and leaf.requires_grad and id(leaf) not in seen:
            named[name] = leaf
            seen.add(id(leaf))
    if not named:
        raise ModelContractError(
            "the model and guide have no trainable parameters: declare them with pyro.param, "
            "pyro.module, or as parameters of a PyroModule"
        )
    return named


def _backward(objective: Objective, program: Program, args: tuple) -> None:
    """One gradient estimate into ``.grad``.

    Pyro's Trace_ELBO.loss_and_grads skips the backward pass when no ``pyro.param`` site is
    traced, which is the case for PyroModules with module-local parameters; the surrogate
    loss is differentiated directly instead (TraceGraph_ELBO, for "score", always backpropagates).
    """
    if objective.name == "score":
        objective.loss_and_grads(program.model, program.guide, *args)
    else:
        objective.differentiable_loss(program.model, program.guide, *args).backward()


def _shuffled(args: tuple, seed: int | None) -> Callable[[], tuple]:
    """A function returning the rows of ``args`` in a fresh random order at each call, from a
    private generator (the draws of z stay those of Pyro's RNG)."""
    generator = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))

    def batch() -> tuple:
        order = torch.randperm(args[0].shape[0], generator=generator).to(args[0].device)
        return tuple(a[order] for a in args)

    return batch


@restoring_param_store()
def gradient_variance(
    model,
    data,
    *,
    guide: Callable | None = None,
    objective: str = "reparam",
    num_draws: int = 100,
    num_particles: int = 1,
    score_baseline: str = "none",
    warmup_draws: int = 50,
    seed: int | None = None,
    estimator: str | None = None,
) -> GradientVariance:
    """Var[g] of the ELBO gradient estimate g at the current parameters, per parameter tensor.

    g_s = grad of the objective's surrogate of -ELBO(x) = -E_q[log p(x, z) - log q(z | x)]
    summed over the data, for s = 1..num_draws fresh draws of z; no parameter is changed.

    Args:
        model: a LatentVariableModel, a (model, guide) pair, a model with ``guide=``, or a
            ``fit`` result (its trained parameters).
        data: x or (x, cond, ...), used whole as one batch.
        objective: the gradient estimator, named as in ``fit(objective=)``: "reparam",
            "meanfield", "score" (every site forced to score-function gradients) or "iwae".
        num_particles: samples of z per gradient estimate.
        score_baseline: for "score": "none" (plain REINFORCE), "decaying" (a moving average
            of the downstream cost) or "neural" (a network b(x) regressing the cost).
        warmup_draws: draws before measuring, which let a baseline reach its steady state:
            the decaying average starts at 0 (no baseline) and needs about 1 / (1 - 0.9) =
            10 draws to track the cost; the neural baseline is trained for these draws
            (Adam, lr 1e-2) with the model's parameters held fixed. Ignored without a baseline.
        seed: seeds Pyro's RNG first, and the data orders of the decaying baseline.
        estimator: the former name of ``objective`` (a FutureWarning).

    With ``score_baseline="decaying"`` every draw (warm-up and measured) permutes the data's
    rows (x and its conditions together), so the per-position averages see the mix of points
    a shuffled training run shows them, not one point each: the variance measured is the one
    training has (see the module docstring). The neural baseline b(x) is a function of each
    point, so the order does not matter to it.

    Baseline state created here (Pyro's ``__baseline_avg_*`` params) is removed afterwards.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("mu", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 0.5))
        >>> x = torch.randn(20)
        >>> rep = gradient_variance(model, x, guide=guide, objective="reparam", num_draws=200, seed=0)
        >>> sf = gradient_variance(model, x, guide=guide, objective="score", num_draws=200, seed=0)
        >>> sf.ratio(rep) > 1
        True
    """
    if estimator is not None:  # the former name
        warnings.warn(f"gradient_variance(estimator=) is a former spelling; use objective={estimator!r}",
                      FutureWarning, stacklevel=3)
        if objective != "reparam":
            raise ConfigurationError("pass objective= or its former name estimator=, not both")
        objective = estimator
    if objective not in VARIANCE_ESTIMATORS:
        raise ConfigurationError(
            f"unknown objective {objective!r} for gradient_variance; valid: {', '.join(VARIANCE_ESTIMATORS)}"
        )
    if score_baseline not in SCORE_BASELINES:
        raise ConfigurationError(
            f"unknown score_baseline {score_baseline!r}; valid: {', '.join(SCORE_BASELINES)}"
        )
    for value, name, minimum in ((num_draws, "num_draws", 2), (num_particles, "num_particles", 1),
                                 (warmup_draws, "warmup_draws", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    seed = check_seed(seed)
    program = _program(model, guide)
    args = _args(program, data)
    program = check_program(program, args)
    if seed is not None:
        pyro.set_rng_seed(seed)
    params = _parameters(program, args)
    loss = make_objective(
        objective,
        num_particles=num_particles,
        max_plate_nesting=program.max_plate_nesting,
        vectorize_particles=False if score_baseline == "neural" else None,
        score_baseline=score_baseline,
        baseline_features=int(args[0][0].numel()),
    )
    for extra in loss.extra_modules:
        extra.to(device=args[0].device, dtype=args[0].dtype)
    baseline = score_baseline if objective == "score" else None
    batch = _shuffled(args, seed) if baseline == "decaying" else lambda: args
    store = pyro.get_param_store()
    before = set(store.keys())
    leaves = list(params.values())
    saved = [p.grad for p in leaves]
    try:
        if baseline in ("decaying", "neural"):
            extra = [p for m in loss.extra_modules for p in m.parameters()]
            opt = torch.optim.Adam(extra, lr=1e-2) if extra else None
            for _ in range(warmup_draws):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                _backward(loss, program, batch())
                if opt is not None:
                    opt.step()
        draws = {name: [] for name in params}
        for _ in range(num_draws):
            for p in leaves:
                p.grad = None
            _backward(loss, program, batch())
            for name, p in params.items():
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                draws[name].append(g.detach().reshape(-1).double().cpu())
    finally:
        for p, g in zip(leaves, saved, strict=True):
            p.grad = g
        for key in set(store.keys()) - before:
            del store[key]
    per_parameter, sizes = {}, {}
    total, mean_sq = 0.0, 0.0
    for name, gs in draws.items():
        g = torch.stack(gs)
        var = g.var(0, unbiased=True)
        per_parameter[name] = float(var.mean())
        sizes[name] = int(var.numel())
        total += float(var.sum())
        mean_sq += float(g.mean(0).pow(2).sum())
    if not np.isfinite(total):
        raise ModelContractError(
            "some gradient draws are not finite at these parameters: check the model's scales, or "
            "measure at parameters where training runs"
        )
    return GradientVariance(
        objective=objective,
        baseline=baseline,
        num_draws=num_draws,
        per_parameter=per_parameter,
        total=total,
        mean_sq_norm=mean_sq,
        sizes=sizes,
    )
