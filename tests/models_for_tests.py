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




class RegressionMixture(LatentVariableModel):
    """A mixture of K linear regressions with data (y, u): z_n ~ Cat(w),
    y_n | u_n, z_n ~ N(a_z + b_z u_n, s_z^2). The covariate u is a per-row condition, so
    the model is called as ``model(y, u)``; z is enumerated, the parameters are point
    estimates."""

    input_shape = (1,)

    def __init__(self, k: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weights = PyroParam(torch.full((k,), 1.0 / k), dist.constraints.simplex)
        self.a = PyroParam(torch.randn(k, generator=g))
        self.b = PyroParam(torch.randn(k, generator=g))
        self.s = PyroParam(torch.ones(k), dist.constraints.positive)

    @pyro_method
    def model(self, y, u):
        with self.data_plate(y):
            z = pyro.sample("z", dist.Categorical(self.weights), infer={"enumerate": "parallel"})
            pyro.sample("y", dist.Normal(self.a[z] + self.b[z] * u, self.s[z]), obs=y[:, 0])

    @pyro_method
    def guide(self, y, u):
        pass

    @torch.no_grad()
    def exact_log_joint(self, y, u) -> torch.Tensor:
        """log p(y_n, z_n = k | u_n), shape (N, K)."""
        mean = self.a + self.b * u[:, None]
        return torch.log(self.weights) + dist.Normal(mean, self.s).log_prob(y)


class RegressionMixtureWithMStep(RegressionMixture):
    """The same mixture with its closed-form M-step: weighted least squares per component."""

    @torch.no_grad()
    def m_step(self, y, u, posterior):
        r, y = posterior["z"], y[:, 0]
        nk = r.sum(0)
        design = torch.stack([torch.ones_like(u), u], 1)  # (N, 2)
        gram = torch.einsum("nk,ni,nj->kij", r, design, design)
        rhs = torch.einsum("nk,ni,n->ki", r, design, y)
        coef = torch.linalg.solve(gram, rhs)  # (K, 2)
        resid = y[:, None] - coef[:, 0] - coef[:, 1] * u[:, None]
        self.weights = nk / nk.sum()
        self.a, self.b = coef[:, 0].clone(), coef[:, 1].clone()
        self.s = ((r * resid**2).sum(0) / nk).sqrt()


def regression_mixture_data(n: int = 240, seed: int = 0, dtype=torch.float64):
    """(y (N, 1), u (N,)) from two lines, y = 1 - 1.5 u and y = -1 + 0.8 u, noise 0.3."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, 2, (n,), generator=g)
    u = torch.where(which == 0, -1.0, 1.5) + 0.8 * torch.randn(n, generator=g)
    y = torch.where(which == 0, 1.0 - 1.5 * u, -1.0 + 0.8 * u) + 0.3 * torch.randn(n, generator=g)
    return y[:, None].to(dtype), u.to(dtype)


class BernoulliMixture(LatentVariableModel):
    """A user's mixture of Bernoullis; z is left unmarked (em enumerates it), no m_step."""

    data_support = "binary"

    def __init__(self, k: int, d: int, seed: int = 0) -> None:
        super().__init__()
        self.input_shape = (d,)
        g = torch.Generator().manual_seed(seed)
        self.weights = PyroParam(torch.full((k,), 1.0 / k), dist.constraints.simplex)
        self.probs = PyroParam(0.25 + 0.5 * torch.rand(k, d, generator=g), dist.constraints.unit_interval)

    def model(self, x):
        with self.data_plate(x):
            z = pyro.sample("z", dist.Categorical(self.weights))
            pyro.sample("x", dist.Bernoulli(self.probs[z]).to_event(1), obs=x)

    def guide(self, x):
        pass

    def exact_log_joint(self, x):
        p, w = self.probs.detach(), self.weights.detach()
        return torch.log(w) + x @ torch.log(p).T + (1 - x) @ torch.log1p(-p).T
