"""User models written the way Pyro's docs and examples write them, each with its exact answer.

Every model here is a plain Pyro program as a user would write it (site names such as ``obs``,
plates named ``sequences``, ``pyro.markov``, bound methods of an ``nn.Module``, autoguides,
``pyro.param`` with constraints), never a subclass of the library's base class. Each comes as a
:class:`Setup` built for one dtype: the pair to hand to the wrappers, the data, a learnable guide,
an exact-posterior guide where one exists, and the exact log-likelihood (per data point
log p(x_i | theta), or the whole data set's log p(x) for models with global latents), computed
independently of Pyro's inference: closed forms, a hand-written forward algorithm, brute-force
enumeration, numerical quadrature.

Tensors follow the data's dtype (``x.new_tensor``); modules are built in the default dtype
(float32), as users build them, and the wrappers must move them to the data's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn


@dataclass
class Setup:
    """One user model, built for one dtype.

    ``pair``: (model, guide) as the user passes it; ``data``: x or (x, cond, ...);
    ``exact_point()``: exact log p(x_i | theta) per data-plate element (N,) at the current
    parameters (None when the model has global latents); ``exact_total()``: exact log p(x) of the
    whole data set (global latents integrated out), None when not available; ``exact_pair``: a
    (model, guide) pair whose guide is the exact posterior (ELBO == log p(x)); ``estimators``:
    the ``fit`` estimators the suite runs (every one that applies; "iwae" is refused for global
    latents, tested apart; "score" runs where its variance lets a short run improve: the
    discrete-latent switch, the VAE, one global and one grouped model; "meanfield" is left out for
    the joint autoguides, AutoLowRankMultivariateNormal and AutoDiagonalNormal, where it has no
    analytic KL and is "reparam" again); ``discrete``: em
    applies; ``observed``: observed site names.
    """

    name: str
    pair: tuple
    data: object
    observed: tuple[str, ...]
    estimators: tuple[str, ...]
    data_plate: str = "data"
    exact_point: Callable[[], torch.Tensor] | None = None
    exact_total: Callable[[], float] | None = None
    exact_pair: tuple | None = None
    discrete: bool = False
    global_latents: tuple[str, ...] = ()
    sampled_latents: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        x = self.data[0] if isinstance(self.data, tuple) else self.data
        return int(x.shape[0])


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _mvn_logpdf(y: torch.Tensor, cov: torch.Tensor) -> float:
    """log N(y; 0, cov) of one vector, in float64."""
    y, cov = y.double(), cov.double()
    return float(dist.MultivariateNormal(torch.zeros_like(y), covariance_matrix=cov).log_prob(y))


# ------------------------------------------------------------------------------------------
# 1. Pyro's GMM tutorial: global weights / scale / locs, AutoDelta, config_enumerate, "obs"
# ------------------------------------------------------------------------------------------

GMM_K = 2


@config_enumerate
def gmm_model(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * data.new_ones(GMM_K)))
    scale = pyro.sample("scale", dist.LogNormal(data.new_tensor(0.0), 2.0))
    with pyro.plate("components", GMM_K):
        locs = pyro.sample("locs", dist.Normal(data.new_tensor(0.0), 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_tutorial(dtype: torch.dtype) -> Setup:
    g = _gen(1)
    data = torch.cat([torch.randn(12, generator=g) * 0.8 - 2.0, torch.randn(8, generator=g) * 0.8 + 2.5]).to(
        dtype
    )
    init = {
        "weights": data.new_tensor([0.5, 0.5]),
        "scale": data.new_tensor(1.5),
        "locs": data.new_tensor([-1.0, 1.0]),
    }
    guide = AutoDelta(
        poutine.block(gmm_model, expose=["weights", "scale", "locs"]), init_loc_fn=init_to_value(values=init)
    )

    def exact_point():
        med = guide.median(data)
        w, s, locs = med["weights"].double(), med["scale"].double(), med["locs"].double()
        terms = w.log() + dist.Normal(locs, s).log_prob(data.double()[:, None])
        return terms.logsumexp(-1)

    return Setup(
        "gmm_tutorial",
        (gmm_model, guide),
        data,
        ("obs",),
        ("enum",),
        exact_point=exact_point,
        discrete=True,
        global_latents=("weights", "scale", "locs"),
    )


# ------------------------------------------------------------------------------------------
# 2-3. HMMs written like Pyro's examples/hmm.py: pyro.markov, plate "sequences" at dim -2,
# parameters as pyro.param with constraints, an empty guide; exact by a forward algorithm
# ------------------------------------------------------------------------------------------

HMM_STATES, HMM_SYMBOLS = 2, 3


def hmm_categorical_model(sequences):
    num_sequences, length = sequences.shape
    init = pyro.param("init", sequences.new_tensor([0.7, 0.3]), constraint=constraints.simplex)
    trans = pyro.param(
        "trans", sequences.new_tensor([[0.8, 0.2], [0.3, 0.7]]), constraint=constraints.simplex
    )
    emit = pyro.param(
        "emit", sequences.new_tensor([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]]), constraint=constraints.simplex
    )
    with pyro.plate("sequences", num_sequences, dim=-2):
        x = None
        for t in pyro.markov(range(length)):
            probs = init if x is None else trans[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Categorical(emit[x]), obs=sequences[:, t : t + 1])


def hmm_gaussian_model(sequences):
    num_sequences, length = sequences.shape
    init = pyro.param("init", sequences.new_tensor([0.6, 0.4]), constraint=constraints.simplex)
    trans = pyro.param(
        "trans", sequences.new_tensor([[0.75, 0.25], [0.35, 0.65]]), constraint=constraints.simplex
    )
    locs = pyro.param("locs", sequences.new_tensor([-0.5, 0.5]))
    scales = pyro.param("scales", sequences.new_tensor([1.0, 1.2]), constraint=constraints.positive)
    with pyro.plate("sequences", num_sequences, dim=-2):
        x = None
        for t in pyro.markov(range(length)):
            probs = init if x is None else trans[x]
            x = pyro.sample(f"x_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], scales[x]), obs=sequences[:, t : t + 1])


def empty_guide(sequences):
    pass


def forward_algorithm(
    log_init: torch.Tensor, log_trans: torch.Tensor, log_emit: torch.Tensor
) -> torch.Tensor:
    """log p(y_1..T) per sequence; log_emit[n, t, k] = log p(y_nt | x_t = k). Written by hand."""
    n, length, k = log_emit.shape
    out = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        alpha = [float(log_init[s]) + float(log_emit[i, 0, s]) for s in range(k)]
        for t in range(1, length):
            alpha = [
                math.log(sum(math.exp(alpha[r] + float(log_trans[r, s])) for r in range(k)))
                + float(log_emit[i, t, s])
                for s in range(k)
            ]
        top = max(alpha)
        out[i] = top + math.log(sum(math.exp(a - top) for a in alpha))
    return out


def _hmm_exact(kind: str, sequences: torch.Tensor) -> Callable[[], torch.Tensor]:
    def exact_point():
        init = pyro.param("init").detach().double()
        trans = pyro.param("trans").detach().double()
        y = sequences.double()
        if kind == "categorical":
            log_emit = pyro.param("emit").detach().double().log()[:, y.long()].permute(1, 2, 0)
        else:
            locs, scales = pyro.param("locs").detach().double(), pyro.param("scales").detach().double()
            log_emit = dist.Normal(locs, scales).log_prob(y[..., None])
        return forward_algorithm(init.log(), trans.log(), log_emit)

    return exact_point


def hmm_categorical(dtype: torch.dtype) -> Setup:
    g = _gen(2)
    sequences = torch.randint(0, HMM_SYMBOLS, (5, 7), generator=g).to(dtype)
    return Setup(
        "hmm_categorical",
        (hmm_categorical_model, empty_guide),
        sequences,
        tuple(f"y_{t}" for t in range(7)),
        ("enum",),
        data_plate="sequences",
        exact_point=_hmm_exact("categorical", sequences),
        discrete=True,
        sampled_latents=False,
    )


def hmm_gaussian(dtype: torch.dtype) -> Setup:
    g = _gen(3)
    sequences = (torch.randn(5, 6, generator=g) + torch.randint(0, 2, (5, 6), generator=g) * 2.0 - 1.0).to(
        dtype
    )
    return Setup(
        "hmm_gaussian",
        (hmm_gaussian_model, empty_guide),
        sequences,
        tuple(f"y_{t}" for t in range(6)),
        ("enum",),
        data_plate="sequences",
        exact_point=_hmm_exact("gaussian", sequences),
        discrete=True,
        sampled_latents=False,
    )


# ------------------------------------------------------------------------------------------
# 4. Pyro's VAE example: an nn.Module with model/guide methods and pyro.module, passed as the
# pair of bound methods; observed site "obs"; exact log p(x_i) by quadrature over a 1-d z
# ------------------------------------------------------------------------------------------

VAE_PIXELS, VAE_HIDDEN = 6, 5


class Encoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(VAE_PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        hidden = self.softplus(self.fc1(x.reshape(-1, VAE_PIXELS)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, VAE_PIXELS)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class VAE(nn.Module):
    def __init__(self, z_dim: int = 1, hidden_dim: int = VAE_HIDDEN) -> None:
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, VAE_PIXELS)
            )

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


@torch.no_grad()
def vae_quadrature(vae: VAE, x: torch.Tensor, points: int = 4001, bound: float = 9.0) -> torch.Tensor:
    """log p(x_i) = log int N(z; 0, 1) prod_d Bernoulli(x_id | dec(z)_d) dz, trapezoid rule on a grid."""
    dec = Decoder(1, VAE_HIDDEN).double()
    dec.load_state_dict({k: v.double() for k, v in vae.decoder.state_dict().items()})
    z = torch.linspace(-bound, bound, points, dtype=torch.float64)
    probs = dec(z[:, None])  # (G, D)
    xs = x.double().reshape(-1, VAE_PIXELS)
    log_lik = (xs[None] * probs[:, None].log() + (1 - xs[None]) * (1 - probs[:, None]).log()).sum(
        -1
    )  # (G, N)
    log_f = log_lik + dist.Normal(0.0, 1.0).log_prob(z)[:, None]
    h = z[1] - z[0]
    weights = torch.full((points,), float(h), dtype=torch.float64)
    weights[0] = weights[-1] = h / 2
    return (log_f + weights.log()[:, None]).logsumexp(0)


def vae_example(dtype: torch.dtype) -> Setup:
    torch.manual_seed(4)
    vae = VAE()
    g = _gen(4)
    x = (torch.rand(16, VAE_PIXELS, generator=g) < torch.linspace(0.2, 0.8, VAE_PIXELS)).to(dtype)
    return Setup(
        "vae_example",
        (vae.model, vae.guide),
        x,
        ("obs",),
        ("reparam", "meanfield", "score", "iwae"),
        exact_point=lambda: vae_quadrature(vae, x),
        extra={"vae": vae},
    )


# ------------------------------------------------------------------------------------------
# 5. A regression with a per-group latent and an AutoNormal guide; observed site "y"
# ------------------------------------------------------------------------------------------

GROUPS, REG_NOISE = 3, 0.5


def group_regression_model(y, u, group):
    with pyro.plate("groups", GROUPS):
        alpha = pyro.sample("alpha", dist.Normal(y.new_tensor(0.0), 1.0))
    beta = pyro.sample("beta", dist.Normal(y.new_tensor(0.0), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(alpha[group] + beta * u, REG_NOISE), obs=y)


def group_regression(dtype: torch.dtype) -> Setup:
    g = _gen(5)
    n = 18
    group = torch.arange(n) % GROUPS
    u = torch.randn(n, generator=g).to(dtype)
    y = (
        torch.tensor([-1.0, 0.5, 1.5])[group] + 0.8 * u.float() + REG_NOISE * torch.randn(n, generator=g)
    ).to(dtype)
    guide = AutoNormal(group_regression_model, init_scale=0.3)

    def exact_total():
        z = torch.nn.functional.one_hot(group, GROUPS).double()
        cov = z @ z.T + torch.outer(u.double(), u.double()) + REG_NOISE**2 * torch.eye(n, dtype=torch.float64)
        return _mvn_logpdf(y, cov)

    return Setup(
        "group_regression",
        (group_regression_model, guide),
        (y, u, group),
        ("y",),
        ("reparam", "meanfield", "score"),
        exact_total=exact_total,
        global_latents=("alpha", "beta"),
    )


# ------------------------------------------------------------------------------------------
# 6. A Poisson mixture with pyro.params, enumerated assignment, empty guide; observed site "data"
# (Pyro forbids a plate and a site of one name, so the data plate is named "counts")
# ------------------------------------------------------------------------------------------


def poisson_mixture_model(counts):
    weights = pyro.param("weights", counts.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    rates = pyro.param("rates", counts.new_tensor([2.0, 6.0]), constraint=constraints.positive)
    with pyro.plate("counts", len(counts)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("data", dist.Poisson(rates[z]), obs=counts)


def poisson_mixture(dtype: torch.dtype) -> Setup:
    g = _gen(6)
    counts = torch.cat(
        [
            torch.poisson(torch.full((10,), 1.0), generator=g),
            torch.poisson(torch.full((10,), 9.0), generator=g),
        ]
    ).to(dtype)

    def exact_point():
        w, r = pyro.param("weights").detach().double(), pyro.param("rates").detach().double()
        c = counts.double()[:, None]
        return (w.log() + c * r.log() - r - torch.lgamma(c + 1)).logsumexp(-1)

    return Setup(
        "poisson_mixture",
        (poisson_mixture_model, empty_guide),
        counts,
        ("data",),
        ("enum",),
        data_plate="counts",
        exact_point=exact_point,
        discrete=True,
        sampled_latents=False,
    )


# ------------------------------------------------------------------------------------------
# 7. Factor analysis: z_i ~ N(0, I), x_i ~ N(W z_i, diag psi); log p(x_i) = log N(x_i; 0, WW^T + Psi)
# ------------------------------------------------------------------------------------------

FA_D, FA_K = 4, 2
FA_W0 = [[1.0, 0.0], [0.5, 1.0], [-0.5, 0.5], [0.0, -1.0]]


def fa_model(x):
    w = pyro.param("W", x.new_tensor(FA_W0))
    psi = pyro.param("psi", x.new_full((FA_D,), 0.5), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), FA_K), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T, psi.sqrt()).to_event(1), obs=x)


def fa_guide(x):
    a = pyro.param("A", x.new_zeros(FA_K, FA_D))
    s = pyro.param("s", x.new_ones(FA_K), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x @ a.T, s).to_event(1))


def fa_posterior(w: torch.Tensor, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z | x) = N(M x, S) with S = (I + W^T Psi^-1 W)^-1, M = S W^T Psi^-1."""
    s = torch.linalg.inv(torch.eye(FA_K, dtype=w.dtype) + w.T @ (w / psi[:, None]))
    return s @ w.T / psi, s


