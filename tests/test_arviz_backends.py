"""The ArviZ adapter on both APIs: arviz 0.2x (InferenceData) and arviz-base / arviz-stats
(xarray.DataTree, the ArviZ 1.x API).

Each export / LOO / k-hat test runs once per installed API; the agreement tests need both
(the dev extra installs both on Python 3.11) and check that the two give the same groups, dims,
coords and attrs, and the same elpd, se, p_loo and Pareto k.

Tolerance of the agreement. Both APIs implement one estimator (PSIS: the Zhang-Stephens
generalized-Pareto fit with the same weakly informative prior on k, elpd_i = logsumexp of the
smoothed log weights plus the log-likelihood; r_eff from the mean ESS with several chains) on the
same float64 arrays, with one difference: the tail holds M = ceil(min(S / 5, 3 sqrt(S / r_eff)))
draws under arviz 0.2x and floor(3 sqrt(S / r_eff)) (S r_eff > 225, else floor(S / 5)) under
arviz-stats. Where the two M agree (S <= 225, or 3 sqrt(S) an integer: S = 400, 900, 1600) the
results agree to rounding: 1e-9. Where they differ by one draw, measured over 30 replications
of the Normal-Normal posterior (40 points, 1000 draws in 1 or 2 chains, k < 0.5):
|d elpd_loo| <= 6e-4, |d p_loo| <= 6e-4, |d se| <= 1.3e-4, |d elpd_i| <= 1.4e-4, |d k_i| <= 0.054;
for a guide's k-hat over 200 sets of weights per case, median |d k| 0.005-0.02, max 0.16
(S = 500). The tests allow elpd_loo and p_loo 5e-3, se and elpd_i 1e-3, k 0.1 there (a k-hat
from a tail of ~95 draws has a Monte Carlo error of order (1 + k) / sqrt(M) ~ 0.1 itself).
arviz-stats 1.x reports se with a 1/(N - 1) variance and elpd_diff negative; the adapter
returns arviz 0.2x's definitions on both. The stacking weights of ``compare`` come from a
numerical optimizer run on (identical up to rounding) pointwise values: compared to 1e-6.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from matplotlib.figure import Figure
from models_for_tests import (
    NOISE,
    PRIOR_SCALE,
    LocalGaussian,
    normal_normal_guide,
    normal_normal_model,
    normal_normal_posterior,
)

import lvm_pyro
from lvm_pyro.data import make_mixture
from lvm_pyro.diagnostics import arviz as adapter
from lvm_pyro.diagnostics.arviz import compare, loo, plot_ppc, psis_khat, to_inference_data
from lvm_pyro.diagnostics.loo import LOOResult
from lvm_pyro.errors import ConfigurationError, DiagnosticWarning
from lvm_pyro.models.gmm import GLOBAL_SITES, GaussianMixtureModel

WEIGHTS, LOCS, _ = GLOBAL_SITES
APIS = adapter.available_apis()
BOTH = pytest.mark.skipif(set(APIS) != {0, 1}, reason="needs arviz 0.2x and arviz-base/arviz-stats")
#: ArviZ's own bookkeeping attrs, which differ between the APIs (creation time, versions).
BOOKKEEPING = {
    "created_at",
    "arviz_version",
    "creation_library",
    "creation_library_version",
    "creation_library_language",
    "inference_library",
    "inference_library_version",
}


@pytest.fixture(params=[0, 1], ids=["arviz0", "arviz1"])
def api_version(request) -> int:
    if request.param not in APIS:
        pytest.skip(f"ArviZ API {request.param} is not installed")
    return request.param


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return 1.5 + torch.randn(40, dtype=torch.float64)


def exact_guide(x, widen=1.0, shift=0.0):
    mean, sd = normal_normal_posterior(x)

    def guide(data):
        pyro.sample("mu", dist.Normal(data.new_tensor(mean + shift), sd * widen))

    return guide


def exact_loo(x: torch.Tensor) -> np.ndarray:
    """log p(x_i | x_-i) of the Normal-Normal model, in closed form."""
    n, out = len(x), []
    for i in range(n):
        rest = torch.cat([x[:i], x[i + 1 :]])
        precision = 1 / PRIOR_SCALE**2 + (n - 1) / NOISE**2
        mean = float(rest.sum()) / NOISE**2 / precision
        out.append(float(dist.Normal(mean, math.sqrt(NOISE**2 + 1 / precision)).log_prob(x[i])))
    return np.array(out)


def datasets(data) -> dict[str, xr.Dataset]:
    return {g: adapter.group(data, g) for g in adapter.group_names(data)}


def without_bookkeeping(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k not in BOOKKEEPING}


# ----------------------------------------------------------------------------- choosing the API


def test_api_is_chosen_by_argument_then_environment_then_installation(monkeypatch):
    monkeypatch.delenv(adapter.ENV_VAR, raising=False)
    assert adapter.api() == APIS[0]  # arviz 0.2x first where it is installed
    for v in APIS:
        assert adapter.api(v) == v and adapter.api(str(v)) == v
        monkeypatch.setenv(adapter.ENV_VAR, str(v))
        assert adapter.api() == v
    monkeypatch.setenv(adapter.ENV_VAR, "2")
    with pytest.raises(ConfigurationError, match="must be 0 .* or 1"):
        adapter.api()
    monkeypatch.delenv(adapter.ENV_VAR)
    with pytest.raises(ConfigurationError, match="must be 0"):
        adapter.api(True)


def test_an_api_that_is_not_installed_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setattr(adapter, "available_apis", lambda: (0,))
    with pytest.raises(ConfigurationError, match="arviz-base>=0.8"):
        adapter.api(1)
    monkeypatch.setattr(adapter, "available_apis", lambda: (1,))
    assert adapter.api() == 1
    with pytest.raises(ConfigurationError, match="arviz>=0.21,<1"):
        adapter.api(0)
    monkeypatch.setattr(adapter, "available_apis", lambda: ())
    with pytest.raises(ConfigurationError, match="no ArviZ is installed"):
        adapter.api()


def test_versions_name_the_installed_distributions():
    got = adapter.versions()
    if 0 in APIS:
        assert got["arviz"].startswith("0.")
    if 1 in APIS:
        assert {"arviz-base", "arviz-stats"} <= set(got)


def test_only_the_adapter_imports_arviz_and_nothing_uses_from_pyro():
    """The diagnostics package reaches ArviZ through diagnostics/arviz.py alone, and the export
    builds its groups itself (ArviZ 1.x has no from_pyro)."""
    import pathlib
    import re

    root = pathlib.Path(lvm_pyro.__file__).parent / "diagnostics"
    pattern = re.compile(r"^\s*(import|from)\s+arviz(_base|_stats|_plots)?\b", re.M)
    importers = sorted(p.name for p in root.glob("*.py") if pattern.search(p.read_text()))
    assert importers == ["arviz.py"]
    calls = re.compile(r"\.from_pyro\b|import from_pyro|from_pyro\(")
    assert not [p.name for p in root.glob("*.py") if calls.search(p.read_text())]


# ----------------------------------------------------------------------------- the export


def test_svi_export_has_every_group_of_the_api_type(x, api_version):
    result = lvm_pyro.fit((normal_normal_model, normal_normal_guide), x, steps=5, progress=False, seed=0)
    data = to_inference_data(result, x, num_samples=50, seed=0, arviz_api=api_version)
    assert isinstance(data, xr.DataTree) == (api_version == 1)
    assert adapter.api_of(data) == api_version
    groups = datasets(data)
    assert {"posterior", "log_likelihood", "observed_data", "posterior_predictive", "sample_stats"} == set(
        groups
    )
    assert groups["log_likelihood"]["x"].dims == ("chain", "draw", "obs")
    assert groups["log_likelihood"]["x"].shape == (1, 50, 40)
    assert groups["posterior"]["mu"].dims == ("chain", "draw")
    np.testing.assert_array_equal(groups["observed_data"]["x"].values, x.numpy())
    np.testing.assert_allclose(groups["sample_stats"]["loss"].values[0], result.losses)
    attrs = adapter.root_attrs(data)
    assert attrs["inference"] == "svi" and attrs["lvm_pyro_num_data"] == 40
    assert attrs["lvm_pyro_data_dim"] == "obs" and attrs["lvm_pyro_point_estimate"] == 0
    table = adapter.summary(data, var_names=["mu"])
    draws = groups["posterior"]["mu"].values
    assert float(table.loc["mu", "mean"]) == pytest.approx(float(draws.mean()), rel=1e-9)


def test_point_estimate_attr_the_obs_id_rule_and_a_netcdf_round_trip(api_version, tmp_path):
    """An observed site named "obs": the data dim becomes "obs_id". The only global is a parameter
    (no global latent), so every draw shares it: the export says so (attr, warning) and LOO
    warns and equals the in-sample log p(y_i) = log N(y_i; 0, 2) (the guide is the exact
    posterior z_i | y_i ~ N(y_i / 2, 1 / 2), so each importance weight is exact)."""

    def model(y):
        loc = pyro.param("loc", y.new_tensor(0.0))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        with pyro.plate("data", len(y)):
            pyro.sample("z", dist.Normal(y / 2, math.sqrt(0.5)))

    y = torch.randn(15, dtype=torch.float64)
    with pytest.warns(DiagnosticWarning, match="point estimate"):
        data = to_inference_data((model, guide), y, num_samples=30, local_samples=4, arviz_api=api_version)
    groups = datasets(data)
    assert groups["log_likelihood"]["obs"].dims == ("chain", "draw", "obs_id")
    assert groups["observed_data"]["obs"].dims == ("obs_id",)
    assert groups["posterior"]["z"].dims == ("chain", "draw", "obs_id")
    assert adapter.root_attrs(data)["lvm_pyro_data_dim"] == "obs_id"
    assert adapter.root_attrs(data)["lvm_pyro_point_estimate"] == 1
    expected = float(dist.Normal(0.0, math.sqrt(2.0)).log_prob(y).sum())
    with pytest.warns(DiagnosticWarning, match="in-sample"):
        result = loo(data)
    # every draw equal: elpd_i = log p(y_i), p_loo 0, Pareto k infinite and flagged (both APIs)
    assert result.elpd_loo == pytest.approx(expected, abs=1e-6)
    assert result.p_loo == pytest.approx(0.0, abs=1e-9) and result.warning
    assert np.all(np.isinf(np.asarray(result.pareto_k)))
    if api_version == 1:
        with pytest.raises(ConfigurationError, match="point estimate"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DiagnosticWarning)
            compare({"a": data, "b": data})
    # netCDF round trip: the same groups and values; the attr may come back as a string
    adapter.to_netcdf(data, tmp_path / "data.nc")
    back = adapter.from_netcdf(tmp_path / "data.nc", api_version)
    assert adapter.api_of(back) == api_version
    assert set(adapter.group_names(back)) == set(groups)
    np.testing.assert_array_equal(
        adapter.group(back, "log_likelihood")["obs"].values, groups["log_likelihood"]["obs"].values
    )
    with pytest.warns(DiagnosticWarning, match="in-sample"):
        assert loo(back).elpd_loo == pytest.approx(expected, abs=1e-6)


def test_an_svi_export_read_back_from_netcdf_does_not_warn_of_a_point_estimate(x, api_version, tmp_path):
    data = to_inference_data(
        (normal_normal_model, exact_guide(x)), x, num_samples=100, seed=0, arviz_api=api_version
    )
    adapter.to_netcdf(data, tmp_path / "data.nc")
    back = adapter.from_netcdf(tmp_path / "data.nc", api_version)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiagnosticWarning)
        assert loo(back).elpd_loo == pytest.approx(loo(data).elpd_loo, abs=1e-12)


def test_em_export_refuses_loo(api_version):
    data = make_mixture(60, 2, 2, seed=2, covariance_type="diag", dtype=torch.float64)
    gmm = GaussianMixtureModel(2, 2, "diag").double()
    result = lvm_pyro.em(gmm, data.x, max_iter=10, seed=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DiagnosticWarning)
        exported = to_inference_data(result, data.x, arviz_api=api_version)
    groups = datasets(exported)
    assert groups["posterior"][LOCS].shape == (1, 1, 2, 2)
    np.testing.assert_allclose(groups["sample_stats"]["log_likelihood"].values[0], result.log_likelihood)
    with pytest.raises(ConfigurationError, match="point estimate"):
        loo(exported)


@BOTH
def test_both_apis_export_the_same_groups_dims_coords_and_attrs():
    data = make_mixture(50, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64)
    gmm = GaussianMixtureModel(3, 2, "diag").double()
    gmm.set_parameters(weights=data.weights, means=data.means, covariances=data.covariances)
    old = to_inference_data(gmm, data.x, num_samples=20, local_latents=True, seed=3, arviz_api=0)
    new = to_inference_data(gmm, data.x, num_samples=20, local_latents=True, seed=3, arviz_api=1)
    a, b = datasets(old), datasets(new)
    assert set(a) == set(b) == {"posterior", "log_likelihood", "observed_data", "posterior_predictive"}
    for name in a:
        assert set(a[name].data_vars) == set(b[name].data_vars), name
        for var in a[name].data_vars:
            assert a[name][var].dims == b[name][var].dims, (name, var)
            np.testing.assert_array_equal(a[name][var].values, b[name][var].values)
        assert set(a[name].coords) == set(b[name].coords), name
        for c in a[name].coords:
            np.testing.assert_array_equal(a[name][c].values, b[name][c].values)
        assert without_bookkeeping(a[name].attrs) == without_bookkeeping(b[name].attrs), name
    assert adapter.root_attrs(old) == adapter.root_attrs(new)
    assert b["posterior"][LOCS].dims == ("chain", "draw", "component", "feature")
    assert b["posterior"]["z"].dims == ("chain", "draw", "obs")


# ----------------------------------------------------------------------------- LOO, k-hat, compare


def test_loo_of_the_exact_posterior_matches_the_closed_form(x, api_version):
    data = to_inference_data(
        (normal_normal_model, exact_guide(x)), x, num_samples=2000, seed=0, arviz_api=api_version
    )
    result = loo(data)
    assert isinstance(result, LOOResult) and result.arviz_api == api_version
    truth = exact_loo(x)
    assert result.elpd_loo == pytest.approx(truth.sum(), abs=0.3)
    np.testing.assert_allclose(np.asarray(result.loo_i), truth, atol=0.05)
    assert result.elpd_loo == pytest.approx(float(np.sum(result.loo_i)), rel=1e-10)
    assert result["elpd_loo"] == result.elpd_loo
    assert float(np.max(result.pareto_k)) < 0.5 and not result.warning
    assert 0.5 < result.p_loo < 1.5  # one parameter, mu
    assert result.n_samples == 2000 and result.n_data_points == 40
    text = repr(result)
    assert text.startswith("LOOResult(elpd_loo=") and len(text) < 200 and "max Pareto k" in text


def tail_length(draws: int, r_eff: float = 1.0) -> tuple[int, int]:
    """The Pareto tail's size under arviz 0.2x and under arviz-stats."""
    old = math.ceil(min(draws / 5, 3 * math.sqrt(draws / r_eff)))
    new = math.floor(3 * math.sqrt(draws / r_eff)) if draws * r_eff > 225 else math.floor(draws / 5)
    return old, new


