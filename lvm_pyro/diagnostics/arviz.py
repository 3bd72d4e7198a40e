"""The one adapter to ArviZ: the only module of lvm_pyro that imports arviz, arviz_base or arviz_stats.

Two ArviZ APIs are served, chosen by :func:`api`:

- ``0``: arviz 0.2x (``arviz<1``, Python 3.10/3.11): diagnostics data is an ``az.InferenceData``;
  PSIS, LOO and comparison through ``az.psislw``, ``az.loo``, ``az.compare``.
- ``1``: the ArviZ 1.x API (``arviz-base`` and ``arviz-stats``, 0.8 and later; the only ArviZ on
  Python 3.12+): diagnostics data is an ``xarray.DataTree`` with the same groups, dims, coords
  and attrs; PSIS, LOO and comparison through ``arviz_stats``.

The choice: ``api(requested)`` if given, else the environment variable ``LVM_PYRO_ARVIZ=0|1``,
else arviz 0.2x where it is installed, else the 1.x API. Functions that read diagnostics data
(:func:`loo`, :func:`compare`, :func:`plot_ppc`) follow the type of the data they are given.
Results are normalized here (:func:`loo` returns plain numbers and arrays, :func:`compare` the
0.2x column names) so that nothing above this module depends on which ArviZ is installed.

The public names of the split modules (``to_inference_data``, ``psis_khat``, ``loo``,
``compare``, ``plot_ppc``, ``PSISResult``, ``LOOResult``, ``KHAT_GOOD``, ``KHAT_OK``) stay
importable from here, resolved on first access (``__getattr__``), so that this module imports
none of them.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from lvm_pyro.errors import ConfigurationError

#: The environment variable that picks the ArviZ API: "0" (arviz 0.2x) or "1" (arviz-base/-stats).
ENV_VAR = "LVM_PYRO_ARVIZ"
#: arviz 0.2x: ``InferenceData``.
LEGACY = 0
#: ArviZ 1.x API (arviz-base, arviz-stats): ``xarray.DataTree``.
DATATREE = 1

_PUBLIC = {
    "to_inference_data": "lvm_pyro.diagnostics.export",
    "psis_khat": "lvm_pyro.diagnostics.psis",
    "PSISResult": "lvm_pyro.diagnostics.psis",
    "KHAT_GOOD": "lvm_pyro.diagnostics.psis",
    "KHAT_OK": "lvm_pyro.diagnostics.psis",
    "loo": "lvm_pyro.diagnostics.loo",
    "compare": "lvm_pyro.diagnostics.loo",
    "LOOResult": "lvm_pyro.diagnostics.loo",
    "plot_ppc": "lvm_pyro.diagnostics.ppc",
}

__all__ = [
    "DATATREE",
    "ENV_VAR",
    "LEGACY",
    "api",
    "api_of",
    "available_apis",
    "build",
    "compare_models",
    "draw_ppc",
    "from_netcdf",
    "group",
    "group_names",
    "is_diagnostics_data",
    "pareto_khat",
    "psis_loo",
    "root_attrs",
    "summary",
    "to_netcdf",
    "versions",
    "with_group",
    *_PUBLIC,
]


def __getattr__(name: str) -> Any:
    """The public names of the export, PSIS, LOO and PPC modules, loaded on first access."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------------------
# Which ArviZ
# ------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """The installed ArviZ distributions and their versions, e.g. ``{"arviz": "0.23.4"}``."""
    out = {name: _version(name) for name in ("arviz", "arviz-base", "arviz-stats")}
    return {k: v for k, v in out.items() if v is not None}


def available_apis() -> tuple[int, ...]:
    """The ArviZ APIs that can be used here: 0 (arviz 0.2x installed), 1 (arviz-base and arviz-stats)."""
    out = []
    legacy = _version("arviz")
    if legacy is not None and int(legacy.split(".")[0]) < 1 and importlib.util.find_spec("arviz"):
        out.append(LEGACY)
    if importlib.util.find_spec("arviz_base") and importlib.util.find_spec("arviz_stats"):
        out.append(DATATREE)
    return tuple(out)