def fa_exact_guide(x):
    # the guide runs first: it creates the model's parameters with the model's initial values
    w = pyro.param("W", x.new_tensor(FA_W0)).detach()
    psi = pyro.param("psi", x.new_full((FA_D,), 0.5), constraint=constraints.positive).detach()
    m, s = fa_posterior(w, psi)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.MultivariateNormal(x @ m.T, covariance_matrix=s))


def factor_analysis(dtype: torch.dtype) -> Setup:
    g = _gen(7)
    w_true = torch.tensor([[1.5, 0.0], [1.0, 1.0], [-1.0, 0.5], [0.0, -1.5]])
    x = (torch.randn(30, FA_K, generator=g) @ w_true.T + 0.6 * torch.randn(30, FA_D, generator=g)).to(dtype)

    def exact_point():
        w, psi = pyro.param("W").detach().double(), pyro.param("psi").detach().double()
        cov = w @ w.T + torch.diag(psi)
        return dist.MultivariateNormal(
            torch.zeros(FA_D, dtype=torch.float64), covariance_matrix=cov
        ).log_prob(x.double())

    return Setup(
        "factor_analysis",
        (fa_model, fa_guide),
        x,
        ("x",),
        ("reparam", "meanfield", "iwae"),
        exact_point=exact_point,
        exact_pair=(fa_model, fa_exact_guide),
    )


