"""PSIS k-hat of a guide: how well q(z | x) serves as an importance proposal for p(z | x).

The guide is replayed against the model (:mod:`lvm_pyro.diagnostics.replay`) for each draw,
the importance weights log p(x, z_s) - log q(z_s | x) are collected jointly and per data point,
and the generalized-Pareto shape of their largest values (Yao et al. 2018) comes from the ArviZ
adapter (arviz 0.2x's ``psislw`` or arviz-stats' ``psislw``: the same estimator).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from pyro.infer import MCMC

from lvm_pyro.checks import check_count, check_seed
from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.diagnostics.replay import (
    Replayer,
    Source,
    eval_mode,
    fitted_like,
    prepare_args,
    resolve_plate,
    to_numpy,
)
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.infer import logdensity
from lvm_pyro.infer.em import EMResult
from lvm_pyro.infer.mcmc import MCMCResult
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.infer.svi import FitResult
from lvm_pyro.models.base import as_program

#: k-hat below this: the guide is a good importance proposal for the posterior.
KHAT_GOOD = 0.5
#: k-hat below this (and above KHAT_GOOD): usable, with slower convergence; above: unreliable.
KHAT_OK = 0.7

__all__ = ["KHAT_GOOD", "KHAT_OK", "PSISResult", "psis_khat"]


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
        """ "good", "ok" or "bad" for the joint k-hat."""
        return _label(self.khat)

    def counts(self) -> dict[str, int]:
        """Data points per verdict ("good", "ok", "bad") of the per-point k-hats."""
        ks = self.khat_per_point if self.khat_per_point is not None else np.array([])
        out = {"good": 0, "ok": 0, "bad": 0}
        for k in ks:
            label = _label(float(k))
            out["bad" if label == "undefined" else label] += 1
        return out

    def __repr__(self) -> str:
        text = f"PSISResult(khat={self.khat:.3f} ({self.label}), num_samples={self.num_samples}"
        if self.khat_per_point is not None:
            c, n = self.counts(), len(self.khat_per_point)
            text += (
                f", per point: good {c['good']}/{n}, ok {c['ok']}/{n}, bad {c['bad']}/{n}, "
                f"max {np.nanmax(self.khat_per_point):.3f}"
            )
        return text + ")"

    def summary(self) -> str:
        """A few lines reporting the k-hats against the 0.5 and 0.7 thresholds."""
        lines = [
            f"PSIS k-hat of the guide ({self.num_samples} draws): joint {self.khat:.3f} -> "
            f"{self.label} (good < {KHAT_GOOD}, ok < {KHAT_OK})"
            + (
                " [-inf: the largest weights are tied (exact or discrete guide): bounded, reliable]"
                if self.khat == -math.inf
                else ""
            )
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
                lines.append(
                    f"{tied} point(s) at -inf: their largest weights are tied (bounded weights, "
                    "e.g. a masked point or a discrete guide): reliable"
                )
        return "\n".join(lines)


def _khat(log_w: np.ndarray, api_version: int | None = None) -> np.ndarray:
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
    top = np.sort(log_w, axis=-1)[..., -tail - 1 :]
    tied = top.max(-1) - top.min(-1) <= 10 * np.finfo(np.float32).eps * scale  # the same value, rounded
    k = adapter.pareto_khat(log_w, api_version)
    return np.where(constant | tied, -np.inf, k)


@restoring_param_store()
@torch.no_grad()
def psis_khat(
    model,
    data,
    *,
    guide: Callable | None = None,
    num_samples: int = 1000,
    seed: int | None = None,
    data_plate: str | None = None,
    arviz_api: int | None = None,
) -> PSISResult:
    """Pareto-smoothed importance-sampling k-hat of a guide ("Yes, but did it work?", Yao et al. 2018).

    k-hat is the fitted generalized-Pareto shape of the largest weights w_s = p(x, z_s) / q(z_s | x),
    z_s ~ q; enumerated discrete sites are summed out of p. k < 0.5: q is a good proposal.

    ``model`` is a trained model with its guide (a LatentVariableModel, a (model, guide) pair,
    or a callable with ``guide=``) or a ``fit`` result. For guides with local latents (inside
    the data plate, e.g. an amortized encoder) each data point also gets its own k-hat.
    ``data_plate`` names that plate (default: the one ``fit`` used, else "data").
    ``arviz_api`` picks the ArviZ that fits the Pareto tail (0: arviz 0.2x, 1: arviz-stats;
    default :func:`lvm_pyro.diagnostics.arviz.api`): both implement the same estimator.

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
    version = adapter.api(arviz_api)
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
    claim_module_params(program.module)
    args = prepare_args(program.validate, data, fitted_like(program, fitted))
    if seed is not None:
        pyro.set_rng_seed(seed)
    plate = resolve_plate(data_plate, model)
    src = Source(
        "guide",
        program.model,
        args,
        1,
        num_samples,
        guide=program.guide,
        max_plate_nesting=program.max_plate_nesting,
        module=program.module,
        data_plate=plate,
    )
    replayer = Replayer(src)
    joint, per_point = [], []
    has_local = False
    with eval_mode(program.module):
        for _ in range(num_samples):
            traces = replayer.traces(replayer.latent(0, 0))
            if not joint and all(
                logdensity.point_mass(site["fn"]) for site in logdensity.sample_sites(traces.guide)
            ):
                raise ConfigurationError(
                    "psis_khat diagnoses a guide as an importance proposal, but this guide samples "
                    "nothing (point estimates only, discrete sites enumerated in the model), so every "
                    "weight is the same and there is nothing to diagnose: use log_likelihood / em's "
                    "log-likelihood for such a model, or give the guide distributions to sample"
                )
            w = logdensity.point_log_weights(traces)
            has_local = has_local or logdensity.has_local_latents(traces)
            joint.append(float(w.global_ + w.local.sum()))
            per_point.append(to_numpy(w.local))
    log_w = np.asarray(joint)
    if not np.all(np.isfinite(log_w)):
        raise ModelContractError(
            "some importance weights log p(x, z) - log q(z | x) are not finite: the guide puts mass "
            "where the model has none (check supports and constraints of the guide's distributions)"
        )
    khat = float(_khat(log_w[None], version)[0])
    khat_points = _khat(np.stack(per_point, axis=1), version) if has_local else None
    return PSISResult(khat=khat, khat_per_point=khat_points, num_samples=num_samples, log_weights=log_w)
