"""Online EM (``em(..., batch_size=)``) on users' chain models: mixtures and HMMs written as Pyro
programs, whose M-step the library finds in closed form. One batch holding every row is one
batch-EM iteration exactly; minibatches reach batch EM's log-likelihood; data comes from
tensors and memory-mapped ``.npy`` files; weights, inits and refusals behave as in batch ``em``."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from test_em_chain_families import (
    _delta_guide,
    _mixture_data,
    _poisson_counts,
    mvn_mixture,
    mvn_mixture_tril,
    poisson_mixture_with_priors,
)
from test_hmm_em import _sequences, baum_welch, categorical_hmm, gaussian_hmm
from torch.distributions import constraints

from lvm_pyro.errors import ConfigurationError
from lvm_pyro.infer.em import em

HMM = {"data_plate": "sequences"}  # the plate over the rows, as Pyro's examples/hmm.py names it
POISSON_START = {"weights": torch.tensor([0.5, 0.5], dtype=torch.float64), "rates": torch.tensor([1.0, 4.0])}


def _fit(model, data, *, guide_start=None, **kwargs):
    """em on a fresh param store; the fitted params by name."""
    pyro.clear_param_store()
    guide = None
    if guide_start is not None:
        guide = _delta_guide(model, {k: v.to(data) for k, v in guide_start.items()})
    result = em(model, data, guide=guide, tol=0.0, device="cpu", **kwargs)
    if guide is None:
        params = {n: pyro.param(n).detach().clone() for n in pyro.get_param_store().keys()}
    else:
        params = {n: v.detach().clone() for n, v in guide.median(data).items()}
    return result, params


CASES = {
    "categorical hmm": (categorical_hmm, lambda: _sequences("categorical", n=30), None, HMM),
    "gaussian hmm": (gaussian_hmm, lambda: _sequences("gaussian", n=30), None, HMM),
    "mvn mixture": (mvn_mixture, _mixture_data, None, {}),
    "mvn mixture (scale_tril)": (mvn_mixture_tril, _mixture_data, None, {}),
    "poisson mixture, MAP": (poisson_mixture_with_priors, _poisson_counts, POISSON_START, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_batch_of_every_row_is_one_batch_em_iteration(case):
    model, data, start, plate = CASES[case]
    x = data()
    batch, expected = _fit(model, x, guide_start=start, max_iter=1, **plate)
    online, fitted = _fit(model, x, guide_start=start, max_iter=1, batch_size=len(x), **plate)
    assert (online.e_step, online.m_step) == ("chain", "online")
    assert online.param_routes == batch.param_routes
    assert all(r.startswith("closed_form") for r in online.param_routes.values())
    # the pass's log-likelihood is the batch's under the start, batch em's first entry
    np.testing.assert_allclose(online.log_likelihood, batch.log_likelihood[:1], rtol=1e-12)
    assert fitted.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(fitted[name], value, rtol=1e-10, atol=1e-12)


def test_minibatches_of_an_hmm_reach_batch_ems_log_likelihood():
    """400 Gaussian sequences in batches of 40, three passes, against batch Baum-Welch run to
    convergence: the per-sequence log-likelihood (by the forward algorithm) within 0.1%."""
    y = _sequences("gaussian", n=400, t=12, seed=3)
    _, batch = _fit(gaussian_hmm, y, max_iter=200, **HMM)
    online, fitted = _fit(gaussian_hmm, y, max_iter=3, batch_size=40, seed=0, **HMM)
    assert online.n_iter == 3 and online.config["n_steps"] == 30
    ll_batch = float(baum_welch("gaussian", batch, y)[0].mean())
    ll_online = float(baum_welch("gaussian", fitted, y)[0].mean())
    assert ll_online <= ll_batch + 1e-9
    assert abs(ll_online - ll_batch) < 1e-3 * abs(ll_batch)
    # and every pass's running figure improves on the start's
    start = float(baum_welch("gaussian", _start_of(gaussian_hmm, y), y)[0].mean())
    assert online.log_likelihood[-1] > start


def _start_of(model, y):
    pyro.clear_param_store()
    model(y)
    return {n: pyro.param(n).detach().clone() for n in pyro.get_param_store().keys()}


def test_a_memory_mapped_npy_file_gives_the_fit_of_the_tensor(tmp_path):
    y = _sequences("categorical", n=60, t=10, seed=4)
    path = tmp_path / "sequences.npy"
    np.save(path, y.numpy())
    _, from_tensor = _fit(categorical_hmm, y, max_iter=2, batch_size=16, seed=5, **HMM)
    _, from_file = _fit(categorical_hmm, str(path), max_iter=2, batch_size=16, seed=5, **HMM)
    for name, value in from_tensor.items():
        torch.testing.assert_close(from_file[name], value, rtol=1e-12, atol=0)


def test_integer_sample_weights_equal_replicated_rows_online():
    x = _mixture_data(seed=7)[::2]
    weights = torch.arange(len(x)) % 3
    replicated = x.repeat_interleave(weights, dim=0)
    _, weighted = _fit(mvn_mixture, x, max_iter=1, batch_size=len(x), sample_weight=weights.double())
    _, copies = _fit(mvn_mixture, replicated, max_iter=1, batch_size=len(replicated))
    for name, value in copies.items():
        torch.testing.assert_close(weighted[name], value, rtol=1e-10, atol=1e-12)


def test_a_random_start_is_reproducible_from_the_seed():
    y = _sequences("gaussian", n=40, t=8, seed=6)
    fits = [
        _fit(gaussian_hmm, y, max_iter=1, batch_size=10, init="random", seed=s, **HMM)[1] for s in (1, 1, 2)
    ]
    for name in fits[0]:
        torch.testing.assert_close(fits[0][name], fits[1][name], rtol=0, atol=0)
    assert any(not torch.equal(fits[0][n], fits[2][n]) for n in fits[0])


def positive_locs(x):
    """A Normal loc constrained positive: no closed form, so gradient steps in batch em."""
    w = pyro.param("w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.param("locs", x.new_tensor([0.5, 3.0]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)


def continuous_latent(x):
    loc = pyro.param("loc", x.new_tensor(0.0))
    with pyro.plate("data", len(x)):
        h = pyro.sample("h", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(h, 1.0), obs=x)


def test_models_online_em_cannot_fit_are_refused_naming_the_fix():
    x = torch.cat([torch.randn(50) * 0.5 + 0.5, torch.randn(50) * 0.5 + 3]).double()
    with pytest.raises(ConfigurationError, match=r"\['locs'\] take gradient steps.*batch_size=None"):
        _fit(positive_locs, x, batch_size=25)
    with pytest.raises(ConfigurationError, match="needs the closed-form M-step of a chain model"):
        _fit(continuous_latent, x, batch_size=25, guide_start=None)
    y = _sequences("gaussian", n=20)
    with pytest.raises(ConfigurationError, match="chunk_size does not apply"):
        _fit(gaussian_hmm, y, batch_size=10, chunk_size=5, **HMM)
    with pytest.raises(ConfigurationError, match="reads the rows x alone"):
        _fit(gaussian_hmm, (y, y), batch_size=10, **HMM)
    with pytest.raises(ConfigurationError, match="init='current'"):
        _fit(gaussian_hmm, y, batch_size=10, init="kmeans", **HMM)


def test_a_dataloader_of_float64_rows_is_fitted_in_float64():
    """A DataLoader has no dtype of its own: each batch keeps its floating dtype (not torch's
    default float32), as the same rows given as a tensor would."""
    from torch.utils.data import DataLoader, TensorDataset

    x = _mixture_data(seed=2)
    _, from_tensor = _fit(mvn_mixture, x, max_iter=1, batch_size=len(x))
    _, from_loader = _fit(
        mvn_mixture, DataLoader(TensorDataset(x), batch_size=len(x)), max_iter=1, batch_size=len(x)
    )
    for name, value in from_tensor.items():
        assert from_loader[name].dtype == torch.float64
        torch.testing.assert_close(from_loader[name], value, rtol=1e-10, atol=1e-12)