# ------------------------------------------------------------------------------------------
# 8. Two observed sites per data point: z_i ~ N(0, 1), a_i ~ N(z_i, 1), b_i ~ N(2 z_i, 1)
# ------------------------------------------------------------------------------------------


def two_obs_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        pyro.sample("a", dist.Normal(z, 1.0), obs=x[:, 0])
        pyro.sample("b", dist.Normal(2.0 * z, 1.0), obs=x[:, 1])


def two_obs_guide(x):
    c = pyro.param("c", x.new_tensor([0.0, 0.0]))
    s = pyro.param("s", x.new_tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x @ c, s))


def two_obs_exact_guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal((x[:, 0] + 2.0 * x[:, 1]) / 6.0, 6.0**-0.5))


def two_observed(dtype: torch.dtype) -> Setup:
    g = _gen(8)
    z = torch.randn(20, generator=g)
    x = torch.stack([z + torch.randn(20, generator=g), 2 * z + torch.randn(20, generator=g)], -1).to(dtype)
    cov = torch.tensor([[2.0, 2.0], [2.0, 5.0]], dtype=torch.float64)
    return Setup(
        "two_observed",
        (two_obs_model, two_obs_guide),
        x,
        ("a", "b"),
        ("reparam", "meanfield", "iwae"),
        exact_point=lambda: dist.MultivariateNormal(
            torch.zeros(2, dtype=torch.float64), covariance_matrix=cov
        ).log_prob(x.double()),
        exact_pair=(two_obs_model, two_obs_exact_guide),
    )