def api(requested: int | str | None = None) -> int:
    """The ArviZ API to use: 0 (arviz 0.2x, InferenceData) or 1 (arviz-base/-stats, DataTree).

    ``requested`` (or, when None, the environment variable ``LVM_PYRO_ARVIZ``) picks one; by
    default arviz 0.2x where it is installed, else the 1.x API. A request for an API that is
    not installed is refused with the packages to install.

    Example:
        >>> api() in available_apis()
        True
    """
    if requested is None:
        requested = os.environ.get(ENV_VAR) or None
    have = available_apis()
    if requested is None:
        if not have:
            raise ConfigurationError(
                "no ArviZ is installed: pip install 'arviz>=0.21,<1' (Python < 3.12) or "
                "'arviz-base>=0.8' 'arviz-stats[xarray]>=0.8'"
            )
        return have[0]
    choice = {"0": LEGACY, "1": DATATREE, LEGACY: LEGACY, DATATREE: DATATREE}.get(
        requested if isinstance(requested, (int, str)) and not isinstance(requested, bool) else None
    )
    if choice is None:
        raise ConfigurationError(
            f"the ArviZ API must be 0 (arviz 0.2x) or 1 (arviz-base/arviz-stats), got {requested!r} "
            f"(from the argument or {ENV_VAR})"
        )
    if choice not in have:
        need = "'arviz>=0.21,<1'" if choice == LEGACY else "'arviz-base>=0.8' 'arviz-stats[xarray]>=0.8'"
        raise ConfigurationError(
            f"ArviZ API {choice} was requested ({ENV_VAR} or argument) but is not installed: "
            f"pip install {need} (installed: {versions() or 'none'})"
        )
    return choice


@functools.cache
def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


@functools.cache
def _base():
    import arviz_base

    return arviz_base


@functools.cache
def _stats():
    import arviz_stats

    return arviz_stats


# ------------------------------------------------------------------------------------------
# Diagnostics data: InferenceData or DataTree
# ------------------------------------------------------------------------------------------


def api_of(data) -> int | None:
    """0 for an InferenceData, 1 for an ``xarray.DataTree``, None for anything else."""
    if isinstance(data, xr.DataTree):
        return DATATREE
    if LEGACY in available_apis() and isinstance(data, _az().InferenceData):
        return LEGACY
    return None


def is_diagnostics_data(data) -> bool:
    """Whether ``data`` is an InferenceData (arviz 0.2x) or a DataTree (ArviZ 1.x)."""
    return api_of(data) is not None


def build(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    *,
    coords: Mapping,
    dims: Mapping,
    attrs: Mapping[str, Any],
    extra: Mapping[str, xr.Dataset] | None = None,
    api_version: int | None = None,
):
    """An InferenceData (API 0) or a DataTree (API 1) from arrays ``{group: {name: array}}``.

    Sample groups lead with (chain, draw); ``observed_data`` has no sample dims. ``attrs`` go on
    the whole (``idata.attrs`` / the tree's root) and on the observed_data group, as
    ``az.from_dict`` does. ``extra`` are groups given as ready Datasets (sample_stats).
    """
    version = api(api_version)
    groups = {g: dict(v) for g, v in groups.items() if v}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if version == LEGACY:
            data = _az().from_dict(**groups, coords=dict(coords), dims=dict(dims), attrs=dict(attrs))
            if extra:
                data.add_groups(**extra)
            return data
        tree = _base().from_dict(
            groups,
            coords=dict(coords),
            dims=dict(dims),
            attrs={"/": dict(attrs), "observed_data": dict(attrs)}
            if "observed_data" in groups
            else {"/": dict(attrs)},
        )
    for name, ds in (extra or {}).items():
        tree[name] = xr.DataTree(ds)
    return tree


def group_names(data) -> list[str]:
    """The groups of an InferenceData or a DataTree, e.g. ["posterior", "log_likelihood", ...]."""
    if api_of(data) == DATATREE:
        return list(data.children)
    return list(data.groups())


def group(data, name: str) -> xr.Dataset:
    """One group as an ``xarray.Dataset`` (KeyError naming the groups if it is absent)."""
    if name not in group_names(data):
        raise KeyError(f"no group {name!r}; groups: {group_names(data)}")
    if api_of(data) == DATATREE:
        return data[name].to_dataset()
    return getattr(data, name)


def root_attrs(data) -> dict:
    """The attributes of the whole (``idata.attrs``, or the tree's root)."""
    return dict(getattr(data, "attrs", {}) or {})


def with_group(data, name: str, dataset: xr.Dataset):
    """A copy of ``data`` with group ``name`` replaced by ``dataset``."""
    out = data.copy()
    if api_of(data) == DATATREE:
        out[name] = xr.DataTree(dataset)
    else:
        setattr(out, name, dataset)
    return out


def to_netcdf(data, path) -> None:
    """Write an InferenceData or a DataTree to a netCDF-4 file (HDF5 groups, h5netcdf engine)."""
    if api_of(data) == DATATREE:
        data.to_netcdf(str(path), engine="h5netcdf")
    elif api_of(data) == LEGACY:
        data.to_netcdf(str(path))
    else:
        raise ConfigurationError(f"to_netcdf needs an InferenceData or a DataTree, got {type(data).__name__}")


