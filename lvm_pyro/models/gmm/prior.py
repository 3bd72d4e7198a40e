"""Priors on the Gaussian mixture's global parameters (flat by default: maximum likelihood)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from lvm_pyro.errors import ConfigurationError


def is_number(value, low: float | None = None) -> bool:
    """A finite real number (not a bool), above ``low`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value) and (low is None or value > low)


@dataclass(frozen=True)
class GMMPrior:
    """Priors on the global parameters; None leaves that parameter's prior flat.

    weights ~ Dirichlet(weight_concentration * 1_K);
    loc[k] ~ Normal(mean_loc, mean_scale^2 I), mean_loc one number or one per feature;
    precision ~ Wishart(precision_df, I / (precision_df * covariance_scale^2)) per component
    (full) or shared (tied), and each precision ~ Gamma(precision_df / 2,
    precision_df * covariance_scale^2 / 2) (diag, spherical): E[precision] = 1 /
    covariance_scale^2 either way.

    EM with a prior returns the MAP estimate (weights need weight_concentration >= 1 for an
    interior maximum); NUTS and SVI need every prior set.

    Example:
        >>> GMMPrior(weight_concentration=2.0, mean_scale=10.0).mean_scale
        10.0
    """

    weight_concentration: float | None = None
    mean_loc: float | tuple[float, ...] = 0.0
    mean_scale: float | None = None
    precision_df: float | None = None
    covariance_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("weight_concentration", "mean_scale", "precision_df"):
            value = getattr(self, name)
            if value is not None and not is_number(value, low=0.0):
                raise ConfigurationError(
                    f"GMMPrior.{name} must be a finite positive number or None, got {value!r}"
                )
        if not is_number(self.covariance_scale, low=0.0):
            raise ConfigurationError(
                f"GMMPrior.covariance_scale must be a finite positive number, got {self.covariance_scale!r}"
            )
        locs = self.mean_loc if isinstance(self.mean_loc, (tuple, list)) else (self.mean_loc,)
        if not locs or not all(is_number(v) for v in locs):
            raise ConfigurationError(
                f"GMMPrior.mean_loc must be a finite number or a tuple of them (one per feature), "
                f"got {self.mean_loc!r}"
            )

    @property
    def is_proper(self) -> bool:
        """True when every global parameter has a proper prior (needed by NUTS and SVI)."""
        return None not in (self.weight_concentration, self.mean_scale, self.precision_df)
