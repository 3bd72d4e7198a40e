"""lvm_pyro: latent-variable models on Pyro, with SVI, EM and ArviZ diagnostics.

The public API, re-exported. ``import lvm_pyro`` loads neither scikit-learn nor ArviZ nor
matplotlib and registers nothing globally: the scikit-learn facade (``GaussianMixture``) and
the diagnostics (ArviZ, plots) are imported on first access (module ``__getattr__``), and
``load_digits`` imports scikit-learn's embedded dataset when called.
"""

from importlib import import_module

from lvm_pyro import errors
from lvm_pyro.data import load_array, load_dataset, load_digits, load_idx, make_mixture, validate_data
from lvm_pyro.infer.callbacks import (
    Callback,
    Convergence,
    EarlyStopping,
    KLWarmup,
    LRScheduler,
    TrainState,
)
from lvm_pyro.infer.compile import Compilation
from lvm_pyro.infer.em import EMResult, em
from lvm_pyro.infer.evaluate import LogLikelihood, elbo, log_likelihood
from lvm_pyro.infer.mcmc import MCMCResult, mcmc
from lvm_pyro.infer.objectives import ESTIMATORS, OBJECTIVES, make_objective
from lvm_pyro.infer.online_em import OnlineEM, online_em
from lvm_pyro.infer.svi import FitResult, fit
from lvm_pyro.infer.trainer import Checkpointing, Distribution, Trainer
from lvm_pyro.models.base import LatentVariableModel, empty_guide
from lvm_pyro.models.blackbox import BlackBoxVI
from lvm_pyro.models.conditional import ConditionalBaseline, ConditionalVAE
from lvm_pyro.models.discrete import SigmoidBeliefNet
from lvm_pyro.models.gmm import GaussianMixtureModel, GMMPrior
from lvm_pyro.models.hierarchical import HierarchicalVAE
from lvm_pyro.models.mixture_prior import MixturePriorVAE
from lvm_pyro.models.registry import register_model
from lvm_pyro.models.vae import VAE

__version__ = "0.1.0"

#: Names loaded on first access (module ``__getattr__``): the scikit-learn facade imports
#: scikit-learn, the diagnostics ArviZ and matplotlib; ``import lvm_pyro`` loads none of them.
_LAZY = {
    "GaussianMixture": "lvm_pyro.estimators",
    "to_inference_data": "lvm_pyro.diagnostics.arviz",
    "psis_khat": "lvm_pyro.diagnostics.arviz",
    "PSISResult": "lvm_pyro.diagnostics.arviz",
    "loo": "lvm_pyro.diagnostics.arviz",
    "compare": "lvm_pyro.diagnostics.arviz",
    "gradient_variance": "lvm_pyro.diagnostics.gradients",
    "GradientVariance": "lvm_pyro.diagnostics.gradients",
    "select_components": "lvm_pyro.diagnostics.selection",
    "ComponentSelection": "lvm_pyro.diagnostics.selection",
    "plots": "lvm_pyro.diagnostics",
    "amortization_gap": "lvm_pyro.diagnostics.amortization",
    "AmortizationGap": "lvm_pyro.diagnostics.amortization",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return getattr(module, name) if name != "plots" else import_module("lvm_pyro.diagnostics.plots")
    raise AttributeError(f"module 'lvm_pyro' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ESTIMATORS",
    "OBJECTIVES",
    "Checkpointing",
    "Compilation",
    "Distribution",
    "Trainer",
    "OnlineEM",
    "online_em",
    "VAE",
    "BlackBoxVI",
    "Callback",
    "ConditionalBaseline",
    "ConditionalVAE",
    "Convergence",
    "EMResult",
    "EarlyStopping",
    "FitResult",
    "GMMPrior",
    "GaussianMixture",
    "GaussianMixtureModel",
    "HierarchicalVAE",
    "KLWarmup",
    "LRScheduler",
    "LatentVariableModel",
    "empty_guide",
    "LogLikelihood",
    "MCMCResult",
    "MixturePriorVAE",
    "SigmoidBeliefNet",
    "TrainState",
    "elbo",
    "em",
    "errors",
    "fit",
    "load_array",
    "load_dataset",
    "load_digits",
    "load_idx",
    "log_likelihood",
    "make_mixture",
    "make_objective",
    "mcmc",
    "register_model",
    "validate_data",
    *_LAZY,
]