def from_netcdf(path, api_version: int | None = None):
    """Read a file written by :func:`to_netcdf`, as an InferenceData (API 0) or a DataTree (API 1),
    loaded into memory (the file is closed on return)."""
    if api(api_version) == LEGACY:
        return _az().from_netcdf(str(path))
    with xr.open_datatree(str(path), engine="h5netcdf") as tree:
        return tree.load()


def summary(data, var_names: Sequence[str] | None = None, *, kind: str = "all"):
    """Posterior summary table (mean, sd, credible interval, ESS, R-hat) per variable, a pandas
    DataFrame indexed by variable: ``az.summary`` (API 0) or ``arviz_stats.summary`` (API 1).
    ``kind``: "all", "stats" or "diagnostics" (both APIs). Numbers are not rounded."""
    version = api_of(data)
    if version is None:
        raise ConfigurationError(f"summary needs an InferenceData or a DataTree, got {type(data).__name__}")
    names = None if var_names is None else list(var_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if version == LEGACY:
            return _az().summary(data, var_names=names, kind=kind, round_to="none")
        return _stats().summary(data, var_names=names, kind=kind, round_to="none")


# ------------------------------------------------------------------------------------------
# PSIS, LOO, comparison
# ------------------------------------------------------------------------------------------


def pareto_khat(log_weights: np.ndarray, api_version: int | None = None) -> np.ndarray:
    """The generalized-Pareto shape k-hat of the largest importance weights, per row of
    (rows, draws) log weights (PSIS, Vehtari et al. 2024; relative efficiency 1)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if api(api_version) == LEGACY:
            _, k = _az().psislw(log_weights)
        else:
            k = np.array([_khat_row(row) for row in log_weights.reshape(-1, log_weights.shape[-1])])
            k = k.reshape(log_weights.shape[:-1])
    return np.asarray(k, dtype=np.float64)


def _khat_row(log_weights: np.ndarray) -> float:
    """arviz-stats' k-hat of one row of log weights; inf where the tail is constant (as arviz 0.2x)."""
    from arviz_stats.base import array_stats

    if log_weights.size < 25:
        raise ConfigurationError(
            f"the Pareto fit of arviz-stats needs at least 25 draws (a tail of 5), got {log_weights.size}: "
            "draw more (num_samples=...) or use arviz 0.2x (LVM_PYRO_ARVIZ=0)"
        )
    try:
        # arviz-stats smooths the weights 1 / p(y_i | theta): it takes log-likelihoods, so -log w
        _, k = array_stats.psislw(-log_weights, r_eff=1.0, axis=-1)
    except ValueError as exc:
        if "same" not in str(exc):
            raise
        return math.inf
    return float(k)


def psis_loo(data, *, pointwise: bool = True, var_name: str | None = None) -> dict[str, Any]:
    """PSIS-LOO of an InferenceData (``az.loo``) or a DataTree (``arviz_stats.loo``), normalized.

    Returns a dict: elpd_loo, se, p_loo (floats), n_samples, n_data_points (ints), warning
    (bool), good_k (float), scale ("log"), loo_i and pareto_k (``xarray.DataArray`` over the
    data dims, when ``pointwise``), api (0 or 1) and native (the backend's own object).

    One definition of the standard error on both APIs: se = sqrt(N var_i(elpd_i)) with the 1/N
    variance, as arviz 0.2x and arviz-stats 0.x compute it (arviz-stats 1.x divides by N - 1).
    The two APIs otherwise differ in one detail: the Pareto tail holds
    M = ceil(min(S / 5, 3 sqrt(S / r_eff))) draws under arviz 0.2x and floor(3 sqrt(S / r_eff))
    (S r_eff > 225, else floor(S / 5)) under arviz-stats, so results are identical where the two
    M agree and otherwise differ by a tail of one draw more or less.
    """
    kind = api_of(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if kind == LEGACY:
            native = _az().loo(data, pointwise=pointwise, var_name=var_name)
            names = {"elpd_loo": "elpd_loo", "p_loo": "p_loo", "loo_i": "loo_i"}
        elif kind == DATATREE:
            constant = _constant_draws(data, var_name)
            if constant is not None:
                return _loo_of_constant_draws(constant, pointwise)
            try:
                native = _stats().loo(data, pointwise=True, var_name=var_name)
            except ValueError as exc:
                if "n_draws_tail" not in str(exc):
                    raise
                raise ConfigurationError(
                    "PSIS-LOO under arviz-stats needs at least 25 posterior draws (a Pareto tail of 5 "
                    "draws): export more draws (to_inference_data(..., num_samples=...)) or use "
                    "arviz 0.2x (LVM_PYRO_ARVIZ=0)"
                ) from exc
            names = {"elpd_loo": "elpd", "p_loo": "p", "loo_i": "elpd_i"}
        else:
            raise ConfigurationError(f"LOO needs an InferenceData or a DataTree, got {type(data).__name__}")

    def get(key: str, default=None):
        try:
            return native[key]
        except (KeyError, AttributeError):
            return default

    good_k = get("good_k")
    se = float(get("se"))
    if kind == DATATREE:
        elpd_i = np.asarray(get(names["loo_i"]), dtype=np.float64).ravel()
        se = float(np.sqrt(elpd_i.size * np.var(elpd_i)))
    return {
        "elpd_loo": float(get(names["elpd_loo"])),
        "se": se,
        "p_loo": float(get(names["p_loo"])),
        "n_samples": int(get("n_samples")),
        "n_data_points": int(get("n_data_points")),
        "warning": bool(get("warning")),
        "good_k": float(good_k) if good_k is not None else 0.7,
        "scale": str(get("scale", "log")),
        "loo_i": get(names["loo_i"]) if pointwise else None,
        "pareto_k": get("pareto_k") if pointwise else None,
        "api": kind,
        "native": native,
    }


def _constant_draws(data, var_name: str | None) -> xr.DataArray | None:
    """The log-likelihood if every data point has the same value in every draw (a point estimate
    of the globals), else None."""
    group_ = group(data, "log_likelihood")
    name = var_name if var_name is not None else next(iter(group_.data_vars))
    ll = group_[name]
    values = np.asarray(ll.values, dtype=np.float64)
    flat = values.reshape(values.shape[0] * values.shape[1], -1)
    scale = 1.0 + np.abs(flat).max(0)
    if flat.shape[0] > 1 and np.all(np.ptp(flat, axis=0) <= 1e-12 * scale):
        return ll
    return None


def _loo_of_constant_draws(ll: xr.DataArray, pointwise: bool) -> dict[str, Any]:
    """LOO where every draw is the same (as arviz 0.2x returns it; arviz-stats cannot fit a
    Pareto tail to equal weights): the weights are constant, so elpd_i = log p(x_i | theta) and
    p_loo = 0, with every Pareto k infinite and the warning set."""
    draws = ll.sizes["chain"] * ll.sizes["draw"]
    elpd_i = ll.isel(chain=0, draw=0, drop=True).astype(np.float64)
    values = np.asarray(elpd_i.values).ravel()
    return {
        "elpd_loo": float(values.sum()),
        "se": float(np.sqrt(values.size * np.var(values))),
        "p_loo": 0.0,
        "n_samples": int(draws),
        "n_data_points": int(values.size),
        "warning": True,
        "good_k": float(min(1 - 1 / np.log10(draws), 0.7)),
        "scale": "log",
        "loo_i": elpd_i.rename("elpd_i") if pointwise else None,
        "pareto_k": xr.full_like(elpd_i, np.inf).rename("pareto_k") if pointwise else None,
        "api": DATATREE,
        "native": None,
    }


#: The comparison table's columns in the 0.2x spelling, which both APIs return.
COMPARE_COLUMNS = ("rank", "elpd_loo", "p_loo", "elpd_diff", "weight", "se", "dse", "warning", "scale")


def compare_models(datas: Mapping[str, Any], *, ic: str = "loo"):
    """Model comparison table (``az.compare`` / ``arviz_stats.compare``, stacking weights), with
    the columns :data:`COMPARE_COLUMNS` on both APIs, best model first.

    Under the 1.x API the columns keep arviz 0.2x's meaning: elpd_diff = elpd_loo(best) -
    elpd_loo (>= 0; arviz-stats 1.x reports it negative), se as in :func:`psis_loo`, and warning
    is each model's LOO warning (arviz-stats 1.x drops that column). Any further columns of
    arviz-stats follow.
    """
    kinds = {api_of(d) for d in datas.values()}
    if len(kinds) != 1 or None in kinds:
        raise ConfigurationError(
            "compare needs every model as the same kind of diagnostics data (all InferenceData or "
            f"all DataTree), got {sorted(type(d).__name__ for d in datas.values())}"
        )
    kind = kinds.pop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message="The inplace keyword")
        if kind == LEGACY:
            return _az().compare(dict(datas), ic=ic)
        if ic != "loo":
            raise ConfigurationError(
                f"ic={ic!r}: the ArviZ 1.x API (arviz-stats) compares models by PSIS-LOO only (it "
                "dropped WAIC): use ic='loo'"
            )
        flat = [name for name, d in datas.items() if _constant_draws(d, None) is not None]
        if flat:
            raise ConfigurationError(
                f"every draw of {flat} shares one point estimate, and arviz-stats cannot fit a Pareto "
                "tail to equal weights: compare such models on held-out data (lvm_pyro.log_likelihood), "
                "or with arviz 0.2x (LVM_PYRO_ARVIZ=0)"
            )
        options = {"round_to": "none"} if "round_to" in inspect.signature(_stats().compare).parameters else {}
        table = _stats().compare(dict(datas), **options)  # arviz-stats 1.x rounds unless told not to
    table = table.rename(columns={"elpd": "elpd_loo", "p": "p_loo"})
    each = {name: psis_loo(d, pointwise=False) for name, d in datas.items()}
    table["se"] = [each[name]["se"] for name in table.index]
    table["warning"] = [each[name]["warning"] for name in table.index]
    table["elpd_diff"] = float(table["elpd_loo"].max()) - table["elpd_loo"]
    table["scale"] = "log"
    return table[
        [c for c in COMPARE_COLUMNS if c in table.columns]
        + [c for c in table.columns if c not in COMPARE_COLUMNS]
    ]


# ------------------------------------------------------------------------------------------
# Posterior predictive check
# ------------------------------------------------------------------------------------------


def draw_ppc(
    data, *, kind: str, num_pp_samples: int | None, var_names: Sequence[str], axes, seed: int
) -> None:
    """Observed data against replicated draws on ``axes`` (one per variable).

    InferenceData: ``az.plot_ppc``. DataTree: drawn here with matplotlib (arviz-plots is not a
    dependency): for each variable, ``num_pp_samples`` replicated draws (chosen with ``seed``)
    as thin lines, their pooled mean dashed, the observed data thick; "kde" plots Gaussian
    kernel densities, "cumulative" empirical CDFs, "scatter" the values as jittered points.
    """
    if api_of(data) == LEGACY:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _az().plot_ppc(
                data,
                kind=kind,
                num_pp_samples=num_pp_samples,
                var_names=list(var_names),
                ax=axes if len(axes) > 1 else axes[0],
                random_seed=seed,
                show=False,
            )
        return
    observed, predictive = group(data, "observed_data"), group(data, "posterior_predictive")
    rng = np.random.default_rng(seed)
    for ax, name in zip(axes, var_names, strict=True):
        obs = np.asarray(observed[name].values, dtype=float).ravel()
        reps = np.asarray(predictive[name].values, dtype=float)
        reps = reps.reshape(reps.shape[0] * reps.shape[1], -1)  # (chain * draw, values)
        take = reps.shape[0] if num_pp_samples is None else min(num_pp_samples, reps.shape[0])
        chosen = reps[rng.choice(reps.shape[0], size=take, replace=False)]
        _draw_one(ax, kind, obs, chosen, reps.ravel(), rng)
        ax.set_xlabel(name)
        ax.legend(loc="best", fontsize="small")


def _draw_one(
    ax, kind: str, obs: np.ndarray, chosen: np.ndarray, pooled: np.ndarray, rng: np.random.Generator
) -> None:
    lo, hi = np.nanmin([obs.min(), chosen.min()]), np.nanmax([obs.max(), chosen.max()])
    grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo - 0.5, lo + 0.5])
    if kind == "scatter":
        for i, row in enumerate(chosen):
            ax.plot(
                row,
                rng.uniform(0.1, 1.0, row.size),
                ".",
                color="C0",
                alpha=0.2,
                ms=3,
                label="posterior predictive" if i == 0 else None,
            )
        ax.plot(obs, np.zeros_like(obs), "|", color="k", ms=12, label="observed")
        ax.set_yticks([])
        return

    def curve(values: np.ndarray) -> np.ndarray:
        if kind == "cumulative":
            return np.searchsorted(np.sort(values), grid, side="right") / values.size
        from scipy.stats import gaussian_kde

        if np.ptp(values) == 0:
            return np.where(np.isclose(grid, values[0]), 1.0, 0.0)
        return gaussian_kde(values)(grid)

    for i, row in enumerate(chosen):
        ax.plot(
            grid, curve(row), color="C0", alpha=0.2, lw=0.8, label="posterior predictive" if i == 0 else None
        )
    ax.plot(grid, curve(pooled), "--", color="C1", lw=1.5, label="posterior predictive, pooled")
    ax.plot(grid, curve(obs), color="k", lw=2, label="observed")
    ax.set_ylabel("cumulative probability" if kind == "cumulative" else "density")
