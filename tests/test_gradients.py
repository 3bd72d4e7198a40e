"""gradient_variance(): the closed form on a Normal-Normal guide, reparameterization against
the score function (with and without baselines) on a VAE at initialization, the decaying
baseline measured as in shuffled training, side effects, and bad input."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import NOISE, PRIOR_SCALE, normal_normal_model

from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics.gradients import gradient_variance
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.models.vae import VAE

GUIDE_SCALE = 0.3


def guide(x):
    loc = pyro.param("q_loc", x.new_tensor(0.5))
    pyro.sample("mu", dist.Normal(loc, GUIDE_SCALE))


def test_reparam_variance_of_the_location_gradient_is_the_closed_form():
    """d/dloc [log p(x, loc + s eps) - log q] = c - P (loc + s eps), P = 1/prior^2 + N/noise^2,
    so Var = P^2 s^2 exactly."""
    torch.manual_seed(0)
    x = torch.randn(30).double()
    result = gradient_variance(normal_normal_model, x, guide=guide, objective="reparam", num_draws=800,
                               seed=0)
    precision = 1 / PRIOR_SCALE**2 + len(x) / NOISE**2
    expected = precision**2 * GUIDE_SCALE**2
    assert result.per_parameter["q_loc"] == pytest.approx(expected, rel=0.15)
    assert result.total == pytest.approx(result.per_parameter["q_loc"])
    assert float(pyro.param("q_loc").detach()) == 0.5  # measured, not trained


@pytest.fixture(scope="module")
def digits():
    return load_digits(binarize=8).train.x[:100]


def test_score_function_variance_is_orders_of_magnitude_above_reparam_on_a_vae(digits):
    pyro.set_rng_seed(0)
    vae = VAE((64,), latent_dim=4, hidden=(32,))
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    reparam = gradient_variance(vae, digits, objective="reparam", num_draws=60, seed=0)
    plain = gradient_variance(vae, digits, objective="score", score_baseline="none", num_draws=60, seed=0)
    decaying = gradient_variance(vae, digits, objective="score", score_baseline="decaying", num_draws=60,
                                 warmup_draws=30, seed=0)
    encoder = [n for n in reparam.per_parameter if n.startswith("encoder")]
    decoder = [n for n in reparam.per_parameter if n.startswith("decoder")]
    assert plain.ratio(reparam) > 10
    assert plain.ratio(reparam, encoder) > 100
    # the decoder's gradient is pathwise under both estimators: same variance
    assert 0.5 < plain.ratio(reparam, decoder) < 2
    # a baseline removes most of the score function's variance, not all of it
    assert plain.ratio(decaying) > 10
    assert decaying.ratio(reparam, encoder) > 1
    assert "total" in plain.summary() and plain.label == "score (baseline: none)"
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k])
    assert not [k for k in pyro.get_param_store().keys() if "baseline" in k]  # averages cleaned up


SHIFT = 0.5


def _local_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _shifted_posterior_guide(baseline: torch.Tensor | None = None):
    """q(z_i) = N(x_i / 2 + shift, 1/2): the exact posterior moved by shift, optionally with a
    fixed baseline per data point."""
    def guide(x):
        shift = pyro.param("shift", x.new_tensor(SHIFT))
        infer = {} if baseline is None else {"baseline": {"baseline_value": baseline}}
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2 + shift, 0.5**0.5), infer=infer)
    return guide


def test_decaying_baseline_is_measured_as_in_shuffled_training():
    """Each point's ELBO term has mean log p(x_i) - shift^2, spread over the points far more
    than it varies with z. Training shuffles the data, so the per-position average tracks the
    mean over points: the variance is that of a constant baseline at that mean, not the far
    smaller one of an oracle baseline that knows each point's own mean (what an average kept
    on one fixed batch learns)."""
    x = torch.linspace(-6, 6, 40, dtype=torch.float64)
    per_point = dist.Normal(x.new_tensor(0.0), 2**0.5).log_prob(x) - SHIFT**2
    options = dict(objective="score", score_baseline="none", num_draws=400, seed=0)
    constant = gradient_variance(_local_model, x, guide=_shifted_posterior_guide(per_point.mean().expand(40)),
                                 **options)
    oracle = gradient_variance(_local_model, x, guide=_shifted_posterior_guide(per_point), **options)
    decaying = gradient_variance(_local_model, x, guide=_shifted_posterior_guide(), objective="score",
                                 score_baseline="decaying", num_draws=400, seed=0)
    assert oracle.total < 0.2 * constant.total  # the two readings are far apart here
    # an average of ~10 random points' costs: a little noisier than the exact constant, at most
    assert 0.8 < decaying.ratio(constant) < 1.3, (decaying.total, constant.total, oracle.total)


def test_neural_baseline_is_trained_during_warm_up(digits):
    pyro.set_rng_seed(0)
    vae = VAE((64,), latent_dim=4, hidden=(32,))
    plain = gradient_variance(vae, digits, objective="score", num_draws=20, seed=0)
    neural = gradient_variance(vae, digits, objective="score", score_baseline="neural", num_draws=20,
                               warmup_draws=50, seed=0)
    assert plain.ratio(neural) > 3


def test_bad_input_names_the_fix():
    x = torch.randn(10)
    with pytest.raises(ConfigurationError, match="unknown objective"):
        gradient_variance(normal_normal_model, x, guide=guide, objective="enum")
    with pytest.raises(ConfigurationError, match="score_baseline"):
        gradient_variance(normal_normal_model, x, guide=guide, objective="score", score_baseline="avg")
    for bad in (1, 0, 2.0):
        with pytest.raises(ConfigurationError, match="num_draws"):
            gradient_variance(normal_normal_model, x, guide=guide, num_draws=bad)

    def no_latent_guide(data):
        pyro.param("unused", data.new_tensor(0.0))

    def observed_only(data):
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(pyro.param("m", data.new_tensor(0.0)), 1.0), obs=data)

    with pytest.raises(ModelContractError, match="no latent"):
        gradient_variance(observed_only, x, guide=no_latent_guide)


def test_the_former_keyword_estimator_still_works_and_warns():
    x = torch.randn(20, generator=torch.Generator().manual_seed(0))
    with pytest.warns(FutureWarning, match="use objective='score'"):
        old = gradient_variance(normal_normal_model, x, guide=guide, estimator="score", num_draws=20, seed=0)
    new = gradient_variance(normal_normal_model, x, guide=guide, objective="score", num_draws=20, seed=0)
    assert old.objective == old.estimator == "score" and old.total == new.total
    with pytest.raises(ConfigurationError, match="not both"):
        gradient_variance(normal_normal_model, x, guide=guide, objective="score", estimator="reparam")
