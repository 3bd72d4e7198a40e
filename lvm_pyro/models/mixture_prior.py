"""VAE with a learnable mixture-of-Gaussians prior, the component summed out.

p(c) = Categorical(pi), p(z | c) = N(mu_c, diag sigma_c^2), p(x | z) a neural likelihood, and
the encoder q(z | x) as in the VAE. The component c is never sampled: it is summed out,

    p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2),

in one of two equivalent ways (``enumerate_component``):

- ``False`` (default): the sum is the prior's density itself (a ``MixtureSameFamily``), so
  the model has only the site "z" and trains with every estimator (reparam, iwae, score,
  meanfield with a Monte Carlo KL term) and KL warm-up.
- ``True``: the model has a site "c" marked ``infer={"enumerate": "parallel"}`` and
  ``p(z | c)``; Pyro's enumeration sums it out. Train with ``objective="enum"``
  (TraceEnum_ELBO). For the same z the two objectives are equal, term for term.

The default is the analytic form because it works with every estimator; enumeration is there
for the generic machinery (``em``-style models, TraceEnum) and gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn
from torch.nn import functional as F

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.models.base import check_latent_size
from lvm_pyro.models.vae import VAE, check_flag


class MixturePriorVAE(VAE):
    """VAE whose prior is a learned mixture: p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2).

    ELBO(x) = E_q[log p(x | z) + log sum_c pi_c N(z; mu_c, sigma_c^2) - log q(z | x)]. The
    ``n_components`` means start spread out (N(0, I) draws), the weights uniform, the scales
    at 1. Other arguments are the VAE's. ``component_probs(x)`` gives p(c | z = E_q[z | x]),
    a clustering of the data. See the module docstring for ``enumerate_component``.

    Example:
        >>> vae = MixturePriorVAE((64,), latent_dim=2, n_components=3, hidden=(16,))
        >>> x = torch.randint(0, 2, (5, 64)).float()
        >>> vae.component_probs(x).shape, vae.sample(4).shape
        (torch.Size([5, 3]), torch.Size([4, 64]))
    """

    def __init__(
        self,
        input_shape: int | Sequence[int] = (64,),
        latent_dim: int = 16,
        n_components: int = 10,
        hidden: Sequence[int] = (256, 256),
        *,
        enumerate_component: bool = False,
        likelihood: str = "bernoulli",
        encoder: str = "diag",
        gaussian_scale: float | str = "learned",
        n_levels: int = 17,
        activation: type[nn.Module] = nn.ReLU,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__(input_shape, latent_dim, hidden, likelihood=likelihood, encoder=encoder,
                         gaussian_scale=gaussian_scale, n_levels=n_levels, activation=activation)
        self.n_components = check_latent_size(n_components, "n_components")
        self.enumerate_component = check_flag(enumerate_component, "enumerate_component")
        if isinstance(min_scale, bool) or not isinstance(min_scale, (int, float)) or not 0 <= min_scale < 1:
            raise ConfigurationError(
                f"min_scale={min_scale!r}: pass a number in [0, 1) (the components' scales start at 1)"
            )
        self.min_scale = float(min_scale)
        self.component_logits = nn.Parameter(torch.zeros(self.n_components))
        self.component_locs = nn.Parameter(torch.randn(self.n_components, self.latent_dim))
        unit_scale = math.log(math.expm1(1.0 - min_scale))  # softplus(unit_scale) + min_scale = 1
        self.component_raw_scales = nn.Parameter(torch.full((self.n_components, self.latent_dim), unit_scale))

    def component_scales(self) -> torch.Tensor:
        """sigma_c, shape (n_components, latent_dim)."""
        return F.softplus(self.component_raw_scales) + self.min_scale

    def _components(self) -> dist.TorchDistribution:
        return dist.Normal(self.component_locs, self.component_scales()).to_event(1)

    def prior(self, batch_shape: torch.Size, like: torch.Tensor) -> dist.TorchDistribution:
        """p(z) = sum_c pi_c N(z; mu_c, sigma_c^2) with the given batch shape."""
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=self.component_logits), self._components())
        return mixture.expand(batch_shape)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        if not self.enumerate_component:
            super().model(x)
            return
        with self.data_plate(x):
            c = pyro.sample(
                "c",
                dist.Categorical(logits=self.component_logits).expand(self._batch_shape(x)),
                infer={"enumerate": "parallel"},
            )
            z = pyro.sample("z", dist.Normal(self.component_locs[c], self.component_scales()[c]).to_event(1))
            pyro.sample("x", self.decoder(z), obs=x)

    @torch.no_grad()
    def component_probs(self, x) -> torch.Tensor:
        """p(c | z) at z = E_q[z | x], shape (N, n_components): each example's soft cluster."""
        z = self.encode(x).mean
        joint = self._components().log_prob(z[..., None, :]) + F.log_softmax(self.component_logits, -1)
        return F.softmax(joint, dim=-1)

