"""Evaluation of a trained model on (held-out) data: the ELBO and the importance-sampled log p(x).

``elbo`` is the evidence lower bound per data point; ``log_likelihood`` estimates log p(x_i)
itself, per data point, by importance sampling with the guide as the proposal:

    log p(x) ~= log (1/k) sum_j p(x, z_j) / q(z_j | x),  z_j ~ q(z | x),

a lower bound in expectation that rises with k to log p(x) (Burda et al., 2016). Both work
for every model of the library and for a user's own model/guide pair.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pyro
import torch
from torch.utils.data import DataLoader

from lvm_pyro.checks import check_count, check_plate_name, check_seed
from lvm_pyro.data import resolve_device
from lvm_pyro.errors import ConfigurationError
from lvm_pyro.infer.batching import make_batches
from lvm_pyro.infer.logdensity import (
    broadcasts_over_particles,
    check_per_point,
    check_program,
    local_log_weights,
    logmeanexp_chunks,
    pair_failed,
    plate_nesting,
)
from lvm_pyro.infer.objectives import Objective, TrainingScale, make_objective
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
from lvm_pyro.models.base import DATA_PLATE, Program, as_program


@restoring_param_store()
@torch.no_grad()
def elbo(
    model,
    data,
    *,
    guide=None,
    objective: str = "reparam",
    num_particles: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    data_plate: str = DATA_PLATE,
    estimator: str | None = None,
) -> float:
    """ELBO per data point, (1/N) sum_i E_q[log p(x_i, z) - log q(z | x_i)], on ``data``.

    With ``objective="iwae"`` it is the importance-weighted bound with K = num_particles
    (default 5). The guide must match the model (every latent site sampled, no extra site);
    ``data_plate`` names the model's plate over data points. Several particles are drawn in one
    vectorized pass where the model broadcasts over a particle dim, else in sequence.
    The model keeps its device unless ``device`` is given; no parameter is changed.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Normal(torch.zeros(len(x)), 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
        >>> round(elbo(model, torch.zeros(4), guide=guide, num_particles=1), 3)
        -1.266
    """
    if estimator is not None:  # the former name
        warnings.warn(f"elbo(estimator=) is a former spelling; use objective={estimator!r}", FutureWarning,
                      stacklevel=3)
        if objective != "reparam":
            raise ConfigurationError("pass objective= or its former name estimator=, not both")
        objective = estimator
    program = as_program(model, guide)
    claim_module_params(program.module)
    seed = check_seed(seed)
    check_plate_name(data_plate)
    batches = make_batches(data, program, _device(program, device), batch_size=batch_size, shuffle=False)
    first = _cast(next(iter(batches.epoch())), program.module)
    program = check_program(program, first, enumerable_ok=False)
    vectorize = None
    if (num_particles or (5 if objective == "iwae" else 1)) > 1 and objective != "iwae":
        vectorize = broadcasts_over_particles(program, first, program.max_plate_nesting)
    loss = make_objective(objective, num_particles=num_particles, vectorize_particles=vectorize,
                          max_plate_nesting=program.max_plate_nesting)
    if seed is not None:
        pyro.set_rng_seed(seed)
    return -dataset_loss(program, loss, batches, plate=data_plate)


def _device(program: Program, device) -> torch.device:
    """The device given, else the model's (its first parameter's), else the CPU."""
    if device is None and program.module is not None:
        first = next(iter(program.module.parameters()), None)
        return first.device if first is not None else torch.device("cpu")
    return resolve_device(device or "cpu")


def _cast(batch: tuple, module: torch.nn.Module | None) -> tuple:
    """Floating tensors of a batch in the model's floating dtype (evaluation follows the model)."""
    params = module.parameters() if module is not None else ()
    ref = next((p for p in params if p.is_floating_point()), None)
    if ref is None:
        return batch
    return tuple(t.to(ref.dtype) if t.is_floating_point() else t for t in batch)


@torch.no_grad()
def dataset_loss(program: Program, objective: Objective, batches, plate: str = DATA_PLATE) -> float:
    """Negative ELBO (or bound) per data point over every batch, modules in eval mode; sites in
    the plate named ``plate`` count each batch's points once."""
    module = program.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        total = 0.0
        for batch in batches.epoch():
            batch = _cast(batch, module)
            unscaled = TrainingScale(num_data=batch[0].shape[0], plate=plate)
            try:
                total += objective.loss(unscaled(program.model), unscaled(program.guide), *batch)
            except (RuntimeError, ValueError) as exc:  # a guide with parameters per point, on a batch
                if batch[0].shape[0] == batches.num_data:
                    raise
                raise pair_failed(exc, batch) from exc
    finally:
        if module is not None:
            module.train(was_training)
    return total / batches.num_data


