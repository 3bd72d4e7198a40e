"""Posterior predictive checks: the observed data against replicated data x_rep ~ p(x | draw)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from lvm_pyro.checks import check_count
from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.errors import ConfigurationError

__all__ = ["plot_ppc"]


def plot_ppc(
    idata,
    *,
    kind: str = "kde",
    num_pp_samples: int | None = 50,
    var_names: Sequence[str] | None = None,
    ax=None,
    seed: int = 0,
) -> Figure:
    """Posterior predictive check: the observed data against replicated data x_rep ~ p(x | draw).

    ``idata``: an InferenceData (drawn by ``az.plot_ppc``) or a DataTree of ArviZ 1.x (drawn by
    lvm_pyro with matplotlib: replicated draws thin, their pooled curve dashed, the data thick),
    from ``to_inference_data(..., posterior_predictive=True)``. Kind "kde", "cumulative" or
    "scatter", on a new headless Figure (or on ``ax``); returns the Figure.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> def guide(x):
        ...     pyro.sample("mu", dist.Normal(x.mean(), 0.2))
        >>> from lvm_pyro import to_inference_data
        >>> fig = plot_ppc(to_inference_data((model, guide), torch.randn(30), num_samples=50))
        >>> type(fig).__name__
        'Figure'
    """
    if not adapter.is_diagnostics_data(idata) or "posterior_predictive" not in adapter.group_names(idata):
        raise ConfigurationError(
            "plot_ppc needs an InferenceData with a posterior_predictive group: make it with "
            "to_inference_data(result, data, posterior_predictive=True)"
        )
    if kind not in ("kde", "cumulative", "scatter"):
        raise ConfigurationError(f"kind must be 'kde', 'cumulative' or 'scatter', got {kind!r}")
    if num_pp_samples is not None:
        check_count(num_pp_samples, "num_pp_samples")
    present = list(adapter.group(idata, "posterior_predictive").data_vars)
    names = list(var_names) if var_names is not None else present
    unknown = [n for n in names if n not in present]
    if unknown or not names:
        raise ConfigurationError(
            f"var_names {unknown or names} are not in the posterior_predictive group; its observed "
            f"sites are {present}"
        )
    if ax is None:
        fig = Figure(figsize=(5 * len(names), 3.5), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
    else:
        fig = ax.figure
        axes = np.atleast_1d(ax)
    adapter.draw_ppc(idata, kind=kind, num_pp_samples=num_pp_samples, var_names=names, axes=axes, seed=seed)
    return fig