def _two_chain_data(x: torch.Tensor, api_version: int):
    """Two chains of the exact posterior of mu, correlated within a chain (AR(1), rho 0.5) so that
    r_eff = ESS / S is below 1: LOO then uses the ESS, which both APIs compute."""
    mean, sd = normal_normal_posterior(x)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((2, 500))
    z = np.empty_like(eps)
    z[:, 0] = eps[:, 0]
    for t in range(1, 500):
        z[:, t] = 0.5 * z[:, t - 1] + math.sqrt(1 - 0.25) * eps[:, t]
    mu = mean + sd * z
    ll = dist.Normal(torch.as_tensor(mu)[..., None], NOISE).log_prob(x).numpy()
    return adapter.build(
        {"posterior": {"mu": mu}, "log_likelihood": {"x": ll}, "observed_data": {"x": x.numpy()}},
        coords={"obs": np.arange(len(x))},
        dims={"x": ["obs"]},
        attrs={},
        api_version=api_version,
    )


@BOTH
@pytest.mark.parametrize("chains", [1, 2])
def test_loo_agrees_between_the_apis(x, chains):
    if chains == 1:  # 900 draws: both tails hold 90 draws, so the results agree to rounding
        assert tail_length(900) == (90, 90)
        old, new = (
            to_inference_data(
                (normal_normal_model, exact_guide(x, widen=1.3)), x, num_samples=900, seed=0, arviz_api=v
            )
            for v in (0, 1)
        )
        tol = {"elpd_loo": 1e-9, "p_loo": 1e-9, "se": 1e-9, "loo_i": 1e-9, "pareto_k": 1e-9}
    else:  # r_eff < 1 from the ESS: tails of different sizes (module docstring)
        old, new = _two_chain_data(x, 0), _two_chain_data(x, 1)
        tol = {"elpd_loo": 5e-3, "p_loo": 5e-3, "se": 1e-3, "loo_i": 1e-3, "pareto_k": 0.1}
    np.testing.assert_array_equal(
        adapter.group(old, "log_likelihood")["x"].values, adapter.group(new, "log_likelihood")["x"].values
    )
    a, b = loo(old), loo(new)
    assert (a.arviz_api, b.arviz_api) == (0, 1)
    for name in ("elpd_loo", "se", "p_loo"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=tol[name], abs=tol[name]), name
    for name in ("loo_i", "pareto_k"):
        np.testing.assert_allclose(
            np.asarray(getattr(b, name)), np.asarray(getattr(a, name)), rtol=0, atol=tol[name], err_msg=name
        )
    assert (a.n_samples, a.n_data_points, a.warning) == (b.n_samples, b.n_data_points, b.warning)
    assert b.good_k == pytest.approx(a.good_k)


