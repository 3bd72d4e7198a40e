"""Online EM: the running average of a protocol model equals the full-data estimate, the
mixture reaches batch EM's log-likelihood (a small version of benchmarks/online_em.py), every
data source gives the same result, and GaussianMixture.partial_fit keeps scikit-learn's
conventions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lvm_pyro.data import make_mixture
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.estimators import GaussianMixture
from lvm_pyro.infer.em import em
from lvm_pyro.infer.online_em import OnlineEM, online_em
from lvm_pyro.models.gmm import GaussianMixtureModel


@dataclass
class _Moments:
    """Sufficient statistics of a normal: (sum w, sum w x, sum w x^2), a vector space."""

    n: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor

    def __add__(self, other):
        return _Moments(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    def __rmul__(self, c):
        return _Moments(c * self.n, c * self.s1, c * self.s2)


class _NormalModel(torch.nn.Module):
    """A user's model with the statistics protocol and no latent variable: x ~ N(mu, sigma^2)."""

    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)
        self.var = torch.nn.Parameter(torch.ones((), dtype=torch.float64), requires_grad=False)

    def expected_statistics(self, x, shift=None, chunk_size=None, sample_weight=None):
        w = torch.ones(len(x), dtype=x.dtype) if sample_weight is None else sample_weight
        x = x[:, 0]
        ll = (w * torch.distributions.Normal(self.mu, self.var.sqrt()).log_prob(x)).sum()
        return ll, _Moments(w.sum(), (w * x).sum(), (w * x * x).sum())

    def m_step_from_statistics(self, s):
        self.mu.copy_(s.s1 / s.n)
        self.var.copy_(s.s2 / s.n - (s.s1 / s.n) ** 2)


def test_step_size_one_over_t_gives_the_full_data_estimate_for_any_protocol_model():
    """kappa = 1, t0 = 0: gamma_t = 1 / t, so with equal batches s_t is the mean of the batch
    statistics and the estimate is the full-data maximum-likelihood one (to rounding)."""
    x = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    model = _NormalModel()
    result = online_em(model, x, batch_size=100, max_passes=1, kappa=1.0, averaging=None,
                       init=None, shuffle=False)
    assert result.n_steps == 10 and result.n_passes == 1
    assert float(model.mu) == pytest.approx(float(x.mean()), rel=1e-12)
    assert float(model.var) == pytest.approx(float(x.var(unbiased=False)), rel=1e-10)


def test_a_model_without_the_protocol_is_refused():
    with pytest.raises(ModelContractError, match="expected_statistics"):
        online_em(torch.nn.Linear(2, 2), torch.zeros(10, 2))
    with pytest.raises(ConfigurationError, match="kappa must be in \\(0.5, 1\\]"):
        OnlineEM(_NormalModel(), kappa=0.5)


def _problem(n=40_000, d=4, k=5, seed=0):
    mix = make_mixture(n, k, d, seed=seed, covariance_type="diag", dtype=torch.float64)
    return mix.x


def test_online_em_reaches_batch_em_log_likelihood_within_0_1_percent_in_three_passes():
    x = _problem()
    start = GaussianMixtureModel(5, 4, "diag").double()
    start.initialize_(x[:2000], "kmeans", torch.Generator().manual_seed(0))
    batch = GaussianMixtureModel(5, 4, "diag").double()
    batch.load_state_dict(start.state_dict())
    em(batch, x, init="current", max_iter=300, tol=1e-8, seed=0, device="cpu")
    online = GaussianMixtureModel(5, 4, "diag").double()
    online.load_state_dict(start.state_dict())
    result = online_em(online, x, batch_size=2000, max_passes=3, init=None, seed=0)
    assert result.n_passes == 3 and result.n_steps == 60
    ll_batch, ll_online = float(batch.log_prob(x).mean()), float(online.log_prob(x).mean())
    assert ll_online <= ll_batch + 1e-9  # batch EM's is a local maximum
    assert abs(ll_online - ll_batch) <= 1e-3 * abs(ll_batch)
    # the running per-pass estimate improves
    assert result.pass_log_likelihood[-1] > result.pass_log_likelihood[0]


def test_every_source_gives_the_same_fit(tmp_path):
    """A tensor, a numpy array, a .npy path (memory-mapped), a DataLoader and a generator
    stream over the same batches in the same order give the same parameters (bit for bit for
    the indexable sources; a DataLoader or stream has no known N, so the M-step's statistics
    are scaled by the rows seen so far, which changes only rounding)."""
    x = _problem(n=6000).to(torch.float32)
    path = tmp_path / "x.npy"
    np.save(path, x.numpy())
    loader = DataLoader(TensorDataset(x), batch_size=1000, shuffle=False)
    fits = {}
    for name, source in {
        "tensor": x,
        "array": x.numpy(),
        "memmap": np.load(path, mmap_mode="r"),
        "path": str(path),
        "loader": loader,
        "stream": (x[i : i + 1000] for i in range(0, 6000, 1000)),
    }.items():
        gmm = GaussianMixtureModel(5, 4, "diag")
        result = online_em(gmm, source, batch_size=1000, max_passes=1, shuffle=False, seed=3)
        assert result.n_steps == 6, name
        fits[name] = gmm.state_dict()
    for name, state in fits.items():
        for key, value in state.items():
            if name in ("loader", "stream"):
                torch.testing.assert_close(value, fits["tensor"][key], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(value, fits["tensor"][key]), (name, key)


def test_averaging_of_statistics_or_parameters_or_none_all_converge():
    x = _problem(n=20_000)
    lls = {}
    for averaging in ("statistics", "parameters", None):
        gmm = GaussianMixtureModel(5, 4, "diag").double()
        online_em(gmm, x, batch_size=1000, max_passes=2, averaging=averaging, seed=1)
        lls[averaging] = float(gmm.log_prob(x).mean())
    assert max(lls.values()) - min(lls.values()) < 2e-3 * abs(lls[None])


def test_partial_fit_follows_minibatch_kmeans_conventions():
    x = _problem(n=8000).numpy()
    gm = GaussianMixture(5, covariance_type="diag", random_state=0)
    for batch in np.array_split(x, 8):
        assert gm.partial_fit(batch) is gm
    assert gm.n_steps_ == 8 and gm.n_samples_seen_ == 8000 and gm.n_features_in_ == 4
    full = GaussianMixture(5, covariance_type="diag", random_state=0).fit(x)
    assert gm.score(x) == pytest.approx(full.score(x), rel=5e-3)
    assert gm.predict(x).shape == (8000,) and np.isclose(gm.weights_.sum(), 1.0)
    # a partial_fit after fit continues from the fit
    full.partial_fit(x[:1000])
    assert full.n_steps_ == 1 and full.score(x) == pytest.approx(gm.score(x), rel=5e-3)


def test_fit_with_batch_size_reads_a_npy_path(tmp_path):
    x = _problem(n=12_000).numpy().astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    gm = GaussianMixture(5, covariance_type="diag", batch_size=1000, max_iter=3, random_state=0).fit(str(path))
    assert gm.n_iter_ == 3 and gm.n_steps_ == 36 and gm.means_.dtype == np.float32
    batch = GaussianMixture(5, covariance_type="diag", random_state=0).fit(x)
    assert gm.score(x) == pytest.approx(batch.score(x), rel=1e-3)
    with pytest.raises(ConfigurationError, match="n_init=2 with batch_size"):
        GaussianMixture(5, batch_size=100, n_init=2).fit(x)