@dataclass(frozen=True)
class LogLikelihood:
    """An importance-sampled estimate of log p(x): per example, and its mean with a standard error.

    ``per_example`` (N,): log (1/k) sum_j w_j for each example; ``mean``: their average (nats per
    example; the negative log-likelihood is ``-mean``); ``stderr``: std(per_example) / sqrt(N),
    the spread over the data (the Monte Carlo error of each estimate is usually far smaller);
    ``ess`` (N,): the effective sample size (sum_j w_j)^2 / sum_j w_j^2 of each example's
    weights, between 1 and k (near 1: the guide is a poor proposal and the estimate is loose).
    """

    per_example: torch.Tensor
    mean: float
    stderr: float
    num_samples: int
    ess: torch.Tensor

    @property
    def nll(self) -> float:
        """The negative log-likelihood per example, -mean."""
        return -self.mean

    def __str__(self) -> str:
        return (
            f"log p(x) = {self.mean:.4f} +- {self.stderr:.4f} nats per example "
            f"(N={len(self.per_example)}, k={self.num_samples})"
        )

    def __repr__(self) -> str:
        return (f"LogLikelihood(mean={self.mean:.4f} nats/example, stderr={self.stderr:.4f}, "
                f"N={len(self.per_example)}, k={self.num_samples}, "
                f"median ESS={float(self.ess.median()):.1f})")


@restoring_param_store()
@torch.no_grad()
def log_likelihood(
    model,
    data,
    *,
    guide=None,
    num_samples: int = 1000,
    batch_size: int | None = None,
    max_elements: int = 2**16,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    data_plate: str = DATA_PLATE,
) -> LogLikelihood:
    """Importance-sampled log p(x_i) with the guide as proposal, per example.

    log p(x) ~= logmeanexp_j [log p(x, z_j) - log q(z_j | x)], z_j ~ q(z | x), j = 1..k
    (``num_samples``): the IWAE bound L_k, with ELBO = L_1 <= L_k <= L_{k+1} <= log p(x) in
    expectation and L_k -> log p(x) as k grows. ``data`` is x, or a tuple (x, cond, ...) as
    for ``fit``; for a conditional model this is log p(y | x). Discrete sites the model marks
    for enumeration (``infer={"enumerate": "parallel"}``) are summed out exactly. Global sites
    (outside the plate ``data_plate``) that the guide point-estimates (a ``Delta``, as the
    Gaussian mixture's guide and ``AutoDelta`` do) are conditioned on: the estimate is then
    log p(x_i | theta_hat), without the prior log p(theta_hat) (for the mixture it equals
    ``model.log_prob(x)``). Every other sample site must be inside ``data_plate`` (one
    estimate per data point).

    Memory stays bounded: examples go in batches of ``batch_size`` (default: as many as fit
    in one pass with all k samples, at least one) and samples in chunks of ``chunk_size``
    (default: ``max_elements`` // batch size), so one vectorized pass handles at most about
    ``max_elements`` (sample, example) pairs; chunks are combined with a running logsumexp.
    Modules run in eval mode; no parameter changes.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     with pyro.plate("data", len(x)):
        ...         z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):  # the exact posterior: every weight equals p(x)
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
        >>> ll = log_likelihood(model, torch.zeros(4), guide=guide, num_samples=10)
        >>> round(ll.mean, 4), round(float(dist.Normal(0.0, 2 ** 0.5).log_prob(torch.tensor(0.0))), 4)
        (-1.2655, -1.2655)
    """
    program = as_program(model, guide)
    claim_module_params(program.module)
    for value, label in ((num_samples, "num_samples"), (max_elements, "max_elements"),
                         (chunk_size, "chunk_size"), (batch_size, "batch_size")):
        if value is not None:
            check_count(value, label)
    seed = check_seed(seed)
    check_plate_name(data_plate)
    if batch_size is None and not isinstance(data, DataLoader):
        n = len(data[0] if isinstance(data, tuple) else data)
        batch_size = max(1, min(n, max_elements // num_samples))
    batches = make_batches(data, program, _device(program, device), batch_size=batch_size, shuffle=False)
    chunk = chunk_size or max(1, max_elements // batches.batch_size)

    module = program.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    per_example, ess = [], []
    try:
        first = _cast(next(iter(batches.epoch())), module)
        nesting = plate_nesting(program, first)
        check_per_point(program, first, plate=data_plate, nesting=nesting)
        if seed is not None:  # after the checks, so the estimate depends on the seed alone
            pyro.set_rng_seed(seed)
        for batch in batches.epoch():
            batch = _cast(batch, module)
            def weights(s: int, batch=batch, nesting=nesting) -> torch.Tensor:
                return _log_weights(program, batch, s, nesting, data_plate)

            value, batch_ess = logmeanexp_chunks(weights, num_samples, chunk)
            per_example.append(value.cpu())
            ess.append(batch_ess.cpu())
    finally:
        if module is not None:
            module.train(was_training)
    values = torch.cat(per_example)
    n = values.shape[0]
    stderr = float(values.double().std() / math.sqrt(n)) if n > 1 else float("nan")
    return LogLikelihood(values, float(values.double().mean()), stderr, num_samples, torch.cat(ess))


def _log_weights(program: Program, batch: tuple, num: int, nesting: int, plate: str) -> torch.Tensor:
    """log p(x_i, z_ij | theta) - log q(z_ij | x_i) of shape (num, batch size): the one definition
    in ``lvm_pyro.infer.logdensity`` (enumerated sites summed out, point-estimated globals held)."""
    return local_log_weights(program, batch, num, plate=plate, nesting=nesting)
