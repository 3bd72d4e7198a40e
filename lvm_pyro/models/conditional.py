"""Conditional VAE, p(y | x, z) p(z | x) with q(z | x, y), and its deterministic baseline p(y | x).

Data order: like every model here the first entry of the data is what the likelihood scores,
so these models take ``(y, x)``: the target y (validated against the likelihood's support and
shape) and its condition x (one row per target: a feature vector such as the top half of an
image, or an integer class label). ``fit(cvae, (y, x))`` trains on them and
``log_likelihood(cvae, (y, x))`` estimates the conditional log-likelihood log p(y | x).
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

from lvm_pyro.data import validate_condition
from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.models.base import LatentVariableModel, check_latent_size
from lvm_pyro.models.nets import DiagNormalHead
from lvm_pyro.models.vae import (
    Decoder,
    as_shape,
    as_sizes,
    body,
    broadcast_cat,
    check_levels,
    flatten_example,
    parameter_count,
)


class ConditionFeatures(nn.Module):
    """A condition x as a feature vector: flattened features, or the one-hot code of a class label.

    Exactly one of ``condition_shape`` (x is a real tensor of that shape per example) or
    ``n_classes`` (x is an integer label in 0..n_classes-1) is given. The features have the
    dtype of ``like`` (the target), so integer labels follow the model's floating dtype.

    Example:
        >>> ConditionFeatures(n_classes=3)(torch.tensor([0, 2]), torch.zeros(2)).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """

    def __init__(
        self, condition_shape: int | Sequence[int] | None = None, n_classes: int | None = None
    ) -> None:
        super().__init__()
        if (condition_shape is None) == (n_classes is None):
            raise ConfigurationError(
                "pass exactly one of condition_shape= (a feature vector or image per example, e.g. (32,)) "
                "or n_classes= (an integer class label per example, e.g. 10)"
            )
        shape = None if condition_shape is None else as_shape(condition_shape, "condition_shape")
        self.condition_shape = shape
        self.n_classes = None if n_classes is None else check_latent_size(n_classes, "n_classes")
        self.features = self.n_classes if self.n_classes is not None else math.prod(self.condition_shape)

    def check(self, x: torch.Tensor, name: str = "condition") -> torch.Tensor:
        """Refuse a condition of the wrong per-example shape or an unknown label, naming the fix."""
        if self.n_classes is not None:
            if x.dim() != 1:
                raise DataError(
                    f"{name} has shape {tuple(x.shape)} but one class label per example is expected: "
                    "pass a 1-D tensor of integer labels"
                )
            bad = (x < 0) | (x >= self.n_classes) | (x != torch.round(x))
            if bool(bad.any()):
                first = int(bad.nonzero()[0, 0])
                raise DataError(
                    f"{name} has the label {float(x[first]):g} at index {first}, but the model knows the "
                    f"classes 0..{self.n_classes - 1}: pass n_classes={max(int(x.max()) + 1, 1)} or "
                    "relabel the data"
                )
        elif tuple(x.shape[1:]) != self.condition_shape:
            raise DataError(
                f"{name} has examples of shape {tuple(x.shape[1:])} but the model expects "
                f"{self.condition_shape}: pass conditions of that shape, or build the model with "
                f"condition_shape={tuple(x.shape[1:])}"
            )
        return x

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        self.check(x)
        if self.n_classes is not None:
            return F.one_hot(x.long(), self.n_classes).to(like.dtype)
        return flatten_example(x, self.condition_shape).to(like.dtype)


class _ConditionalBase(LatentVariableModel):
    """What the conditional VAE and its baseline share: the target's decoder and the condition."""

    def _setup(self, input_shape, condition_shape, n_classes, likelihood, gaussian_scale, n_levels,
               in_features, hidden, activation) -> None:
        self.input_shape = as_shape(input_shape)
        self.condition = ConditionFeatures(condition_shape, n_classes)
        self.hidden = as_sizes(hidden)
        self.decoder = Decoder(in_features + self.condition.features, self.hidden[::-1], self.input_shape,
                               likelihood, scale=gaussian_scale, n_levels=n_levels, activation=activation)
        self.data_support = self.decoder.support

    def __repr__(self) -> str:
        """One line of settings (``torch.nn.Module.__repr__(model)`` prints the layers)."""
        condition = (f"n_classes={self.condition.n_classes}" if self.condition.n_classes is not None
                     else f"condition_shape={self.condition.condition_shape}")
        latent = f", latent_dim={self.latent_dim}" if hasattr(self, "latent_dim") else ""
        return (f"{type(self).__name__}(input_shape={self.input_shape}, {condition}{latent}, "
                f"hidden={self.hidden}, likelihood={self.decoder.likelihood!r}; "
                f"{parameter_count(self)} parameters)")

    def validate(self, x, name: str = "data") -> torch.Tensor:
        return check_levels(super().validate(x, name), self.decoder, name)

    def _prepare_condition(self, x, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A user's condition, validated and on this model's device; and a reference of its dtype."""
        ref = next(self.parameters())
        x = validate_condition(x, len(x) if n_rows is None else n_rows, name="x").to(ref.device)
        if x.is_floating_point():
            x = x.to(ref.dtype)
        return self.condition.check(x, "x"), ref

    def _prepare(self, y, x) -> tuple[torch.Tensor, torch.Tensor]:
        ref = next(self.parameters())
        y = self.validate(y, "y").to(device=ref.device, dtype=ref.dtype)
        x, _ = self._prepare_condition(x, len(y))
        return y, x


class ConditionalVAE(_ConditionalBase):
    """Conditional VAE: z ~ p(z | x) = N(mu(x), sigma(x)^2), y ~ p(y | x, z); q(z | x, y).

    ELBO(y | x) = E_q[log p(y | x, z) + log p(z | x)] + H(q(z | x, y)) <= log p(y | x), with a
    learned conditional prior network, a recognition network and a decoder that sees z and x.
    Data are ``(y, x)`` (see the module docstring); the target y has shape ``input_shape``
    and a likelihood as for the VAE; the condition is a tensor of ``condition_shape`` per
    example or a class label in 0..n_classes-1. Estimators: reparam, meanfield, iwae, score.

    Example:
        >>> cvae = ConditionalVAE((32,), condition_shape=(32,), latent_dim=2, hidden=(16,))
        >>> x = torch.randint(0, 2, (5, 32)).float()
        >>> cvae.sample(x).shape, cvae.predict(x, num_samples=4).shape
        (torch.Size([5, 32]), torch.Size([5, 32]))
    """

    default_kl_warmup = 100.0

    def __init__(
        self,
        input_shape: int | Sequence[int] = (64,),
        condition_shape: int | Sequence[int] | None = None,
        *,
        n_classes: int | None = None,
        latent_dim: int = 16,
        hidden: Sequence[int] = (256, 256),
        prior_hidden: Sequence[int] = (128,),
        likelihood: str = "bernoulli",
        gaussian_scale: float | str = "learned",
        n_levels: int = 17,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.latent_dim = check_latent_size(latent_dim)
        self._setup(input_shape, condition_shape, n_classes, likelihood, gaussian_scale, n_levels,
                    self.latent_dim, hidden, activation)
        c = self.condition.features
        prior_body, width = body(c, as_sizes(prior_hidden, "prior_hidden"), activation)
        self.prior_net = nn.Sequential(prior_body, DiagNormalHead(width, self.latent_dim))
        rec_body, width = body(math.prod(self.input_shape) + c, self.hidden, activation)
        self.recognition = nn.Sequential(rec_body, DiagNormalHead(width, self.latent_dim))

    def prior(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(z | x) from the condition's features c."""
        return dist.Normal(*self.prior_net(c)).to_event(1)

    def _posterior(self, y: torch.Tensor, c: torch.Tensor) -> dist.TorchDistribution:
        h = broadcast_cat(flatten_example(y, self.input_shape), c)
        return dist.Normal(*self.recognition(h)).to_event(1)

    @pyro_method
    def model(self, y: torch.Tensor, x: torch.Tensor) -> None:
        c = self.condition(x, y)
        with self.data_plate(y):
            z = pyro.sample("z", self.prior(c))
            pyro.sample("y", self.decoder(broadcast_cat(z, c)), obs=y)

    @pyro_method
    def guide(self, y: torch.Tensor, x: torch.Tensor) -> None:
        c = self.condition(x, y)
        with self.data_plate(y):
            pyro.sample("z", self._posterior(y, c))

    @torch.no_grad()
    def encode(self, y, x) -> dist.TorchDistribution:
        """q(z | x, y) with batch shape (N,)."""
        y, x = self._prepare(y, x)
        return self._posterior(y, self.condition(x, y))

    @torch.no_grad()
    def sample(self, x, *, mean: bool = False) -> torch.Tensor:
        """One y ~ p(y | x, z), z ~ p(z | x), per condition row (``mean=True``: E[y | x, z])."""
        x, ref = self._prepare_condition(x)
        c = self.condition(x, ref)
        z = self.prior(c).sample()
        h = broadcast_cat(z, c)
        return self.decoder.mean(h) if mean else self.decoder(h).sample()

    @torch.no_grad()
    def predict(self, x, *, num_samples: int = 100) -> torch.Tensor:
        """E[y | x] = E_{p(z | x)} E[y | x, z], by averaging the decoder's mean over z draws."""
        x, ref = self._prepare_condition(x)
        c = self.condition(x, ref)
        z = self.prior(c).sample((check_latent_size(num_samples, "num_samples"),))
        return self.decoder.mean(broadcast_cat(z, c)).mean(0)


class ConditionalBaseline(_ConditionalBase):
    """The deterministic baseline: y ~ p(y | f(x)), a network of x alone, no latent variable.

    log p(y | x) is exact, so a CVAE is judged by whether its log p(y | x) beats this one's.
    Train with ``objective="reparam"`` (the loss is then -log p(y | x), with no guide sites).

    Example:
        >>> base = ConditionalBaseline((64,), n_classes=10, hidden=(16,))
        >>> base.predict(torch.tensor([3, 7])).shape
        torch.Size([2, 64])
    """

    def __init__(
        self,
        input_shape: int | Sequence[int] = (64,),
        condition_shape: int | Sequence[int] | None = None,
        *,
        n_classes: int | None = None,
        hidden: Sequence[int] = (256, 256),
        likelihood: str = "bernoulli",
        gaussian_scale: float | str = "learned",
        n_levels: int = 17,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self._setup(input_shape, condition_shape, n_classes, likelihood, gaussian_scale, n_levels,
                    0, hidden, activation)

    @pyro_method
    def model(self, y: torch.Tensor, x: torch.Tensor) -> None:
        c = self.condition(x, y)
        with self.data_plate(y):
            pyro.sample("y", self.decoder(c), obs=y)

    @pyro_method
    def guide(self, y: torch.Tensor, x: torch.Tensor) -> None:
        """No latent variables: nothing to infer."""

    @torch.no_grad()
    def predict(self, x) -> torch.Tensor:
        """E[y | x]."""
        x, ref = self._prepare_condition(x)
        return self.decoder.mean(self.condition(x, ref))

    @torch.no_grad()
    def sample(self, x, *, mean: bool = False) -> torch.Tensor:
        """One y ~ p(y | x) per condition row (``mean=True``: E[y | x])."""
        x, ref = self._prepare_condition(x)
        c = self.condition(x, ref)
        return self.decoder.mean(c) if mean else self.decoder(c).sample()


def halves(split) -> tuple[torch.Tensor, torch.Tensor]:
    """(bottom half, top half) of each flattened example: the image-completion task's (y, x)."""
    x = split.x.reshape(len(split.x), -1)
    cut = x.shape[1] // 2
    return x[:, cut:], x[:, :cut]

