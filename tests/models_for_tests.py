"""Small models with closed-form posteriors, shared by the inference tests."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam, pyro_method

from lvm_pyro import LatentVariableModel

PRIOR_LOC, PRIOR_SCALE, NOISE = 0.0, 2.0, 1.0


def normal_normal_model(x):
    """mu ~ N(0, 2^2); x_i | mu ~ N(mu, 1)."""
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(PRIOR_LOC), PRIOR_SCALE))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, NOISE), obs=x)


def normal_normal_guide(x):
    loc = pyro.param("q_loc", x.new_tensor(0.0))
    scale = pyro.param("q_scale", x.new_tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def normal_normal_posterior(x: torch.Tensor) -> tuple[float, float]:
    """Exact posterior mean and standard deviation of mu."""
    precision = 1 / PRIOR_SCALE**2 + len(x) / NOISE**2
    mean = (PRIOR_LOC / PRIOR_SCALE**2 + float(x.sum()) / NOISE**2) / precision
    return mean, precision**-0.5


class LocalGaussian(LatentVariableModel):
    """z_i ~ N(0, 1), x_i | z_i ~ N(w z_i, 1) per feature, with an amortized linear guide.

    For w = 1 the exact posterior is N(x / 2, 1/2) per coordinate and log p(x) = log N(x; 0, 2),
    which the guide family contains: the ELBO's optimum equals log p(x).
    """

    def __init__(self, dim: int = 2, learn_w: bool = False) -> None:
        super().__init__()
        self.input_shape = (dim,)
        self.a = torch.nn.Parameter(torch.zeros(dim))
        self.b = torch.nn.Parameter(torch.zeros(dim))
        self.log_s = torch.nn.Parameter(torch.zeros(dim))
        self.w = PyroParam(torch.ones(dim)) if learn_w else None

    @pyro_method
    def model(self, x):
        w = self.w if self.w is not None else x.new_ones(x.shape[-1])
        with self.data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w * z, 1.0).to_event(1), obs=x)

    @pyro_method
    def guide(self, x):
        with self.data_plate(x):
            pyro.sample("z", dist.Normal(self.a * x + self.b, self.log_s.exp()).to_event(1))


def local_gaussian_log_px(x: torch.Tensor) -> float:
    """Exact mean log p(x) per data point for LocalGaussian with w = 1."""
    return float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(x.double()).sum(-1).mean())


