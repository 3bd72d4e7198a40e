"""default_prior: scales that follow the data (per-feature centre, spread, K components), and
the LOO choice of K that depends on them."""

from __future__ import annotations

import pytest
import torch

from lvm_pyro.data import make_mixture
from lvm_pyro.diagnostics.selection import default_prior, select_components
from lvm_pyro.errors import ConfigurationError, DataError


def test_default_prior_is_centred_and_scaled_on_the_data_and_on_k():
    mix = make_mixture(300, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x = mix.x * scale + torch.tensor([50.0, -20.0], dtype=torch.float64)
    sd = x.std(0, unbiased=False)
    one, three = default_prior(x), default_prior(x, 3)
    # the component means are centred on each feature's mean, with the data's spread
    assert one.mean_loc == pytest.approx(x.mean(0).tolist(), abs=1e-12)
    assert one.mean_scale == pytest.approx(float(sd.max()))
    assert (x.amax(0) - x.amin(0)).max() < 6 * one.mean_scale
    # one component: the prior's mean variance is the data's; three share the data's area
    assert one.covariance_scale**2 == pytest.approx(float(sd.pow(2).mean()))
    assert three.covariance_scale**2 == pytest.approx(one.covariance_scale**2 / 3)
    true_variances = (mix.covariances * scale**2).flatten()
    assert true_variances.min() / 2 < three.covariance_scale**2 < 2 * true_variances.max()
    assert three.precision_df == 4.0 and three.weight_concentration == 1.0


def test_loo_picks_the_true_k_on_a_small_sample():
    """60 points, 3 well-separated clusters: a precision prior at the whole data's spread
    (the old default) blurs the 20-point clusters and LOO then prefers K=5."""
    x = make_mixture(60, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64).x
    by_loo = select_components(x, (1, 2, 3, 4, 5), steps=200, num_samples=100, seed=0)
    assert by_loo.best_k == 3, by_loo.summary()
    assert by_loo.scores[3] > by_loo.scores[2] + 5


def test_default_prior_refuses_bad_input():
    with pytest.raises(ConfigurationError, match="n_components must be a positive integer"):
        default_prior(torch.zeros(4, 2), 0)
    with pytest.raises(DataError, match=r"\(N, D\) array"):
        default_prior(torch.zeros(4))