# ------------------------------------------------------------------------------------------
# 9. Nested plates: "data" at dim -2, "features" at dim -1; z_i ~ N(0, 1), x_ij ~ N(z_i + m_j, 1)
# ------------------------------------------------------------------------------------------

NEST_D = 3


def nested_model(x):
    m = pyro.param("m", x.new_zeros(NEST_D))
    with pyro.plate("data", x.shape[0], dim=-2):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0))
        with pyro.plate("features", NEST_D, dim=-1):
            pyro.sample("x", dist.Normal(z + m, 1.0), obs=x)


def nested_guide(x):
    a = pyro.param("a", x.new_tensor(0.1))
    s = pyro.param("s", x.new_tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal(a * x.sum(-1, keepdim=True), s))


def nested_exact_guide(x):
    m = pyro.param("m", x.new_zeros(NEST_D)).detach()
    with pyro.plate("data", x.shape[0], dim=-2):
        pyro.sample("z", dist.Normal((x - m).sum(-1, keepdim=True) / (NEST_D + 1), (NEST_D + 1) ** -0.5))


def nested_plates(dtype: torch.dtype) -> Setup:
    g = _gen(9)
    x = (
        torch.randn(15, 1, generator=g)
        + torch.randn(15, NEST_D, generator=g)
        + torch.tensor([0.5, -0.5, 1.0])
    ).to(dtype)

    def exact_point():
        m = pyro.param("m").detach().double()
        cov = torch.eye(NEST_D, dtype=torch.float64) + 1.0
        return dist.MultivariateNormal(m, covariance_matrix=cov).log_prob(x.double())

    return Setup(
        "nested_plates",
        (nested_model, nested_guide),
        x,
        ("x",),
        ("reparam", "meanfield", "iwae"),
        exact_point=exact_point,
        exact_pair=(nested_model, nested_exact_guide),
    )


