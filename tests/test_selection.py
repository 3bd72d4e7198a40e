"""default_prior: scales that follow the data (per-feature centre and spread, a weak precision
prior), and the LOO estimates that depend on them."""

from __future__ import annotations

import pytest
import torch

from lvm_pyro.data import make_mixture
from lvm_pyro.diagnostics.selection import default_prior, select_components
from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.models.gmm import GMMPrior


def test_default_prior_is_centred_and_scaled_on_the_data():
    mix = make_mixture(300, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x = mix.x * scale + torch.tensor([50.0, -20.0], dtype=torch.float64)
    sd = x.std(0, unbiased=False)
    prior = default_prior(x)
    # the component means are centred on each feature's mean, with the data's spread
    assert prior.mean_loc == pytest.approx(x.mean(0).tolist(), abs=1e-12)
    assert prior.mean_scale == pytest.approx(float(sd.max()))
    assert (x.amax(0) - x.amin(0)).max() < 6 * prior.mean_scale
    # the precisions: mean 1 / (the data's variance), as weak as a Wishart allows
    assert prior.covariance_scale**2 == pytest.approx(float(sd.pow(2).mean()))
    assert prior.precision_df == 2.0 and prior.weight_concentration == 1.0


def test_default_prior_predicts_held_out_points_better_than_one_at_the_data_spread():
    """60 points, 3 well-separated clusters of about 20: D + 2 pseudo-observations of the
    whole data's variance (and means centred on the overall mean with 10x its spread) blur
    the clusters; the default predicts left-out points better and LOO picks K = 3."""
    x = make_mixture(60, 3, 2, seed=0, covariance_type="diag", dtype=torch.float64).x
    s = float(x.std(0, unbiased=False).mean())
    broad = GMMPrior(1.0, float(x.mean()), 10 * s, 4.0, s)
    options = dict(steps=200, num_samples=100, seed=0)
    default = select_components(x, (1, 2, 3, 4, 5), **options)
    assert default.best_k == 3, default.summary()
    assert default.scores[3] > select_components(x, (3,), prior=broad, **options).scores[3] + 3


def test_default_prior_refuses_bad_input():
    with pytest.raises(DataError, match=r"\(N, D\) array"):
        default_prior(torch.zeros(4))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
def test_loo_chooses_k_for_full_and_tied_covariances(covariance_type):
    """A Normal guide over each precision matrix's Cholesky factor (log-diagonal) gives LOO
    for the two covariance types whose precisions are matrices."""
    x = make_mixture(240, 3, 2, seed=0, covariance_type="full", dtype=torch.float64).x
    chosen = select_components(x, (1, 3), covariance_type=covariance_type, steps=200, num_samples=100, seed=0)
    assert chosen.best_k == 3, chosen.summary()
    assert chosen.scores[3] > chosen.scores[1] + 50
    assert max(chosen.max_khat.values()) < 1.0
    posterior = chosen.inference_data[3].posterior["precisions"]
    # every draw of every precision matrix is symmetric positive definite
    draws = torch.as_tensor(posterior.values).reshape(-1, 2, 2)
    assert bool((torch.linalg.eigvalsh(draws) > 0).all())


def test_the_one_standard_error_rule_prefers_the_smallest_k_within_noise_of_the_best():
    x = make_mixture(150, 3, 2, seed=4, covariance_type="diag", dtype=torch.float64).x
    options = dict(steps=150, num_samples=100, seed=0)
    chosen = select_components(x, (1, 2, 3, 4, 5), **options)
    top = max(chosen.scores, key=chosen.scores.get)
    dse = chosen.difference_standard_errors
    assert dse[top] == 0.0 and all(v >= 0 for v in dse.values())
    within = [k for k in chosen.scores if chosen.scores[top] - chosen.scores[k] <= dse[k]]
    assert chosen.best_k == min(within) == 3, chosen.summary()
    assert chosen.scores[2] < chosen.scores[top] - dse[2]  # K = 2 is clearly worse
    # "max" takes the top score, whatever its margin
    assert select_components(x, (1, 2, 3, 4, 5), rule="max", **options).best_k == top
    with pytest.raises(ConfigurationError, match="unknown rule"):
        select_components(x, (1, 2), rule="smallest")
