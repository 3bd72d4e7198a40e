"""The contract every latent-variable model keeps.

A model is a Pyro program p(x, z) = p(z) p(x | z) written as a ``model`` method, with a
``guide`` method q(z | x) over the same latent sample sites. The inference wrappers
(``fit``, ``em``, evaluation, diagnostics) only use what is written here, so a user's own
model (a subclass, or a plain pair of callables) runs through every one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro.nn import PyroModule

from lvm_pyro.checks import check_count
from lvm_pyro.data import validate_data
from lvm_pyro.errors import ConfigurationError

#: Name of the plate over data points. ``fit`` scales the sites inside it by N / batch size
#: so that a minibatch ELBO is an unbiased estimate of the full-data ELBO.
DATA_PLATE = "data"


class LatentVariableModel(PyroModule):
    """Base class of the library's models; subclass it to write your own.

    Required: ``model(x, *cond)`` and ``guide(x, *cond)``, both Pyro programs. Observations
    are sample sites with ``obs=`` inside ``pyro.plate("data", len(x))`` (see
    :meth:`data_plate`); every latent sample site of the model is either sampled by the guide
    or marked for enumeration (``infer={"enumerate": "parallel"}``).

    Optional, each used where present: ``m_step(x, posterior)`` (closed-form M-step for
    ``em``), ``sample(n)`` (generation), ``encode(x)`` (q(z | x) as a distribution).

    Class attributes the wrappers read:
        input_shape: shape of one example, e.g. ``(64,)`` or ``(8, 8)``; None skips the check.
        data_support: values the likelihood accepts, a key of ``lvm_pyro.data.SUPPORTS``.
        max_plate_nesting: how many plates nest in the model (Pyro's ELBO argument).
        default_kl_warmup: epochs of linear KL warm-up ``fit`` uses unless told otherwise.

    Example:
        >>> import pyro.distributions as dist
        >>> class NormalMean(LatentVariableModel):
        ...     input_shape = (1,)
        ...     def model(self, x):
        ...         with self.data_plate(x):
        ...             z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        ...             pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])
        ...     def guide(self, x):
        ...         with self.data_plate(x):
        ...             pyro.sample("z", dist.Normal(x[:, 0] / 2, 0.5**0.5))
    """

    input_shape: tuple[int, ...] | None = None
    data_support: str = "real"
    max_plate_nesting: int | None = 1
    default_kl_warmup: float = 0.0

    def model(self, x: torch.Tensor, *cond: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define model(x, *cond)")

    def guide(self, x: torch.Tensor, *cond: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define guide(x, *cond)")

    def forward(self, x: torch.Tensor, *cond: torch.Tensor) -> None:
        return self.model(x, *cond)

    @staticmethod
    def data_plate(x: torch.Tensor) -> pyro.plate:
        """The plate over the examples of ``x`` (its first dimension), at dim -1."""
        return pyro.plate(DATA_PLATE, x.shape[0], dim=-1)

    def validate(self, x, name: str = "data") -> torch.Tensor:
        """Validate user data against this model's example shape and likelihood support."""
        return validate_data(x, name=name, event_shape=self.input_shape, support=self.data_support)


def check_latent_size(latent_dim: int, name: str = "latent_dim") -> int:
    """Refuse a latent size below one (or a bool) with a message that names the fix."""
    return check_count(latent_dim, name)


@dataclass(frozen=True)
class Program:
    """A model/guide pair as the wrappers see it.

    ``module`` is the torch module holding the pair's parameters (moved to the data's device
    and dtype, saved in checkpoints); it is None for plain callables whose parameters live in
    Pyro's param store only.
    """

    model: Callable
    guide: Callable
    module: torch.nn.Module | None
    max_plate_nesting: int | None = None
    kl_warmup: float = 0.0
    source: object = None

    def validate(self, x, name: str = "data") -> torch.Tensor:
        if isinstance(self.source, LatentVariableModel):
            return self.source.validate(x, name)
        shape = tuple(np.shape(x))
        return validate_data(x, name=name, event_shape=shape[1:] if shape else None)


def empty_guide(*args, **kwargs) -> None:
    """The guide of a model with no latent site to sample: every latent site is discrete and
    summed out by enumeration, and the parameters are ``pyro.param``s (Pyro's HMM example).

    Example:
        >>> empty_guide(None) is None
        True
    """


def as_program(model, guide: Callable | None = None) -> Program:
    """Accept a LatentVariableModel, any object with ``model``/``guide`` methods, a
    ``(model, guide)`` tuple, or a model callable with ``guide=``.

    Example:
        >>> def m(x): ...
        >>> def g(x): ...
        >>> as_program((m, g)).guide is g
        True
    """
    if isinstance(model, Program):
        return model
    if isinstance(model, tuple):
        if len(model) != 2 or guide is not None:
            raise ConfigurationError(
                "pass a model as a LatentVariableModel, a (model, guide) pair, or model=... with guide=..."
            )
        model, guide = model
    if guide is None and hasattr(model, "model") and hasattr(model, "guide"):
        modules = [m for m in (model,) if isinstance(m, torch.nn.Module)]
        return Program(
            model=model.model,
            guide=model.guide,
            module=modules[0] if modules else None,
            max_plate_nesting=getattr(model, "max_plate_nesting", None),
            kl_warmup=float(getattr(model, "default_kl_warmup", 0.0)),
            source=model,
        )
    if not callable(model) or not callable(guide):
        raise ConfigurationError(
            "a model needs a guide: pass a LatentVariableModel, a (model, guide) pair of "
            "callables, or guide=... (for example pyro.infer.autoguide.AutoNormal(model), or "
            "lvm_pyro.empty_guide for a model whose latent sites are all enumerated)"
        )
    parts: list[torch.nn.Module] = []
    for fn in (model, guide):
        owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
        if isinstance(owner, torch.nn.Module) and not any(owner is p for p in parts):
            parts.append(owner)  # a module, or the module behind a bound method (Pyro's VAE example)
    module = parts[0] if len(parts) == 1 else (torch.nn.ModuleList(parts) if parts else None)
    nesting = [getattr(p, "max_plate_nesting", None) for p in parts]
    return Program(model=model, guide=guide, module=module, source=(model, guide),
                   max_plate_nesting=nesting[0] if len(nesting) == 1 else None)
