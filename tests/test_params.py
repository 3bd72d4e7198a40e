"""Two models in one process keep their own parameters (lvm_pyro.infer.params)."""

from __future__ import annotations

import gc

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import lvm_pyro
from lvm_pyro.models.gmm import GaussianMixtureModel


def normal_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def _fit(guide, x, steps=300, lr=0.05):
    lvm_pyro.fit((normal_model, guide), x, steps=steps, lr=lr, batch_size=len(x), progress=False, seed=0)
    return float(guide.median(x)["mu"])


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(200, generator=g) + 3, torch.randn(200, generator=g) - 5


def test_a_second_autoguide_neither_inherits_nor_overwrites_the_first():
    x1, x2 = _data()
    g1, g2 = AutoNormal(normal_model), AutoNormal(normal_model)
    first = _fit(g1, x1)
    assert first == pytest.approx(3, abs=0.3)
    # one small step: a fresh guide starts near 0, not from the first guide's 3
    assert abs(_fit(g2, x2, steps=1, lr=1e-3)) < 0.5
    second = _fit(g2, x2)
    assert second == pytest.approx(-5, abs=0.3)
    assert float(g1.median(x1)["mu"]) == first  # untouched, also when run inside Pyro
    assert g2._pyro_name.startswith("AutoNormal_") and g1._pyro_name != g2._pyro_name


def test_a_guide_set_up_before_fit_gets_its_own_copy():
    x1, x2 = _data()
    g1 = AutoNormal(normal_model)
    first = _fit(g1, x1)
    g2 = AutoNormal(normal_model)
    with torch.no_grad():
        g2(x2)  # set up outside fit: plain Pyro hands it the first guide's tensors
    assert _fit(g2, x2) == pytest.approx(-5, abs=0.3)
    assert float(g1.median(x1)["mu"]) == first


def test_two_mixtures_fitted_in_turn_keep_their_parameters():
    x1, x2 = _data()
    x1, x2 = x1[:, None], x2[:, None] * 2
    gmm1, gmm2 = GaussianMixtureModel(2, 1, "diag"), GaussianMixtureModel(2, 1, "diag")
    lvm_pyro.em(gmm1, x1, seed=0, device="cpu")
    loc1 = gmm1.loc.detach().clone()
    lvm_pyro.em(gmm2, x2, seed=0, device="cpu")
    poutine.trace(gmm1.guide).get_trace(x1)  # runs inside Pyro, where the store is read
    poutine.trace(gmm2.guide).get_trace(x2)
    torch.testing.assert_close(gmm1.loc.detach(), loc1, rtol=0, atol=0)
    assert not torch.allclose(gmm1.loc.detach(), gmm2.loc.detach())


def test_a_param_store_loaded_from_disk_still_starts_a_new_guide():
    x1, _ = _data()
    g1 = AutoNormal(normal_model)
    first = _fit(g1, x1)
    state = pyro.get_param_store().get_state()
    del g1
    gc.collect()  # the trained guide is gone; only its saved values remain
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state)
    g = AutoNormal(normal_model)
    assert _fit(g, x1, steps=1, lr=1e-6) == pytest.approx(first, abs=1e-4)