# ------------------------------------------------------------------------------------------
# 10. Conjugate Normal-Normal: mu ~ N(0, 2^2), x_i ~ N(mu, 1); the exact posterior as a guide
# ------------------------------------------------------------------------------------------

NN_PRIOR = 2.0


def normal_normal_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), NN_PRIOR))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def normal_normal_guide(x):
    loc = pyro.param("loc", x.new_tensor(-1.0))
    scale = pyro.param("scale", x.new_tensor(1.0), constraint=constraints.positive)
    pyro.sample("mu", dist.Normal(loc, scale))


def normal_normal_posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    precision = NN_PRIOR**-2 + len(x)
    return x.sum() / precision, x.new_tensor(precision**-0.5)


def normal_normal_exact_guide(x):
    loc, scale = normal_normal_posterior(x)
    pyro.sample("mu", dist.Normal(loc, scale))


def normal_normal(dtype: torch.dtype) -> Setup:
    g = _gen(10)
    x = (torch.randn(12, generator=g) + 1.5).to(dtype)
    cov = torch.eye(len(x), dtype=torch.float64) + NN_PRIOR**2
    return Setup(
        "normal_normal",
        (normal_normal_model, normal_normal_guide),
        x,
        ("x",),
        ("reparam", "meanfield", "score"),
        exact_total=lambda: _mvn_logpdf(x, cov),
        exact_pair=(normal_normal_model, normal_normal_exact_guide),
        global_latents=("mu",),
    )


