"""The ArviZ adapter on both APIs: arviz 0.2x (InferenceData) and arviz-base / arviz-stats
(xarray.DataTree, the ArviZ 1.x API).

Each export / LOO / k-hat test runs once per installed API; the agreement tests need both
(the dev extra installs both on Python 3.11) and check that the two give the same groups, dims,
coords and attrs, and the same elpd, se, p_loo and Pareto k.

Tolerance of the agreement: both APIs implement one estimator (PSIS with the tail length
ceil(min(S / 5, 3 sqrt(S / r_eff))), the Zhang-Stephens generalized-Pareto fit with the same
weakly informative prior on k, elpd_i = logsumexp(smoothed weights + log-likelihood)), on the
same float64 arrays; they differ only in the order of floating-point sums and the library
routines used (scipy vs numpy logsumexp), so they agree to a few ulps of the largest term:
rtol 1e-9 on the sums over ~40 points, atol 1e-9 on the per-point values of order 1. The
stacking weights of ``compare`` come from a numerical optimizer (scipy) run on those
(identical up to rounding) pointwise values and are compared to 1e-6.
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
from models_for_tests import NOISE, PRIOR_SCALE, LocalGaussian, normal_normal_model, normal_normal_posterior

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
    result = lvm_pyro.fit(
        (normal_normal_model, exact_guide(x, widen=2.0)), x, steps=5, progress=False, seed=0
    )
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
    mean, _ = normal_normal_posterior(x)
    assert abs(float(table.loc["mu", "mean"]) - mean) < 0.1


def test_point_estimate_attr_and_the_obs_id_rule(api_version):
    """A model whose observed site is named "obs": the data dim becomes "obs_id"; a Delta guide
    shares one theta over the draws: the export says so (attr, warning) and LOO warns."""

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 2.0))
        with pyro.plate("data", len(y)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y)

    def delta_guide(y):
        pyro.sample("mu", dist.Delta(y.mean()))

    y = torch.randn(15, dtype=torch.float64)
    with pytest.warns(DiagnosticWarning, match="point estimate"):
        data = to_inference_data((model, delta_guide), y, num_samples=5, arviz_api=api_version)
    groups = datasets(data)
    assert groups["log_likelihood"]["obs"].dims == ("chain", "draw", "obs_id")
    assert groups["observed_data"]["obs"].dims == ("obs_id",)
    assert adapter.root_attrs(data)["lvm_pyro_data_dim"] == "obs_id"
    assert adapter.root_attrs(data)["lvm_pyro_point_estimate"] == 1
    with pytest.warns(DiagnosticWarning, match="in-sample"):
        result = loo(data)
    expected = dist.Normal(y.mean(), 1.0).log_prob(y).sum()
    assert result.elpd_loo == pytest.approx(float(expected), abs=1e-9)


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
    if chains == 1:
        old, new = (
            to_inference_data(
                (normal_normal_model, exact_guide(x, widen=1.3)), x, num_samples=400, seed=0, arviz_api=v
            )
            for v in (0, 1)
        )
    else:
        old, new = _two_chain_data(x, 0), _two_chain_data(x, 1)
    np.testing.assert_array_equal(
        adapter.group(old, "log_likelihood")["x"].values, adapter.group(new, "log_likelihood")["x"].values
    )
    a, b = loo(old), loo(new)
    assert (a.arviz_api, b.arviz_api) == (0, 1)
    for name in ("elpd_loo", "se", "p_loo"):
        assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-9, abs=1e-9), name
    np.testing.assert_allclose(np.asarray(b.loo_i), np.asarray(a.loo_i), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.asarray(b.pareto_k), np.asarray(a.pareto_k), rtol=0, atol=1e-9)
    assert (a.n_samples, a.n_data_points) == (b.n_samples, b.n_data_points)


@BOTH
def test_psis_khat_agrees_between_the_apis(x):
    for widen, draws in ((1.0, 500), (0.3, 1000)):
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
    torch.manual_seed(0)
    model = LocalGaussian(2)
    with torch.no_grad():
        model.a.fill_(0.5)
        model.log_s.fill_(math.log(0.3))
    data = torch.randn(15, 2) * math.sqrt(2.0)
    a, b = (psis_khat(model, data, num_samples=300, seed=0, arviz_api=v) for v in (0, 1))
    np.testing.assert_allclose(b.khat_per_point, a.khat_per_point, rtol=0, atol=1e-9)


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
            num_samples=300,
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
