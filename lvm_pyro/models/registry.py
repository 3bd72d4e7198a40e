"""Named models for the command line (``lvm-pyro fit NAME``).

The command line's settings live here, with the command line, not in the model files: a
model class knows nothing of the digits or of default epochs. The built-in names are
registered the first time they are looked up; a user adds one with::

    register_model(
        "myvae",
        build=lambda data, **opts: MyVAE(input_shape=data.event_shape, **opts),
        description="my variational autoencoder, Bernoulli pixels",
        options=MyVAE, fixed=("input_shape",),
        data_options={"binarize": 8},
        fit_options={"epochs": 200, "batch_size": 64},
    )

``build(data, **options)`` receives the loaded dataset (``lvm_pyro.data.DigitsData``: train,
val and test splits) and the user's ``--option key=value`` pairs, and returns a model. The
options a model takes are the keyword parameters of ``build`` after ``data``; where ``build``
forwards ``**options`` to a class, ``options=`` names that class and ``fixed=`` the parameters
``build`` sets from the data (they are not options). ``prepare(split)`` turns one split into
what the trainer takes (default: ``split.x``; a conditional model returns a tuple such as
``(x_top, x_bottom)``). ``data_options`` are passed to ``lvm_pyro.data.load_dataset`` for the
embedded digits (how their grey levels 0..16 are prepared for this likelihood, e.g.
``{"binarize": 8}``); a user's file is never transformed by them: the command line uses it as
stored, or as ``--binarize`` says. ``fit_options`` are defaults for ``fit`` (or ``em`` when
``trainer="em"``) that command-line flags override. The command line seeds every random
number generator before ``build``, so a model's initialization is part of a reproducible run.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from lvm_pyro.errors import ConfigurationError, DataError

TRAINERS = ("fit", "em")


def _features(split):
    return split.x


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it, prepare its data and train it by default."""

    name: str
    build: Callable
    description: str
    data_options: dict = field(default_factory=dict)
    fit_options: dict = field(default_factory=dict)
    trainer: str = "fit"
    prepare: Callable = field(default=_features)
    options: Callable | None = None
    fixed: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"ModelEntry({self.name!r}, trainer={self.trainer!r}, {self.description!r})"


_REGISTRY: dict[str, ModelEntry] = {}
_BUILTINS_LOADED = False


def register_model(
    name: str,
    build: Callable,
    *,
    description: str,
    data_options: dict | None = None,
    fit_options: dict | None = None,
    trainer: str = "fit",
    prepare: Callable | None = None,
    options: Callable | None = None,
    fixed: tuple[str, ...] = (),
) -> ModelEntry:
    """Add a model under ``name`` (see the module docstring); returns its entry. A name given
    again replaces the earlier entry (a built-in one included).

    Example:
        >>> entry = register_model("demo", lambda data: None, description="a demo")
        >>> entry.trainer
        'fit'
    """
    if trainer not in TRAINERS:
        raise ConfigurationError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    entry = ModelEntry(
        name,
        build,
        description,
        dict(data_options or {}),
        dict(fit_options or {}),
        trainer,
        prepare or _features,
        options,
        tuple(fixed),
    )
    _REGISTRY[name] = entry
    return entry


def available_models() -> dict[str, ModelEntry]:
    """Every registered model by name: the built-in ones and those a user registered."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_model(name: str) -> ModelEntry:
    """The entry registered under ``name``; the error lists the valid names."""
    models = available_models()
    if name not in models:
        valid = ", ".join(models) or "(none registered)"
        raise ConfigurationError(f"unknown model {name!r}; available models: {valid}")
    return models[name]


def model_options(entry: ModelEntry) -> dict[str, object] | None:
    """The ``--option`` names a model takes, each with its default (``inspect.Parameter.empty``
    where it has none), or None when ``build`` forwards ``**options`` to something unnamed
    (the model then refuses an unknown option itself).

    Example:
        >>> model_options(ModelEntry("demo", lambda data, scale=1.0: None, "a demo"))
        {'scale': 1.0}
    """
    found = _keyword_parameters(entry.build, skip_first=True)
    if found is None:
        return None
    named, forwards = found
    if forwards:
        if entry.options is None:
            return None
        inner = _keyword_parameters(entry.options, skip_first=False)
        if inner is None:
            return None
        for name, default in inner[0].items():
            if name not in entry.fixed:
                named.setdefault(name, default)
    return named


def accepted_options(entry: ModelEntry) -> tuple[str, ...] | None:
    """The ``--option`` names of ``entry`` (see :func:`model_options`), or None when unknown.

    Example:
        >>> accepted_options(ModelEntry("demo", lambda data, scale=1.0: None, "a demo"))
        ('scale',)
    """
    options = model_options(entry)
    return None if options is None else tuple(options)


def _keyword_parameters(fn: Callable, *, skip_first: bool) -> tuple[dict[str, object], bool] | None:
    """{name: default} of ``fn``'s parameters that can be passed by keyword, and whether it
    takes ``**kwargs``; None for a callable without a signature (a C function)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if skip_first:
        parameters = parameters[1:]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    options = {p.name: p.default for p in parameters if p.kind in named}
    return options, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