# ------------------------------------------------------------------------------------------
# 11. Bayesian linear regression, Pyro-style model(x, y) with an AutoLowRankMultivariateNormal guide
# ------------------------------------------------------------------------------------------

LIN_NOISE = 0.7


def linreg_model(x, y):
    w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_tensor(0.0), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w + b, LIN_NOISE), obs=y)


def _linreg_data(dtype: torch.dtype, seed: int, n: int = 16, d: int = 2):
    g = _gen(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.tensor([1.0, -0.5][:d]) + 0.3 + LIN_NOISE * torch.randn(n, generator=g)
    return x.to(dtype), y.to(dtype)


def _linreg_exact(x: torch.Tensor, y: torch.Tensor, noise: Callable[[], float]) -> Callable[[], float]:
    def exact_total():
        xd = x.double()
        cov = xd @ xd.T + 1.0 + noise() ** 2 * torch.eye(len(y), dtype=torch.float64)
        return _mvn_logpdf(y, cov)

    return exact_total


def linreg_lowrank(dtype: torch.dtype) -> Setup:
    x, y = _linreg_data(dtype, 11)
    guide = AutoLowRankMultivariateNormal(linreg_model, rank=2, init_scale=0.3)
    return Setup(
        "linreg_lowrank",
        (linreg_model, guide),
        (x, y),
        ("y",),
        ("reparam",),
        exact_total=_linreg_exact(x, y, lambda: LIN_NOISE),
        global_latents=("w", "b"),
    )


# ------------------------------------------------------------------------------------------
# 12. A PyroModule model (PyroSample priors, a PyroParam noise) with AutoDiagonalNormal; "obs"
# ------------------------------------------------------------------------------------------


class BayesianRegression(PyroModule):
    def __init__(self, in_features: int = 2) -> None:
        super().__init__()
        # the priors' tensors are buffers, so that moving the module moves them (the contract)
        self.register_buffer("weight_loc", torch.zeros(1, in_features))
        self.register_buffer("bias_loc", torch.zeros(1))
        self.linear = PyroModule[nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(lambda _: dist.Normal(self.weight_loc, 1.0).to_event(2))
        self.linear.bias = PyroSample(lambda _: dist.Normal(self.bias_loc, 1.0).to_event(1))
        self.sigma = PyroParam(torch.tensor(LIN_NOISE), constraint=constraints.positive)

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, self.sigma), obs=y)


