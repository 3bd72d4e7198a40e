"""Datasets and input validation, in three modules by concern.

- :mod:`lvm_pyro.data.validation`: the boundary. Every entry point of the library (``fit``,
  ``em``, the estimators, the CLI) passes user data through :func:`validate_data` once; code
  further in trusts it.
- :mod:`lvm_pyro.data.datasets`: data that needs no network, :func:`load_digits`
  (scikit-learn's embedded 8x8 digits) and :func:`make_mixture` (synthetic Gaussian mixtures
  with their truth).
- :mod:`lvm_pyro.data.files`: the user's own files, :func:`load_array` (.npy/.npz/.csv/.txt),
  :func:`load_idx` (MNIST-style IDX), joined by :func:`load_dataset` (the CLI's ``--data``).

Every name is re-exported here: ``from lvm_pyro.data import validate_data`` keeps working.
"""

from lvm_pyro.data.datasets import DigitsData, MixtureData, Split, load_digits, make_mixture
from lvm_pyro.data.files import load_array, load_dataset, load_idx
from lvm_pyro.data.validation import (
    SUPPORTS,
    resolve_device,
    validate_condition,
    validate_data,
    validate_with_conditions,
    value_kind,
)

__all__ = [
    "SUPPORTS",
    "DigitsData",
    "MixtureData",
    "Split",
    "load_array",
    "load_dataset",
    "load_digits",
    "load_idx",
    "make_mixture",
    "resolve_device",
    "validate_condition",
    "validate_data",
    "validate_with_conditions",
    "value_kind",
]
