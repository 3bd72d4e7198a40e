"""Evaluation of a trained model on (held-out) data."""

from __future__ import annotations

import pyro
import torch

from lvm_pyro.data import resolve_device
from lvm_pyro.infer.batching import make_batches
from lvm_pyro.infer.objectives import Objective, TrainingScale, make_objective
from lvm_pyro.models.base import Program, as_program


@torch.no_grad()
def elbo(
    model,
    data,
    *,
    guide=None,
    estimator: str = "reparam",
    num_particles: int = 1,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
) -> float:
    """ELBO per data point, (1/N) sum_i E_q[log p(x_i, z) - log q(z | x_i)], on ``data``.

    With ``estimator="iwae"`` it is the importance-weighted bound with K = num_particles.
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
    program = as_program(model, guide)
    if seed is not None:
        pyro.set_rng_seed(seed)
    if device is None and program.module is not None:
        first = next(iter(program.module.parameters()), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device or "cpu")
    batches = make_batches(data, program, dev, batch_size=batch_size, shuffle=False)
    objective = make_objective(
        estimator, num_particles=num_particles, max_plate_nesting=program.max_plate_nesting
    )
    return -dataset_loss(program, objective, batches)


@torch.no_grad()
def dataset_loss(program: Program, objective: Objective, batches) -> float:
    """Negative ELBO (or bound) per data point over every batch, modules in eval mode."""
    module = program.module
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        total = 0.0
        for batch in batches.epoch():
            unscaled = TrainingScale(num_data=batch[0].shape[0])
            total += objective.loss(unscaled(program.model), unscaled(program.guide), *batch)
    finally:
        if module is not None:
            module.train(was_training)
    return total / batches.num_data