def pyromodule_regression(dtype: torch.dtype) -> Setup:
    x, y = _linreg_data(dtype, 12)
    model = BayesianRegression()
    guide = AutoDiagonalNormal(model, init_scale=0.3)
    return Setup(
        "pyromodule_regression",
        (model, guide),
        (x, y),
        ("obs",),
        ("reparam",),
        exact_total=_linreg_exact(x, y, lambda: float(model.sigma)),
        global_latents=("linear.weight", "linear.bias"),
        extra={"module": model},
    )


# ------------------------------------------------------------------------------------------
# 13. A mixture of Bernoullis with pyro.params: z enumerated, x_i a binary vector ("x")
# ------------------------------------------------------------------------------------------

BMM_K, BMM_D = 2, 5


def bernoulli_mixture_model(x):
    weights = pyro.param("weights", x.new_full((BMM_K,), 1.0 / BMM_K), constraint=constraints.simplex)
    probs = pyro.param(
        "probs",
        x.new_tensor([[0.3, 0.4, 0.5, 0.6, 0.7], [0.7, 0.6, 0.5, 0.4, 0.3]]),
        constraint=constraints.unit_interval,
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Bernoulli(probs[z]).to_event(1), obs=x)


def bernoulli_mixture(dtype: torch.dtype) -> Setup:
    g = _gen(13)
    proto = torch.tensor([[0.9, 0.9, 0.8, 0.1, 0.1], [0.1, 0.2, 0.1, 0.9, 0.9]])
    z = torch.randint(0, 2, (24,), generator=g)
    x = (torch.rand(24, BMM_D, generator=g) < proto[z]).to(dtype)

    def exact_point():
        """Brute force over every assignment of the (N,) z: sum_z prod_i p(z_i) p(x_i | z_i), per point."""
        w, p = pyro.param("weights").detach().double(), pyro.param("probs").detach().double()
        xd = x.double()
        out = torch.empty(len(xd), dtype=torch.float64)
        for i in range(len(xd)):
            total = 0.0
            for k in range(BMM_K):
                lik = 1.0
                for d in range(BMM_D):
                    lik *= float(p[k, d]) if xd[i, d] == 1 else 1.0 - float(p[k, d])
                total += float(w[k]) * lik
            out[i] = math.log(total)
        return out

    return Setup(
        "bernoulli_mixture",
        (bernoulli_mixture_model, empty_guide),
        x,
        ("x",),
        ("enum",),
        exact_point=exact_point,
        discrete=True,
        sampled_latents=False,
    )


# ------------------------------------------------------------------------------------------
# 14. poutine.mask: missing observations masked per row (a per-row condition)
# ------------------------------------------------------------------------------------------


def masked_model(x, present):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        with poutine.mask(mask=present):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def masked_guide(x, present):
    a = pyro.param("a", x.new_tensor(0.0))
    s = pyro.param("s", x.new_tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(a * x * present, s))


def masked_exact_guide(x, present):
    with pyro.plate("data", len(x)):
        loc = torch.where(present, x / 2, torch.zeros_like(x))
        scale = torch.where(present, torch.full_like(x, 0.5**0.5), torch.ones_like(x))
        pyro.sample("z", dist.Normal(loc, scale))


def masked(dtype: torch.dtype) -> Setup:
    g = _gen(14)
    x = (torch.randn(16, generator=g) * 2**0.5).to(dtype)
    present = torch.arange(16) % 4 != 0

    def exact_point():
        return torch.where(
            present, dist.Normal(0.0, 2**0.5).log_prob(x.double()), torch.zeros(16, dtype=torch.float64)
        )

    return Setup(
        "masked",
        (masked_model, masked_guide),
        (x, present),
        ("x",),
        ("reparam", "meanfield", "iwae"),
        exact_point=exact_point,
        exact_pair=(masked_model, masked_exact_guide),
    )


