"""Black-box (non-amortized) variational inference for a VAE's decoder, and the amortization gap.

The amortized encoder gives every x the posterior approximation q(z | x) = N(mu(x), Sigma(x))
from one shared network. Black-box VI instead gives every data point i its own parameters,
q_i(z) = N(m_i, diag s_i^2) (or a full Cholesky factor), optimized directly. With the decoder
fixed, the best per-point ELBO is at least the amortized one; the difference is the
amortization gap (Cremer et al., 2018), measured by ``lvm_pyro.diagnostics.amortization.amortization_gap``:

    gap = (1/N) sum_i [max_{q_i} ELBO(x_i; q_i) - ELBO(x_i; q(z | x_i))] >= 0.
"""

from __future__ import annotations

import copy
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn
from torch.nn import functional as F

from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.vae import VAE, check_flag


class BlackBoxVI(LatentVariableModel):
    """Per-data-point Gaussian guides q_i(z) = N(m_i, S_i) for the model of a trained ``vae``.

    ELBO_i = E_{q_i}[log p(x_i | z) + log p(z) - log q_i(z)], with p the VAE's prior and decoder.
    The data are ``(x, index)``: the examples and each one's row in 0..num_data-1 (``with_index``
    makes them), so minibatches find their own parameters. By default the VAE is fixed
    (``train_decoder=False``: a frozen copy of it is held and only the m_i, S_i are trained,
    which measures the amortization gap); ``train_decoder=True`` trains the given VAE's decoder
    and prior in place, with the local guides (classic non-amortized VAE training). The family
    matches the VAE's encoder: diagonal, or full Cholesky with ``encoder="full"``.
    ``init_from_encoder(x)`` starts every q_i at q(z | x_i).
    Estimators: reparam, meanfield, iwae, score.

    Example:
        >>> vae = VAE((64,), latent_dim=2, hidden=(16,))
        >>> x = torch.randint(0, 2, (6, 64)).float()
        >>> bb = BlackBoxVI(vae, num_data=6).init_from_encoder(x)
        >>> torch.allclose(bb.loc, vae.encode(x).mean)
        True
    """

    def __init__(
        self, vae: VAE, num_data: int, *, train_decoder: bool = False, min_scale: float = 1e-4
    ) -> None:
        super().__init__()
        if not isinstance(vae, VAE):
            raise ConfigurationError(
                f"BlackBoxVI needs a VAE (or a subclass such as MixturePriorVAE), got {type(vae).__name__}"
            )
        train_decoder = check_flag(train_decoder, "train_decoder")
        self.vae = vae if train_decoder else copy.deepcopy(vae).requires_grad_(False).eval()
        self.num_data = check_latent_size(num_data, "num_data")
        self.train_decoder = bool(train_decoder)
        self.input_shape = vae.input_shape
        self.data_support = vae.data_support
        numeric = isinstance(min_scale, (int, float)) and not isinstance(min_scale, bool)
        if not numeric or not math.isfinite(min_scale) or min_scale < 0:
            raise ConfigurationError(f"min_scale={min_scale!r}: pass a finite non-negative number")
        self.min_scale = float(min_scale)
        d = vae.latent_dim
        ref = next(vae.parameters())
        self.full = vae.encoder_type == "full"
        self.loc = nn.Parameter(ref.new_zeros(self.num_data, d))
        self.raw_scale = nn.Parameter(ref.new_full((self.num_data, d), math.log(math.expm1(1.0))))
        if self.full:
            self.raw_tril = nn.Parameter(ref.new_zeros(self.num_data, d, d))

    def validate(self, x, name: str = "data") -> torch.Tensor:
        return self.vae.validate(x, name)

    def train(self, mode: bool = True) -> BlackBoxVI:
        """As ``nn.Module.train``; a frozen VAE stays in eval mode."""
        super().train(mode)
        if not self.train_decoder:
            self.vae.eval()
        return self

    def with_index(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """The data as ``fit`` takes it here: (x, arange(len(x))); x must have num_data rows."""
        x = self.vae.validate(x, "x")
        if len(x) != self.num_data:
            raise DataError(
                f"x has {len(x)} rows but this BlackBoxVI holds parameters for {self.num_data} points: "
                f"build it with num_data={len(x)}"
            )
        return x, torch.arange(len(x), device=x.device)

    def _check_index(self, index: torch.Tensor) -> torch.Tensor:
        if index.is_floating_point() or index.dim() != 1:
            raise DataError("index must be a 1-D integer tensor of data-point rows; use with_index(x)")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.num_data):
            raise DataError(
                f"index holds rows {int(index.min())}..{int(index.max())} but this BlackBoxVI has "
                f"parameters for rows 0..{self.num_data - 1}: build it with num_data=len(x)"
            )
        return index

    def local_posterior(self, index: torch.Tensor) -> dist.TorchDistribution:
        """q_i(z) for the rows ``index``, batch shape (len(index),)."""
        index = self._check_index(index)
        loc = self.loc[index]
        scale = F.softplus(self.raw_scale[index]) + self.min_scale
        if self.full:
            tril = torch.tril(self.raw_tril[index], diagonal=-1) + torch.diag_embed(scale)
            return dist.MultivariateNormal(loc, scale_tril=tril)
        return dist.Normal(loc, scale).to_event(1)

    @pyro_method
    def model(self, x: torch.Tensor, index: torch.Tensor) -> None:
        self.vae.model(x)

    @pyro_method
    def guide(self, x: torch.Tensor, index: torch.Tensor) -> None:
        with self.data_plate(x):
            pyro.sample("z", self.local_posterior(index))

    @torch.no_grad()
    def init_from_encoder(self, x) -> BlackBoxVI:
        """Set every q_i to the amortized q(z | x_i) (its mean and, for "diag", its scales); returns self."""
        x, _ = self.with_index(x)
        q = self.vae.encode(x)
        self.loc.copy_(q.mean)
        if self.full:
            tril = q.scale_tril
            diag = torch.diagonal(tril, dim1=-2, dim2=-1)
            self.raw_tril.copy_(tril)
        else:
            diag = q.base_dist.scale
        self.raw_scale.copy_(torch.log(torch.expm1((diag - self.min_scale).clamp_min(1e-6))))
        return self
