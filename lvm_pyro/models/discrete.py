"""A discrete-latent model: the sigmoid belief network (a Bernoulli-latent VAE).

z_k ~ Bernoulli(sigmoid(b_k)), k = 1..K; x | z ~ p(x | decoder(z)); q(z | x) = prod_k
Bernoulli(sigmoid(e_k(x))). A binary z has no reparameterization, so gradients of the ELBO
with respect to the encoder need the score function (REINFORCE): train with
``objective="score"`` (decaying-average baseline) or ``"iwae"`` (VIMCO's leave-one-out
baselines). ``"reparam"`` also runs (Pyro adds a score-function term without a baseline, so
its gradients are noisy); ``"meanfield"`` is not valid (it assumes reparameterized sites and
would silently drop the encoder's gradient through the likelihood).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.nets import MLP
from lvm_pyro.models.vae import (
    Decoder,
    as_shape,
    as_sizes,
    check_flag,
    check_levels,
    flatten_example,
    latent_codes,
    parameter_count,
)

#: Largest latent size for which ``exact_log_likelihood`` enumerates all 2^K states.
MAX_ENUMERATED_LATENT = 16


class SigmoidBeliefNet(LatentVariableModel):
    """Sigmoid belief network: z ~ Bernoulli(sigmoid(b)) in {0, 1}^K, x | z ~ p(x | f(z)).

    ELBO(x) = E_q[log p(x | z) + log p(z) - log q(z | x)], q(z | x) = Bernoulli(sigmoid(e(x))).
    With ``hidden=()`` the decoder is linear in z (the classic one-layer SBN: logits W z + c);
    ``encoder_hidden`` are the encoder's layers. The prior logits b are learned
    (``learn_prior=True``) or fixed at 0. For K <= 16, ``exact_log_likelihood`` sums over all
    2^K states. Estimators: see the module docstring.

    Example:
        >>> sbn = SigmoidBeliefNet((64,), latent_dim=3, encoder_hidden=(8,))
        >>> x = torch.randint(0, 2, (5, 64)).float()
        >>> sbn.encode(x).batch_shape, sbn.exact_log_likelihood(x).shape
        (torch.Size([5]), torch.Size([5]))
    """

    def __init__(
        self,
        input_shape: int | Sequence[int] = (64,),
        latent_dim: int = 32,
        hidden: Sequence[int] = (),
        *,
        encoder_hidden: Sequence[int] = (256,),
        learn_prior: bool = True,
        likelihood: str = "bernoulli",
        gaussian_scale: float | str = "learned",
        n_levels: int = 17,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape)
        self.latent_dim = check_latent_size(latent_dim)
        self.decoder = Decoder(self.latent_dim, as_sizes(hidden), self.input_shape, likelihood,
                               scale=gaussian_scale, n_levels=n_levels, activation=activation)
        self.data_support = self.decoder.support
        self.encoder = MLP(math.prod(self.input_shape), as_sizes(encoder_hidden, "encoder_hidden"),
                           self.latent_dim, activation)
        logits = torch.zeros(self.latent_dim)
        if check_flag(learn_prior, "learn_prior"):
            self.prior_logits = nn.Parameter(logits)
        else:
            self.register_buffer("prior_logits", logits)

    def __repr__(self) -> str:
        """One line of settings (``torch.nn.Module.__repr__(model)`` prints the layers)."""
        return (f"SigmoidBeliefNet(input_shape={self.input_shape}, latent_dim={self.latent_dim}, "
                f"likelihood={self.decoder.likelihood!r}; {parameter_count(self)} parameters)")

    def validate(self, x, name: str = "data") -> torch.Tensor:
        return check_levels(super().validate(x, name), self.decoder, name)

    def prior(self, batch_shape: torch.Size) -> dist.TorchDistribution:
        """p(z) = prod_k Bernoulli(sigmoid(b_k)) with the given batch shape."""
        return dist.Bernoulli(logits=self.prior_logits.expand(batch_shape + (self.latent_dim,))).to_event(1)

    def _encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=self.encoder(flatten_example(x, self.input_shape))).to_event(1)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        with self.data_plate(x):
            z = pyro.sample("z", self.prior(x.shape[: x.dim() - len(self.input_shape)]))
            pyro.sample("x", self.decoder(z), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        with self.data_plate(x):
            pyro.sample("z", self._encode(x))

    def _prepare(self, x) -> torch.Tensor:
        ref = next(self.parameters())
        return self.validate(x, "x").to(device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def encode(self, x) -> dist.TorchDistribution:
        """q(z | x): independent Bernoullis, batch shape (N,), event shape (latent_dim,)."""
        return self._encode(self._prepare(x))

    @torch.no_grad()
    def decode(self, z) -> dist.TorchDistribution:
        """p(x | z) for binary codes z of shape (N, latent_dim)."""
        return self.decoder(latent_codes(z, self.latent_dim, next(self.parameters()), binary=True))

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        """E[x | z] at the most probable code z = 1[q(z_k = 1 | x) > 1/2]."""
        return self.decoder.mean((self.encode(x).base_dist.probs > 0.5).to(self.prior_logits.dtype))

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False) -> torch.Tensor:
        """n examples x ~ p(x | z), z ~ p(z) (``mean=True``: E[x | z])."""
        z = self.prior(torch.Size([check_latent_size(n, "n")])).sample()
        return self.decoder.mean(z) if mean else self.decoder(z).sample()

    @torch.no_grad()
    def exact_log_likelihood(self, x) -> torch.Tensor:
        """log p(x) = log sum_z p(z) p(x | z) over all 2^K codes, per example (K <= 16)."""
        if self.latent_dim > MAX_ENUMERATED_LATENT:
            raise ConfigurationError(
                f"exact_log_likelihood sums over 2^{self.latent_dim} codes; it is offered for "
                f"latent_dim <= {MAX_ENUMERATED_LATENT}: use lvm_pyro.infer.evaluate.log_likelihood"
            )
        x = self._prepare(x)
        codes = torch.tensor(list(itertools.product((0.0, 1.0), repeat=self.latent_dim)),
                             dtype=x.dtype, device=x.device)
        log_pz = self.prior(torch.Size([len(codes)])).log_prob(codes)[:, None]
        rows = max(1, 2**22 // (len(codes) * math.prod(self.input_shape) * self.decoder.n_levels))
        return torch.cat([
            (log_pz + self.decoder(codes[:, None, :]).log_prob(part)).logsumexp(0) for part in x.split(rows)
        ])

