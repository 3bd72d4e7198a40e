"""Named models for the command line (``lvm-pyro fit NAME``).

A model module registers itself at import time::

    register_model(
        "vae",
        build=lambda data, **opts: VAE(input_shape=data.event_shape, **opts),
        description="variational autoencoder, Bernoulli pixels",
        data_options={"binarize": 8},
        fit_options={"epochs": 200, "batch_size": 64},
    )

``build(data, **options)`` receives the loaded dataset (``lvm_pyro.data.DigitsData``: train,
val and test splits) and the user's ``--option key=value`` pairs, and returns a model.
``prepare(split)`` turns one split into what the trainer takes (default: ``split.x``; a
conditional model returns a tuple such as ``(x_top, x_bottom)``).
``data_options`` are passed to ``lvm_pyro.data.load_dataset`` for the embedded digits (how
their grey levels 0..16 are prepared for this likelihood, e.g. ``{"binarize": 8}``); a user's
file is never transformed by them: the command line uses it as stored, or as ``--binarize``
says. ``fit_options`` are defaults for ``fit`` (or ``em`` when ``trainer="em"``) that
command-line flags override. The command line seeds every random number generator before
``build``, so a model's initialization is part of a reproducible run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

from lvm_pyro.errors import ConfigurationError

TRAINERS = ("fit", "em")


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it, prepare its data and train it by default."""

    name: str
    build: Callable
    description: str
    data_options: dict = field(default_factory=dict)
    fit_options: dict = field(default_factory=dict)
    trainer: str = "fit"
    prepare: Callable = field(default=lambda split: split.x)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    build: Callable,
    *,
    description: str,
    data_options: dict | None = None,
    fit_options: dict | None = None,
    trainer: str = "fit",
    prepare: Callable | None = None,
) -> ModelEntry:
    """Add a model under ``name`` (see the module docstring); returns its entry.

    Example:
        >>> entry = register_model("demo", lambda data: None, description="a demo")
        >>> entry.trainer
        'fit'
    """
    if trainer not in TRAINERS:
        raise ConfigurationError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    entry = ModelEntry(name, build, description, dict(data_options or {}), dict(fit_options or {}),
                       trainer, prepare or (lambda split: split.x))
    _REGISTRY[name] = entry
    return entry


def _import_model_modules() -> None:
    import lvm_pyro.models as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def available_models() -> dict[str, ModelEntry]:
    """Every registered model by name (imports each module of ``lvm_pyro.models`` once)."""
    _import_model_modules()
    return dict(sorted(_REGISTRY.items()))


def get_model(name: str) -> ModelEntry:
    """The entry registered under ``name``; the error lists the valid names."""
    models = available_models()
    if name not in models:
        valid = ", ".join(models) or "(none registered)"
        raise ConfigurationError(f"unknown model {name!r}; available models: {valid}")
    return models[name]


def accepted_options(entry: ModelEntry) -> tuple[str, ...] | None:
    """The ``--option`` names ``entry.build`` takes after the data, or None when it forwards
    ``**options`` to the model (which then refuses an unknown one itself).

    Example:
        >>> accepted_options(ModelEntry("demo", lambda data, scale=1.0: None, "a demo"))
        ('scale',)
    """
    try:
        parameters = list(inspect.signature(entry.build).parameters.values())[1:]
    except (TypeError, ValueError):  # a callable without a signature (a C function)
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in named)