@BOTH
def test_psis_khat_agrees_between_the_apis(x):
    for widen, draws in ((1.0, 400), (1.3, 900), (0.1, 1600)):  # tails of 60, 90, 120 draws in both
        assert tail_length(draws)[0] == tail_length(draws)[1]
        a, b = (
            psis_khat(
                normal_normal_model,
                x,
                guide=exact_guide(x, widen=widen),
                num_samples=draws,
                seed=0,
                arviz_api=v,
            )
            for v in (0, 1)
        )
        np.testing.assert_array_equal(a.log_weights, b.log_weights)
        assert b.khat == pytest.approx(a.khat, abs=1e-9) and a.label == b.label
    assert a.khat > 0.7  # the narrow guide: the comparison covers a heavy tail too
    # 1000 draws: tails of 95 and 94 draws, the k-hats differ a little (module docstring)
    a, b = (
        psis_khat(
            normal_normal_model, x, guide=exact_guide(x, widen=0.5), num_samples=1000, seed=0, arviz_api=v
        )
        for v in (0, 1)
    )
    assert b.khat == pytest.approx(a.khat, abs=0.1)
    torch.manual_seed(0)
    model = LocalGaussian(2)
    with torch.no_grad():
        model.a.fill_(0.5)
        model.log_s.fill_(math.log(0.3))
    data = torch.randn(15, 2) * math.sqrt(2.0)
    a, b = (psis_khat(model, data, num_samples=400, seed=0, arviz_api=v) for v in (0, 1))
    np.testing.assert_allclose(b.khat_per_point, a.khat_per_point, rtol=0, atol=1e-9)
    assert np.median(a.khat_per_point) > 0.3  # a narrow encoder: heavy per-point tails were compared