# ------------------------------------------------------------------------------------------
# 15. A discrete latent sampled by the guide (no enumeration): z_i ~ Bernoulli(0.3),
# x_i ~ N(4 z_i - 2, 1); exact by brute-force enumeration of z_i
# ------------------------------------------------------------------------------------------

SW_PRIOR = 0.3


def switch_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(x.new_tensor(SW_PRIOR)))
        pyro.sample("x", dist.Normal(4.0 * z - 2.0, 1.0), obs=x)


def switch_guide(x):
    a = pyro.param("a", x.new_tensor(0.0))
    b = pyro.param("b", x.new_tensor(0.0))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=a * x + b))


def _switch_log_joint(x: torch.Tensor) -> torch.Tensor:
    """(N, 2): log p(x_i, z_i = k) for k in {0, 1}, by listing both values."""
    xd = x.double()
    cols = []
    for k, prior in zip((0, 1), (1 - SW_PRIOR, SW_PRIOR), strict=True):
        cols.append(math.log(prior) + dist.Normal(4.0 * k - 2.0, 1.0).log_prob(xd))
    return torch.stack(cols, -1)


def switch_exact_guide(x):
    joint = _switch_log_joint(x)
    logit = (joint[:, 1] - joint[:, 0]).to(x.dtype)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(logits=logit))


def discrete_switch(dtype: torch.dtype) -> Setup:
    g = _gen(15)
    z = (torch.rand(20, generator=g) < SW_PRIOR).float()
    x = (4 * z - 2 + torch.randn(20, generator=g)).to(dtype)
    return Setup(
        "discrete_switch",
        (switch_model, switch_guide),
        x,
        ("x",),
        ("reparam", "score", "iwae"),
        exact_point=lambda: _switch_log_joint(x).logsumexp(-1),
        exact_pair=(switch_model, switch_exact_guide),
    )


CASES: dict[str, Callable[[torch.dtype], Setup]] = {
    f.__name__: f
    for f in (
        gmm_tutorial,
        hmm_categorical,
        hmm_gaussian,
        vae_example,
        group_regression,
        poisson_mixture,
        factor_analysis,
        two_observed,
        nested_plates,
        normal_normal,
        linreg_lowrank,
        pyromodule_regression,
        bernoulli_mixture,
        masked,
        discrete_switch,
    )
}


def build(name: str, dtype: torch.dtype) -> Setup:
    """The setup of case ``name`` in ``dtype``. Parameters are created by the first wrapper that
    runs the model (as for a user); the exact functions read them afterwards."""
    return CASES[name](dtype)


# ------------------------------------------------------------------------------------------
# Helpers shared by the conformance tests
# ------------------------------------------------------------------------------------------

DTYPES = (torch.float32, torch.float64)


def plate_kw(setup: Setup) -> dict:
    """``data_plate=`` for a model whose data plate is not named "data" (else nothing)."""
    return {} if setup.data_plate == "data" else {"data_plate": setup.data_plate}


def atol(dtype: torch.dtype, value: float = 1.0) -> float:
    """Tolerance for an exact value: 1e-6 in float64, float32 rounding (relative) in float32."""
    return 1e-6 if dtype == torch.float64 else 2e-4 * (1.0 + abs(value))


def names(kind: str) -> list[str]:
    """Case names with a property: "discrete" (em applies), "sampled" (the guide samples latents),
    "exact_pair" (an exact-posterior guide exists), "point" (exact per-point log p(x_i | theta))."""
    out = []
    for name, make in CASES.items():
        s = make(torch.float32)
        keep = {
            "discrete": s.discrete,
            "sampled": s.sampled_latents,
            "exact_pair": s.exact_pair is not None,
            "point": s.exact_point is not None,
            "global": s.exact_total is not None,
        }[kind]
        if keep:
            out.append(name)
    return out
