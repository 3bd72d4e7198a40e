"""Argument checks shared by every public function: each check is defined here once.

Each returns the value normalized (a Python int or float) or raises
:class:`lvm_pyro.errors.ConfigurationError` with the argument's name and what to pass.
"""

from __future__ import annotations

import math

import numpy as np

from lvm_pyro.errors import ConfigurationError


def check_seed(seed, name: str = "seed", span: int = 1) -> int | None:
    """None, or an integer seed such that seed .. seed + span - 1 are all valid RNG seeds (< 2**32).

    Example:
        >>> check_seed(3), check_seed(None)
        (3, None)
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2**32 - span:
        raise ConfigurationError(f"{name} must be None or an integer in [0, {2**32 - span}], got {seed!r}")
    return int(seed)


def check_int(value, name: str, minimum: int) -> int:
    """An integer >= ``minimum`` (not a bool), refused as ``name=value: pass an integer >= minimum``.

    Example:
        >>> check_int(0, "seed", 0)
        0
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigurationError(f"{name}={value!r}: pass an integer >= {minimum}")
    return int(value)


def check_count(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (not a bool): a number of samples, steps, components.

    Example:
        >>> check_count(np.int64(4), "num_samples")
        4
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigurationError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> float:
    """A finite positive number (a learning rate, a scale), refused otherwise with its name.

    Example:
        >>> check_positive(0.5, "lr")
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def check_plate_name(value, name: str = "data_plate") -> str:
    """A non-empty plate name.

    Example:
        >>> check_plate_name("sequences")
        'sequences'
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be the name of a plate (a non-empty str), got {value!r}")
    return value
