"""Hierarchical VAE: L >= 2 stochastic layers, z_L -> z_{L-1} -> ... -> z_1 -> x.

p(x, z) = p(z_L) prod_{i<L} p(z_i | z_{i+1}) p(x | z_1), with p(z_L) = N(0, I) and each
p(z_i | z_{i+1}) a diagonal Gaussian whose mean and scale are networks of z_{i+1}. Two guides:

- ``"markov"`` (bottom-up): q(z_1 | x) prod_{i<L} q(z_{i+1} | z_i).
- ``"ladder"`` (top-down, Sonderby et al. 2016): a deterministic bottom-up pass
  d_1 = f_1(x), d_{i+1} = f_{i+1}(d_i) gives each layer a Gaussian estimate N(m_i, s_i^2);
  then top-down q(z_L | x) = N(m_L, s_L^2) and q(z_i | z_{i+1}, x) is the precision-weighted
  product of N(m_i, s_i^2) with the generative p(z_i | z_{i+1}) itself, so inference shares
  the generative path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import pyro_method
from torch import nn

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.nets import DiagNormalHead
from lvm_pyro.models.vae import (
    Decoder,
    as_shape,
    as_sizes,
    body,
    check_levels,
    flatten_example,
    latent_codes,
    parameter_count,
)

GUIDES = ("markov", "ladder")

#: draw(name, distribution) -> value: pyro.sample in a Pyro program, a mean or a draw otherwise.
Draw = Callable[[str, dist.TorchDistribution], torch.Tensor]


class GaussianLayer(nn.Module):
    """h -> (loc, scale) of a diagonal Gaussian through an MLP with ``hidden`` layers.

    Example:
        >>> loc, scale = GaussianLayer(3, [8], 2)(torch.zeros(4, 3))
        >>> loc.shape, bool((scale > 0).all())
        (torch.Size([4, 2]), True)
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.body, width = body(in_features, hidden, activation)
        self.head = DiagNormalHead(width, out_features)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(h))


