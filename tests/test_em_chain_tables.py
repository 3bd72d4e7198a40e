"""Emission tables (lvm_pyro.infer.em.chain_tables), the fast layout of em's compiled route, give
what the general layout gives: for every family and argument pattern a table covers (and a model
that mixes both layouts), em with tables equals em without them, iteration for iteration."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from test_hmm_em import _sequences, gaussian_hmm
from torch.distributions import constraints

import lvm_pyro.infer.em.chain as chain
from lvm_pyro.infer.em import em

K, D, N = 3, 2, 120


def _data(kind: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(K, (N,), generator=g)
    if kind == "binary":
        return (
            torch.rand(N, D, generator=g, dtype=torch.float64)
            < torch.tensor([0.2, 0.5, 0.8]).double()[z, None]
        ).double()
    if kind == "counts":
        return torch.poisson(torch.tensor([1.0, 4.0, 9.0]).double()[z, None].expand(N, D), generator=g)
    if kind == "positive":
        return (
            torch.empty(N, D, dtype=torch.float64).exponential_(generator=g)
            * torch.tensor([0.5, 1.0, 3.0]).double()[z, None]
        )
    return torch.tensor([[-2.0, 0.0], [1.0, 2.0], [3.0, -1.0]]).double()[z] + torch.randn(
        N, D, generator=g, dtype=torch.float64
    )


def _weights(x):
    return pyro.param("w", x.new_tensor([0.5, 0.3, 0.2]), constraint=constraints.simplex)


def _locs(x):
    return pyro.param("locs", x.new_tensor([[-1.0, 0.5], [0.5, 1.0], [2.0, -0.5]]))


def diag_normal(x):
    w, locs = _weights(x), _locs(x)
    scales = pyro.param("scales", x.new_ones(K, D) * 1.5, constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)


def fixed_scale(x):
    w, locs = _weights(x), _locs(x)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], x.new_tensor([0.7, 1.3])).to_event(1), obs=x)


def fixed_loc(x):
    w = _weights(x)
    scales = pyro.param("scales", x.new_tensor([0.5, 1.0, 2.0]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(x.new_tensor([0.5, -0.5]), scales[z].unsqueeze(-1)).to_event(1), obs=x)


def shared_scale(x):
    """One scale for every state and feature: many (loc, scale) pairs meet one scale entry."""
    w, locs = _weights(x), _locs(x)
    scale = pyro.param("scale", x.new_tensor(2.0), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], scale).to_event(1), obs=x)


def masked_rows(x):
    """poutine.mask over rows: masked rows drop out of every statistic."""
    w, locs = _weights(x), _locs(x)
    scales = pyro.param("scales", x.new_ones(K, D), constraint=constraints.positive)
    keep = torch.arange(len(x), device=x.device) % 4 != 0
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        with pyro.poutine.mask(mask=keep):
            pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)


def two_layouts(x):
    """The locs read by a table (scales per state) and by a site whose scale varies per row (the
    general layout): one param, statistics from both layouts."""
    w, locs = _weights(x), _locs(x)
    scales = pyro.param("scales", x.new_ones(K, D), constraint=constraints.positive)
    row_scale = 1.0 + 0.5 * torch.arange(len(x), device=x.device).remainder(3).to(x.dtype)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)
        pyro.sample("x2", dist.Normal(locs[z][..., 0], row_scale), obs=x[:, 0] + 0.25)


def poisson(x):
    w = _weights(x)
    rates = pyro.param(
        "rates", x.new_tensor([[0.5, 1.0], [3.0, 2.0], [6.0, 8.0]]), constraint=constraints.positive
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Poisson(rates[z]).to_event(1), obs=x)


def bernoulli(x):
    w = _weights(x)
    probs = pyro.param(
        "probs", x.new_tensor([[0.3, 0.4], [0.5, 0.5], [0.6, 0.7]]), constraint=constraints.unit_interval
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Bernoulli(probs[z]).to_event(1), obs=x)


def exponential(x):
    w = _weights(x)
    rates = pyro.param(
        "rates", x.new_tensor([[2.0, 1.0], [1.0, 0.5], [0.5, 0.2]]), constraint=constraints.positive
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Exponential(rates[z]).to_event(1), obs=x)


def _covs(x):
    return pyro.param(
        "covs",
        x.new_tensor([[[1.0, 0.3], [0.3, 1.0]], [[2.0, 0.0], [0.0, 0.5]], [[1.0, -0.2], [-0.2, 1.5]]]),
        constraint=constraints.positive_definite,
    )


def mvn(x):
    w, locs, covs = _weights(x), _locs(x), _covs(x)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]), obs=x)


def mvn_tril(x):
    w, locs = _weights(x), _locs(x)
    trils = pyro.param(
        "trils", torch.linalg.cholesky(_covs(x).detach()), constraint=constraints.lower_cholesky
    )
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], scale_tril=trils[z]), obs=x)


def mvn_fixed_covariances(x):
    w, locs = _weights(x), _locs(x)
    covs = x.new_tensor([[[1.0, 0.3], [0.3, 1.0]], [[2.0, 0.0], [0.0, 0.5]], [[1.0, -0.2], [-0.2, 1.5]]])
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.MultivariateNormal(locs[z], covariance_matrix=covs[z]), obs=x)


def mvn_fixed_locs(x):
    w, covs = _weights(x), _covs(x)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample(
            "x",
            dist.MultivariateNormal(x.new_tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])[z], covs[z]),
            obs=x,
        )


CASES = [
    (diag_normal, "real"),
    (fixed_scale, "real"),
    (fixed_loc, "real"),
    (shared_scale, "real"),
    (masked_rows, "real"),
    (two_layouts, "real"),
    (poisson, "counts"),
    (bernoulli, "binary"),
    (exponential, "positive"),
    (mvn, "real"),
    (mvn_tril, "real"),
    (mvn_fixed_covariances, "real"),
    (mvn_fixed_locs, "real"),
]


def _run(model, data, tables: bool, monkeypatch, **kwargs):
    monkeypatch.setattr(chain, "EMISSION_TABLES", tables)
    layouts = []
    compile_ = chain.CompiledChain._compile

    def spy(self, real):
        compile_(self, real)
        layouts.append((len(self.tables), len(self.groups)))

    monkeypatch.setattr(chain.CompiledChain, "_compile", spy)
    pyro.clear_param_store()
    result = em(model, data, max_iter=4, tol=0.0, device="cpu", **kwargs)
    params = {n: pyro.param(n).detach().clone() for n in pyro.get_param_store().keys()}
    return result, params, layouts


@pytest.mark.parametrize("model, kind", CASES, ids=[m.__name__ for m, _ in CASES])
def test_tables_give_what_the_general_layout_gives(model, kind, monkeypatch):
    x = _data(kind)
    with_tables, fitted, layouts = _run(model, x, True, monkeypatch)
    without, expected, flat = _run(model, x, False, monkeypatch)
    assert with_tables.e_step == without.e_step == "chain"
    assert with_tables.param_routes == without.param_routes
    assert layouts[0][0] >= 1 and flat[0][0] == 0  # the table layout was taken, and not in the reference
    np.testing.assert_allclose(with_tables.log_likelihood, without.log_likelihood, rtol=1e-11)
    for name, value in expected.items():
        torch.testing.assert_close(fitted[name], value, rtol=1e-9, atol=1e-11)


def test_an_hmms_emissions_at_every_step_share_one_table(monkeypatch):
    y = _sequences("gaussian", n=20, t=9)
    with_tables, fitted, layouts = _run(gaussian_hmm, y, True, monkeypatch, data_plate="sequences")
    without, expected, _ = _run(gaussian_hmm, y, False, monkeypatch, data_plate="sequences")
    assert layouts[0] == (1, 2)  # one table for the nine emissions; init and transitions stay general
    np.testing.assert_allclose(with_tables.log_likelihood, without.log_likelihood, rtol=1e-11)
    for name, value in expected.items():
        torch.testing.assert_close(fitted[name], value, rtol=1e-9, atol=1e-11)


def test_tables_in_float32_agree_with_float64(monkeypatch):
    """The expanded squares of a table are taken about the data's mean: float32 stays as close
    to float64 as the general layout does (about 3e-5 relative after a few iterations)."""
    x = _data("real") + 100.0  # far from the origin
    runs = []
    for dtype in (torch.float64, torch.float32):
        result, params, layouts = _run(diag_normal, x.to(dtype), True, monkeypatch)
        assert layouts[0][0] == 1
        runs.append((result.log_likelihood, params["locs"].double()))
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-4)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-4, atol=1e-4)


def test_a_large_data_set_is_certified_on_its_first_rows(monkeypatch):
    """Pyro's contraction (the certificate) holds every (row, state, position) log-density: on
    more than CERTIFY_ROWS rows the chain is certified on the first ones, and the compile on all
    rows, having the same structure, is not certified again. The fit is the same."""
    x = _data("real")
    certified_rows = []
    certify = chain.CompiledChain._certify

    def spy(self, real, gen):
        certified_rows.append(self.N)
        certify(self, real, gen)

    monkeypatch.setattr(chain.CompiledChain, "_certify", spy)
    runs = []
    for rows in (16, 10_000):
        monkeypatch.setattr(chain, "CERTIFY_ROWS", rows)
        pyro.clear_param_store()
        result = em(diag_normal, x, max_iter=3, tol=0.0, device="cpu")
        runs.append((result.log_likelihood, pyro.param("locs").detach().clone()))
    assert certified_rows == [16, N]
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-12)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-12, atol=0)


def offset_rate(x):
    """A rate that is a param gather plus an integer covariate: under the probe, coef[k, 0] + 1
    reads as the code of coef[k, 1]. Not a gather, so no closed form."""
    w = pyro.param("w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    coef = pyro.param("coef", x.new_tensor([[0.5, 3.0], [4.0, 3.0]]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Poisson(coef[z, 0] + x[:, 1]), obs=x[:, 0])


def test_an_argument_that_is_a_gather_only_on_the_certified_rows_is_caught(monkeypatch):
    """The first CERTIFY_ROWS rows have covariate 0 (there the rate is a gather, and certified);
    on the later rows it is not: the compile on all rows has the certified structure, but its
    arguments are checked on every row at perturbed params, and the model takes Pyro's
    enumeration with the reason."""
    monkeypatch.setattr(chain, "CERTIFY_ROWS", 64)
    g = torch.Generator().manual_seed(0)
    offset = (torch.arange(200) >= 64).double()
    z = torch.randint(2, (200,), generator=g)
    x = torch.stack([torch.poisson(torch.tensor([1.0, 6.0]).double()[z] + offset, generator=g), offset], -1)
    pyro.clear_param_store()
    result = em(offset_rate, x, max_iter=2, tol=0.0, device="cpu", m_step_steps=2)
    assert result.e_step == "enum"
    assert "is not a gather of param 'coef' on every row" in result.closed_form_refused


def far_tight_mixture(x):
    w = pyro.param("w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.param("locs", x.new_tensor([-990.0, 990.0]))
    scales = pyro.param("scales", x.new_tensor([0.05, 0.05]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], scales[z]), obs=x)


def test_tight_clusters_far_apart_in_float32_match_float64():
    """Clusters at -1000 and 1000 with scales 0.01: the expanded squares about the data's mean
    are ~1e10 per term, beyond float32; tables and statistics work in float64, so a float32 fit
    agrees with the float64 one."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([-1000 + 0.01 * torch.randn(150, generator=g), 1000 + 0.01 * torch.randn(150, generator=g)])
    x = x.double()[torch.randperm(300, generator=g)]
    fits = []
    for dtype in (torch.float64, torch.float32):
        pyro.clear_param_store()
        result = em(far_tight_mixture, x.to(dtype), max_iter=5, tol=0.0, device="cpu")
        assert result.e_step == "chain"
        fits.append((result.log_likelihood[-1], pyro.param("scales").detach().double()))
    assert abs(fits[1][0] - fits[0][0]) < 1e-3 * abs(fits[0][0])
    torch.testing.assert_close(fits[1][1], fits[0][1], rtol=1e-3, atol=0)
