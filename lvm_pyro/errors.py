"""Exceptions raised by lvm_pyro.

Every error a user can cause is one of these. Each subclasses the built-in a
caller would catch (``ValueError``, ``TypeError``, ``RuntimeError``, ``OSError``)
and its message names the problem and the fix.
"""

from __future__ import annotations


class LVMError(Exception):
    """Base class of every lvm_pyro error."""


class DataError(LVMError, ValueError):
    """The data is unusable: NaN/inf, wrong rank or shape, empty, outside a likelihood's support."""


class DataTypeError(LVMError, TypeError):
    """The data has a type or dtype that cannot be used (and is not converted silently)."""


class ConfigurationError(LVMError, ValueError):
    """An argument is invalid: unknown estimator, bad size, incompatible options."""


class ModelContractError(LVMError, ValueError):
    """A model or guide does not keep the contract (missing latent site, no data plate, ...)."""


class DivergenceError(LVMError, RuntimeError):
    """Training produced a non-finite loss or gradient; the last good parameters are kept."""


class CheckpointError(LVMError, OSError):
    """A checkpoint cannot be written, found or safely read."""


class NotFittedError(LVMError, ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class DiagnosticWarning(UserWarning):
    """A diagnostic was computed, but it cannot mean what its name suggests here (say, LOO from one
    point estimate); the message says why and what to use instead."""


class ConvergenceWarning(RuntimeWarning):
    """An iterative fit stopped without converging (a stalled M-step, the iteration limit)."""
