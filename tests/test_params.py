"""Two models in one process keep their own parameters, and fit/em leave Pyro's param store and
the modules' names as they found them (lvm_pyro.infer.params)."""

from __future__ import annotations

import gc

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal

import lvm_pyro
from lvm_pyro.infer.callbacks import Callback
from lvm_pyro.infer.params import claim_module_params, restoring_param_store
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


def _store() -> dict[str, torch.Tensor]:
    return dict(pyro.get_param_store().named_parameters())


def test_a_second_autoguide_neither_inherits_nor_overwrites_the_first():
    x1, x2 = _data()
    g1, g2 = AutoNormal(normal_model), AutoNormal(normal_model)
    first = _fit(g1, x1)
    assert first == pytest.approx(3, abs=0.3)
    # one small step: a fresh guide starts near 0, not from the first guide's 3
    assert abs(_fit(g2, x2, steps=1, lr=1e-3)) < 0.5
    second = _fit(g2, x2)
    assert second == pytest.approx(-5, abs=0.3)
    assert float(g1.median(x1)["mu"]) == first  # untouched
    # neither renamed nor left in the store
    assert g1._pyro_name == g2._pyro_name == "AutoNormal"
    assert _store() == {}
    assert g1.locs.mu is not g2.locs.mu


def test_a_guide_set_up_before_fit_gets_its_own_copy():
    x1, x2 = _data()
    g1 = AutoNormal(normal_model)
    first = _fit(g1, x1)
    g2 = AutoNormal(normal_model)
    with torch.no_grad():
        g2(x2)  # set up outside fit: the store holds nothing of the first guide to hand it
    assert _fit(g2, x2) == pytest.approx(-5, abs=0.3)
    assert float(g1.median(x1)["mu"]) == first


def test_two_mixtures_fitted_in_turn_keep_their_parameters():
    x1, x2 = _data()
    x1, x2 = x1[:, None], x2[:, None] * 2
    gmm1, gmm2 = GaussianMixtureModel(2, 1, "diag"), GaussianMixtureModel(2, 1, "diag")
    lvm_pyro.em(gmm1, x1, seed=0, device="cpu")
    loc1, tensors1 = gmm1.loc.detach().clone(), [id(p) for p in gmm1.parameters()]
    lvm_pyro.em(gmm2, x2, seed=0, device="cpu")
    torch.testing.assert_close(gmm1.loc.detach(), loc1, rtol=0, atol=0)
    assert [id(p) for p in gmm1.parameters()] == tensors1
    assert not torch.allclose(gmm1.loc.detach(), gmm2.loc.detach())
    assert _store() == {}
    # plain Pyro afterwards: one param-store scope per model (Pyro's own remedy)
    store = pyro.get_param_store()
    with store.scope():
        poutine.trace(gmm1.guide).get_trace(x1)
    with store.scope():
        poutine.trace(gmm2.guide).get_trace(x2)
    torch.testing.assert_close(gmm1.loc.detach(), loc1, rtol=0, atol=0)
    assert not torch.allclose(gmm1.loc.detach(), gmm2.loc.detach())


def test_a_param_store_loaded_from_disk_still_starts_a_new_guide():
    x1, _ = _data()
    g1 = AutoNormal(normal_model)
    first = _fit(g1, x1)
    with torch.no_grad():
        g1(x1)  # plain Pyro: puts the guide's values in the store, to be saved
    state = pyro.get_param_store().get_state()
    assert sorted(state["params"]) == ["AutoNormal.locs.mu", "AutoNormal.scales.mu"]
    del g1
    gc.collect()  # the trained guide is gone; only its saved values remain
    pyro.clear_param_store()
    pyro.get_param_store().set_state(state)
    g = AutoNormal(normal_model)
    assert _fit(g, x1, steps=1, lr=1e-6) == pytest.approx(first, abs=1e-4)
    assert sorted(_store()) == ["AutoNormal.locs.mu", "AutoNormal.scales.mu"]  # kept, as loaded


def test_an_entry_of_the_same_name_is_set_aside_and_put_back():
    """The user's own pyro.param("loc") and a top-level mixture's "loc": em trains the mixture's
    own tensor, and the user's entry is back (the same tensor, the same value) afterwards."""
    x1, _ = _data()
    x1 = x1[:, None]
    pyro.param("loc", torch.full((2, 1), 100.0))
    before = _store()
    gmm = GaussianMixtureModel(2, 1, "diag")
    own = gmm.loc
    lvm_pyro.em(gmm, x1, seed=0, device="cpu")
    assert gmm.loc is own
    assert float(gmm.loc.detach().abs().max()) < 10  # fitted to the data, not started from 100
    after = _store()
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert float(pyro.param("loc").detach().min()) == 100.0


def test_a_plain_callables_params_stay_in_the_store_as_in_pyro():
    x1, _ = _data()

    def guide(x):
        loc = pyro.param("q_loc", x.new_zeros(()))
        pyro.sample("mu", dist.Normal(loc, 0.1))

    lvm_pyro.fit((normal_model, guide), x1, steps=200, lr=0.05, batch_size=len(x1), progress=False, seed=0)
    assert list(_store()) == ["q_loc"]
    assert float(pyro.param("q_loc").detach()) == pytest.approx(3, abs=0.3)


def test_the_store_is_put_back_when_fit_raises():
    x1, _ = _data()
    g0 = AutoNormal(normal_model)
    _fit(g0, x1, steps=2)
    with torch.no_grad():
        g0(x1)  # plain Pyro: a trained guide's tensors in the store, under the names g's will have
    pyro.param("other", torch.tensor(7.0))
    before = _store()

    class Boom(Callback):
        def on_step_end(self, state):
            raise RuntimeError("boom")

    g = AutoNormal(normal_model)
    with pytest.raises(RuntimeError, match="boom"):
        lvm_pyro.fit((normal_model, g), x1, steps=5, batch_size=len(x1), progress=False, callbacks=[Boom()])
    after = _store()
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_a_scope_sets_aside_another_modules_entries_and_closes_once():
    x1, _ = _data()
    g1 = AutoNormal(normal_model)
    with torch.no_grad():
        g1(x1)  # plain Pyro: g1's tensors in the store
    before = _store()
    g2 = AutoNormal(normal_model)
    with claim_module_params(g2) as scope:
        assert scope.set_aside == []  # g2 holds nothing yet and g1 was never trained: adopt, as Pyro
    assert _store().keys() == before.keys()
    with restoring_param_store():
        lvm_pyro.fit((normal_model, g1), x1, steps=2, batch_size=len(x1), progress=False)
        g3 = AutoNormal(normal_model)
        with claim_module_params(g3) as scope:  # g1 is now a trained module: its entries go aside
            assert scope.set_aside == ["AutoNormal.locs.mu", "AutoNormal.scales.mu"]
            with torch.no_grad():
                g3(x1)
            assert g3.locs.mu is not g1.locs.mu
        scope.close()  # idempotent
    after = _store()
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