# ------------------------------------------------------------------------------------------
# The built-in models on the embedded digits (8x8 grey levels 0..16)
# ------------------------------------------------------------------------------------------

#: how the digits are prepared for a Bernoulli likelihood: grey level >= 8 of 0..16 -> 1
BINARY_DIGITS = {"binarize": 8}


def _with_labels(split):
    if split.y is None:
        raise DataError(
            "the label-conditional model needs labels: use --data digits, a .npz with arrays 'x' and "
            "'y', or pass --labels FILE"
        )
    return split.x, split.y


def _completion_shapes(data) -> tuple[tuple[int], tuple[int]]:
    features = math.prod(data.event_shape)
    return (features - features // 2,), (features // 2,)


def _digits_mixture(
    data, n_components: int = 10, covariance_type: str = "diag", reg_covar: float = 1e-2, **options
):
    from lvm_pyro.models.gmm import GaussianMixtureModel

    return GaussianMixtureModel(
        n_components, math.prod(data.event_shape), covariance_type, reg_covar=reg_covar, **options
    )


def _image_model(name: str, cls: type, description: str, fit_options: dict) -> dict:
    """The registration of a model of binarized images built as ``cls(input_shape, **options)``."""
    return dict(name=name, build=lambda data, **options: cls(data.event_shape, **options), options=cls,
                fixed=("input_shape",), description=description, data_options=BINARY_DIGITS,
                fit_options=fit_options)


def _completion_model(name: str, cls: type, description: str, fit_options: dict, prepare: Callable) -> dict:
    """The registration of a model completing the bottom half of an image from its top half,
    built as ``cls(bottom_shape, top_shape, **options)``."""
    return dict(name=name, build=lambda data, **options: cls(*_completion_shapes(data), **options),
                options=cls, fixed=("input_shape", "condition_shape", "n_classes"),
                description=description, data_options=BINARY_DIGITS, fit_options=fit_options,
                prepare=prepare)


def _load_builtins() -> None:
    """Register the library's models once, under names a user has not taken already."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from lvm_pyro.models.conditional import ConditionalBaseline, ConditionalVAE, halves
    from lvm_pyro.models.discrete import SigmoidBeliefNet
    from lvm_pyro.models.gmm import GaussianMixtureModel
    from lvm_pyro.models.hierarchical import HierarchicalVAE
    from lvm_pyro.models.mixture_prior import MixturePriorVAE
    from lvm_pyro.models.vae import VAE

    def label_cvae(data, **options):
        _with_labels(data.train)
        return ConditionalVAE(data.event_shape, n_classes=int(data.train.y.max()) + 1, **options)

    vae_training = {"epochs": 300, "batch_size": 64}
    builtins = [
        dict(
            name="gmm",
            build=_digits_mixture,
            options=GaussianMixtureModel,
            fixed=("n_features",),
            description="Gaussian mixture, 10 diagonal components (reg_covar 0.01 on pixels in [0, 1]), "
            "by EM",
            data_options={"scale": True},
            fit_options={"max_iter": 200, "tol": 1e-4, "n_init": 3},
            trainer="em",
        ),
        _image_model("vae", VAE, "variational autoencoder, Bernoulli pixels, N(0, I) prior, KL warm-up",
                     vae_training),
        _image_model("hvae", HierarchicalVAE,
                     "hierarchical VAE, two Gaussian layers (16, 8), bottom-up guide, Bernoulli pixels",
                     vae_training),
        _image_model("mixvae", MixturePriorVAE,
                     "VAE with a learned 10-component mixture-of-Gaussians prior, Bernoulli pixels",
                     vae_training),
        _image_model("sbn", SigmoidBeliefNet,
                     "sigmoid belief network (binary latents), trained by score-function gradients",
                     {"objective": "score", "epochs": 200, "batch_size": 64, "lr": 3e-3}),
        _completion_model("cvae", ConditionalVAE,
                          "conditional VAE completing the bottom half of each image from its top half",
                          vae_training, halves),
        _completion_model("cvae-baseline", ConditionalBaseline,
                          "deterministic network predicting the bottom half of each image from its top half",
                          {"epochs": 100, "batch_size": 64, "kl_warmup": 0}, halves),
        dict(
            name="cvae-label",
            build=label_cvae,
            options=ConditionalVAE,
            fixed=("input_shape", "condition_shape", "n_classes"),
            description="conditional VAE generating a digit image from its class label",
            data_options=BINARY_DIGITS,
            fit_options=vae_training,
            prepare=_with_labels,
        ),
    ]
    for spec in builtins:
        if spec["name"] not in _REGISTRY:
            register_model(spec.pop("name"), spec.pop("build"), **spec)