class HierarchicalVAE(LatentVariableModel):
    """VAE with L >= 2 Gaussian layers: p(z_L) prod_{i<L} p(z_i | z_{i+1}) p(x | z_1).

    ELBO(x) = E_q[log p(x | z_1) + sum_i log p(z_i | z_{i+1}) + log p(z_L) - log q(z | x)].
    ``latent_dims`` lists the layer sizes from the bottom (z_1, next to x) to the top (z_L);
    ``hidden`` are the decoder's / first encoder's layers, ``layer_hidden`` those of the networks
    between latent layers. ``guide="markov"`` (default) or ``"ladder"`` (see the module
    docstring); on the binarized digits the Markov guide generalizes better (test NLL 16.3 vs
    16.6 nats for the ladder guide, ``benchmarks/quality.py``). Sites are named "z1" .. "zL".
    KL warm-up (``default_kl_warmup = 100`` epochs) scales every layer's KL term. Estimators:
    reparam, iwae, score, and meanfield with the ladder guide (its top-down order matches the
    model's; the Markov guide's does not, so the analytic KL terms would be conditioned on the
    wrong samples).

    Example:
        >>> hvae = HierarchicalVAE((64,), latent_dims=(4, 2), hidden=(16,), layer_hidden=(8,))
        >>> x = torch.randint(0, 2, (5, 64)).float()
        >>> hvae.encode(x).batch_shape, hvae.sample(3).shape, hvae.reconstruct(x).shape
        (torch.Size([5]), torch.Size([3, 64]), torch.Size([5, 64]))
    """

    default_kl_warmup = 100.0

    def __init__(
        self,
        input_shape: int | Sequence[int] = (64,),
        latent_dims: Sequence[int] = (16, 8),
        hidden: Sequence[int] = (256, 256),
        *,
        layer_hidden: Sequence[int] = (128,),
        guide: str = "markov",
        likelihood: str = "bernoulli",
        gaussian_scale: float | str = "learned",
        n_levels: int = 17,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.input_shape = as_shape(input_shape)
        if isinstance(latent_dims, int) or not isinstance(latent_dims, Sequence) or len(latent_dims) < 2:
            raise ConfigurationError(
                f"latent_dims={latent_dims!r}: a hierarchical VAE needs at least two layer sizes, "
                "e.g. (16, 8) (bottom first); for one layer use VAE"
            )
        self.latent_dims = tuple(check_latent_size(d, "each of latent_dims") for d in latent_dims)
        self.hidden = as_sizes(hidden)
        self.layer_hidden = as_sizes(layer_hidden, "layer_hidden")
        if guide not in GUIDES:
            raise ConfigurationError(f"unknown guide {guide!r}; valid: {', '.join(GUIDES)}")
        self.guide_type = guide
        dims = self.latent_dims
        n_layers = len(dims)
        self.decoder = Decoder(dims[0], self.hidden[::-1], self.input_shape, likelihood,
                               scale=gaussian_scale, n_levels=n_levels, activation=activation)
        self.data_support = self.decoder.support
        # priors[i] is p(z_{i+1} | z_{i+2}) in 1-based layer numbers: z_{i+2} -> z_{i+1}
        self.priors = nn.ModuleList(
            GaussianLayer(dims[i + 1], self.layer_hidden, dims[i], activation) for i in range(n_layers - 1)
        )
        features = math.prod(self.input_shape)
        if guide == "markov":
            self.bottom = GaussianLayer(features, self.hidden, dims[0], activation)
            self.up = nn.ModuleList(
                GaussianLayer(dims[i], self.layer_hidden, dims[i + 1], activation)
                for i in range(n_layers - 1)
            )
        else:
            first, width = body(features, self.hidden, activation)
            paths, widths = [first], [width]
            for _ in range(n_layers - 1):
                path, width = body(widths[-1], self.layer_hidden, activation)
                paths.append(path)
                widths.append(width)
            self.paths = nn.ModuleList(paths)
            self.heads = nn.ModuleList(DiagNormalHead(w, d) for w, d in zip(widths, dims, strict=True))

    @property
    def site_names(self) -> list[str]:
        """The latent sites from the bottom: ["z1", ..., "zL"]."""
        return [f"z{i + 1}" for i in range(len(self.latent_dims))]

    def __repr__(self) -> str:
        """One line of settings (``torch.nn.Module.__repr__(model)`` prints the layers)."""
        return (f"HierarchicalVAE(input_shape={self.input_shape}, latent_dims={self.latent_dims}, "
                f"hidden={self.hidden}, guide={self.guide_type!r}, likelihood={self.decoder.likelihood!r}; "
                f"{parameter_count(self)} parameters)")

    def validate(self, x, name: str = "data") -> torch.Tensor:
        return check_levels(super().validate(x, name), self.decoder, name)

    def _prepare(self, x) -> torch.Tensor:
        ref = next(self.parameters())
        return self.validate(x, "x").to(device=ref.device, dtype=ref.dtype)

    # -- the generative and inference paths, for any way of drawing ---------------------

    def _generate(self, batch_shape: torch.Size, like: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Run z_L -> ... -> z_1 top-down with ``draw`` at each layer; returns z_1."""
        names = self.site_names
        z = draw(names[-1], dist.Normal(like.new_zeros(batch_shape + (self.latent_dims[-1],)), 1.0)
                 .to_event(1))
        for i in reversed(range(len(self.priors))):
            loc, scale = self.priors[i](z)
            z = draw(names[i], dist.Normal(loc, scale).to_event(1))
        return z

    def _infer(self, x: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Run the guide's layers with ``draw`` at each; returns z_1."""
        names = self.site_names
        h = flatten_example(x, self.input_shape)
        if self.guide_type == "markov":
            z1 = z = draw(names[0], dist.Normal(*self.bottom(h)).to_event(1))
            for i, layer in enumerate(self.up):
                z = draw(names[i + 1], dist.Normal(*layer(z)).to_event(1))
            return z1
        estimates = []
        for path, head in zip(self.paths, self.heads, strict=True):
            h = path(h)
            estimates.append(head(h))
        z = draw(names[-1], dist.Normal(*estimates[-1]).to_event(1))
        for i in reversed(range(len(self.priors))):
            loc_hat, scale_hat = estimates[i]
            loc_p, scale_p = self.priors[i](z)
            prec_hat, prec_p = scale_hat.pow(-2), scale_p.pow(-2)
            prec = prec_hat + prec_p
            loc = (loc_hat * prec_hat + loc_p * prec_p) / prec
            z = draw(names[i], dist.Normal(loc, prec.rsqrt()).to_event(1))
        return z

    # -- the Pyro program -------------------------------------------------------------------

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        with self.data_plate(x):
            z1 = self._generate(x.shape[: x.dim() - len(self.input_shape)], x, pyro.sample)
            pyro.sample("x", self.decoder(z1), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        with self.data_plate(x):
            self._infer(x, pyro.sample)

    # -- user methods -----------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x, layer: int = 1) -> dist.TorchDistribution:
        """q(z_layer | x, other layers at their guide means): batch shape (N,).

        Exact for the guide's first layer (z_1 with "markov", z_L with "ladder").
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= len(self.latent_dims):
            raise ConfigurationError(f"layer={layer!r}: pass a layer number in 1..{len(self.latent_dims)}")
        found: dict[str, dist.TorchDistribution] = {}

        def at_mean(name: str, d: dist.TorchDistribution) -> torch.Tensor:
            found[name] = d
            return d.mean

        self._infer(self._prepare(x), at_mean)
        return found[f"z{layer}"]

    @torch.no_grad()
    def decode(self, z1: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z_1) for bottom-layer latents of shape (N, latent_dims[0])."""
        z1 = latent_codes(z1, self.latent_dims[0], next(self.parameters()), "z1")
        return self.decoder(z1)

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        """E[x | z_1], with every layer of the guide at its mean."""
        return self.decoder.mean(self._infer(self._prepare(x), lambda _, d: d.mean))

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False) -> torch.Tensor:
        """n examples by ancestral sampling z_L -> ... -> z_1 -> x (``mean=True``: E[x | z_1])."""
        n = check_latent_size(n, "n")
        z1 = self._generate(torch.Size([n]), next(self.parameters()), lambda _, d: d.sample())
        return self.decoder.mean(z1) if mean else self.decoder(z1).sample()

