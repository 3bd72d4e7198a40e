"""lvm_pyro: latent-variable models on Pyro, with SVI, EM and ArviZ diagnostics."""

from lvm_pyro import errors
from lvm_pyro.data import validate_data
from lvm_pyro.infer.callbacks import (
    Callback,
    Convergence,
    EarlyStopping,
    KLWarmup,
    LRScheduler,
    TrainState,
)
from lvm_pyro.infer.evaluate import elbo
from lvm_pyro.infer.objectives import ESTIMATORS, make_objective
from lvm_pyro.infer.svi import FitResult, fit
from lvm_pyro.models.base import LatentVariableModel

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "Callback",
    "Convergence",
    "EarlyStopping",
    "FitResult",
    "KLWarmup",
    "LRScheduler",
    "LatentVariableModel",
    "TrainState",
    "elbo",
    "errors",
    "fit",
    "make_objective",
    "validate_data",
]
