"""PSIS-LOO and model comparison: elpd = sum_i log p(x_i | x_-i) over the posterior draws.

The estimate comes from the ArviZ adapter (``az.loo`` / ``az.compare`` under arviz 0.2x,
``arviz_stats.loo`` / ``arviz_stats.compare`` under the 1.x API), given an InferenceData or a
DataTree or anything :func:`~lvm_pyro.diagnostics.export.to_inference_data` accepts. The result
is the same :class:`LOOResult` (and the same comparison columns) under both.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.diagnostics.export import to_inference_data
from lvm_pyro.errors import ConfigurationError, DiagnosticWarning

__all__ = ["LOOResult", "compare", "loo"]


@dataclass(frozen=True)
class LOOResult:
    """PSIS-LOO estimate of the expected log pointwise predictive density.

    ``elpd_loo`` = sum_i log p(x_i | x_-i) (nats), ``se`` its standard error, ``p_loo`` the
    effective number of parameters; ``loo_i`` and ``pareto_k`` (``xarray.DataArray`` over the
    data points) its pointwise terms and the Pareto k of each point's importance weights
    (above ``good_k``, at most 0.7, the point's estimate is unreliable); ``warning`` is ArviZ's
    flag that some k is too high. ``native`` is the installed ArviZ's own object (an
    ``ELPDData`` of arviz 0.2x or of arviz-stats); ``arviz_api`` says which (0 or 1). Items
    can also be read as ``result["elpd_loo"]``, as from arviz 0.2x's ELPDData.
    """

    elpd_loo: float
    se: float
    p_loo: float
    n_samples: int
    n_data_points: int
    warning: bool
    good_k: float
    scale: str = "log"
    loo_i: xr.DataArray | None = field(default=None, repr=False)
    pareto_k: xr.DataArray | None = field(default=None, repr=False)
    arviz_api: int = 0
    native: Any = field(default=None, repr=False, compare=False)

    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self) -> str:
        text = (
            f"LOOResult(elpd_loo={self.elpd_loo:.2f}, se={self.se:.2f}, p_loo={self.p_loo:.2f}, "
            f"{self.n_data_points} points x {self.n_samples} draws"
        )
        if self.pareto_k is not None:
            k = np.asarray(self.pareto_k, dtype=float)
            text += (
                f", max Pareto k {np.nanmax(k):.2f}, {int(np.sum(k > self.good_k))} above {self.good_k:.2f}"
            )
        return text + ")"


def _as_idata(result, data, **kwargs):
    return result if adapter.is_diagnostics_data(result) else to_inference_data(result, data, **kwargs)


def loo(result, data=None, *, pointwise: bool = True, var_name: str | None = None, **kwargs) -> LOOResult:
    """PSIS-LOO of a fitted model: elpd_loo = sum_i log p(x_i | x_-i), estimated by Pareto-smoothed
    importance sampling over the posterior draws (az.loo, or arviz_stats.loo under ArviZ 1.x).

    ``result`` is an InferenceData, a DataTree or anything :func:`to_inference_data` accepts
    (``kwargs`` are passed to it). The per-point Pareto k of the returned object flags
    influential points. ``var_name`` picks one observed site of a model with several; by default
    their joint log p(x_i | theta) is used (data point i left out with all its sites). LOO from a
    single point estimate is refused, and LOO where every draw shares one point estimate of the
    globals warns (``DiagnosticWarning``): it is then the in-sample fit, not a leave-one-out
    estimate.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), (len(x) + 1) ** -0.5))
        >>> bool(loo((model, guide), torch.randn(30), num_samples=200).elpd_loo < 0)
        True
    """
    idata = _joint_log_likelihood(_as_idata(result, data, **kwargs), var_name)
    out = adapter.psis_loo(idata, pointwise=pointwise, var_name=var_name)
    return LOOResult(
        elpd_loo=out["elpd_loo"],
        se=out["se"],
        p_loo=out["p_loo"],
        n_samples=out["n_samples"],
        n_data_points=out["n_data_points"],
        warning=out["warning"],
        good_k=out["good_k"],
        scale=out["scale"],
        loo_i=out["loo_i"],
        pareto_k=out["pareto_k"],
        arviz_api=out["api"],
        native=out["native"],
    )


def _joint_log_likelihood(idata, var_name: str | None):
    """Checked for LOO; with several observed sites and no ``var_name``, a copy whose
    log_likelihood is their sum, log p(x_i | theta) over every site of data point i (the export's
    variables are the chain-rule terms of that joint)."""
    _check_loo(idata)
    group = adapter.group(idata, "log_likelihood")
    names = list(group.data_vars)
    if var_name is not None:
        if var_name not in names:
            raise ConfigurationError(f"var_name {var_name!r} is not in the log_likelihood group: {names}")
        return idata
    if len(names) == 1:
        return idata
    joint = sum(group[n] for n in names[1:]) + group[names[0]]
    return adapter.with_group(idata, "log_likelihood", xr.Dataset({"joint": joint}, attrs=group.attrs))


def _check_loo(idata) -> None:
    """Refuse LOO where it cannot mean a leave-one-out estimate."""
    if "log_likelihood" not in adapter.group_names(idata):
        raise ConfigurationError(
            "LOO needs a log_likelihood group: make the InferenceData with "
            "lvm_pyro.to_inference_data(result, data)"
        )
    sizes = adapter.group(idata, "log_likelihood").sizes
    draws = sizes["chain"] * sizes["draw"]
    if draws < 2:
        raise ConfigurationError(
            "LOO needs posterior draws, but this InferenceData holds one (a point estimate, e.g. "
            "from em), so PSIS-LOO cannot be computed: fit a posterior over the globals by SVI "
            "(e.g. AutoNormal) or NUTS, compare mixtures with select_components(..., "
            "criterion='loo'), or compare on held-out data with lvm_pyro.log_likelihood"
        )
    if _flag(adapter.root_attrs(idata).get("lvm_pyro_point_estimate")):
        warnings.warn(
            "every draw shares one point estimate of the global parameters, so this elpd_loo is "
            "the in-sample sum of log p(x_i | theta_hat), not a leave-one-out estimate (optimistic "
            "for a model that overfits): compare such models on held-out data with "
            "lvm_pyro.log_likelihood, or fit a posterior over the globals (AutoNormal, NUTS)",
            DiagnosticWarning,
            stacklevel=3,
        )


def _flag(value) -> bool:
    """An attribute written as 0/1 by the export, also after a netCDF round trip (which may
    return it as the string "0" or "1")."""
    if isinstance(value, (str, bytes)):
        return value.strip() not in ("", "0", b"", b"0", "False", "false")
    return bool(value)


def compare(results: Mapping[str, object], data=None, *, ic: str = "loo", **kwargs):
    """Rank models by expected log predictive density (az.compare, or arviz_stats.compare under
    ArviZ 1.x): a pandas table with elpd_loo, p_loo, its standard error se, the difference to the
    best model elpd_diff and its standard error dse, and stacking weights (the same columns
    under both).

    ``results`` maps names to InferenceData / DataTree or to anything :func:`to_inference_data`
    accepts (each converted with ``data`` and ``kwargs``). ``ic="waic"`` needs arviz 0.2x.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def good(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1), (len(x) + 1) ** -0.5))
        >>> def off(x):
        ...     pyro.sample("mu", dist.Normal(x.sum() / (len(x) + 1) + 2.0, 0.1))
        >>> x = torch.randn(30)
        >>> compare({"good": (model, good), "off": (model, off)}, x, num_samples=200).index[0]
        'good'
    """
    if not isinstance(results, Mapping) or not results:
        raise ConfigurationError("compare needs a dict {name: result or InferenceData} of models")
    if ic not in ("loo", "waic"):
        raise ConfigurationError(f"ic must be 'loo' or 'waic', got {ic!r}")
    idatas = {name: _joint_log_likelihood(_as_idata(r, data, **kwargs), None) for name, r in results.items()}
    return adapter.compare_models(idatas, ic=ic)