def test_psis_khat_verdicts_and_repr(x, api_version):
    good = psis_khat(
        normal_normal_model,
        x,
        guide=exact_guide(x, widen=1.2),
        num_samples=500,
        seed=0,
        arviz_api=api_version,
    )
    narrow = psis_khat(
        normal_normal_model,
        x,
        guide=exact_guide(x, widen=0.1),
        num_samples=1000,
        seed=0,
        arviz_api=api_version,
    )
    assert good.khat < 0.5 and narrow.khat > 0.7
    if api_version == 1:  # arviz-stats fits a tail of at least 5 draws: 25 draws or more
        with pytest.raises(ConfigurationError, match="at least 25 draws"):
            psis_khat(normal_normal_model, x, guide=exact_guide(x), num_samples=20, arviz_api=1)
    assert repr(narrow) == f"PSISResult(khat={narrow.khat:.3f} (bad), num_samples=1000)"
    torch.manual_seed(0)
    per_point = psis_khat(
        LocalGaussian(2), torch.randn(12, 2), num_samples=100, seed=0, arviz_api=api_version
    )
    text = repr(per_point)
    assert "per point: good" in text and "/12" in text and len(text) < 160


def test_compare_ranks_with_the_same_columns(x, api_version):
    models = {
        "exact": (normal_normal_model, exact_guide(x)),
        "shifted": (normal_normal_model, exact_guide(x, shift=1.0)),
    }
    table = compare(models, x, num_samples=300, seed=0, arviz_api=api_version)
    assert list(table.columns[:9]) == list(adapter.COMPARE_COLUMNS)
    assert list(table.index) == ["exact", "shifted"]
    assert table.loc["shifted", "elpd_diff"] > 5 and table.loc["exact", "elpd_diff"] == 0
    assert table.loc["exact", "weight"] > 0.9
    if api_version == 1:
        with pytest.raises(ConfigurationError, match="WAIC"):
            compare(models, x, num_samples=20, ic="waic", arviz_api=1)


@BOTH
def test_compare_agrees_between_the_apis(x):
    tables = [
        compare(
            {
                "exact": (normal_normal_model, exact_guide(x)),
                "wide": (normal_normal_model, exact_guide(x, widen=3.0)),
                "shifted": (normal_normal_model, exact_guide(x, shift=0.5)),
            },
            x,
            num_samples=400,  # tails of 60 draws under both APIs
            seed=0,
            arviz_api=v,
        )
        for v in (0, 1)
    ]
    a, b = tables
    assert list(a.index) == list(b.index)
    for column in ("elpd_loo", "p_loo", "elpd_diff", "se", "dse"):
        np.testing.assert_allclose(b[column].to_numpy(float), a[column].to_numpy(float), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b["weight"].to_numpy(float), a["weight"].to_numpy(float), atol=1e-6)
    np.testing.assert_array_equal(b["rank"].to_numpy(), a["rank"].to_numpy())
    np.testing.assert_array_equal(b["warning"].to_numpy(bool), a["warning"].to_numpy(bool))


def test_compare_refuses_a_mix_of_apis(x):
    if set(APIS) != {0, 1}:
        pytest.skip("needs both APIs")
    old, new = (
        to_inference_data((normal_normal_model, exact_guide(x)), x, num_samples=20, seed=0, arviz_api=v)
        for v in (0, 1)
    )
    with pytest.raises(ConfigurationError, match="same kind"):
        compare({"a": old, "b": new})


# ----------------------------------------------------------------------------- PPC


@pytest.mark.parametrize("kind", ["kde", "cumulative", "scatter"])
def test_plot_ppc_draws_the_data_and_the_replicates(x, api_version, kind):
    data = to_inference_data(
        (normal_normal_model, exact_guide(x)), x, num_samples=40, seed=0, arviz_api=api_version
    )
    fig = plot_ppc(data, kind=kind, num_pp_samples=10)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) >= 11  # ten replicates and the data
    if api_version == 1 and kind == "cumulative":
        observed = [line for line in ax.lines if line.get_label() == "observed"][0]
        ecdf = np.asarray(observed.get_ydata())
        assert ecdf[-1] == pytest.approx(1.0) and np.all(np.diff(ecdf) >= 0)
