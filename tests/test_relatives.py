"""The VAE's relatives: mixture-of-Gaussians prior, sigmoid belief network, black-box (per-point) VI."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics.amortization import amortization_gap
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.blackbox import BlackBoxVI
from lvm_pyro.models.discrete import SigmoidBeliefNet
from lvm_pyro.models.mixture_prior import MixturePriorVAE
from lvm_pyro.models.registry import get_model
from lvm_pyro.models.vae import VAE


def _binary(n: int = 32, d: int = 12, dtype=torch.float64) -> torch.Tensor:
    return torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(0)).to(dtype)


def _finite_float64(result, module) -> bool:
    return all(math.isfinite(v) for v in result.losses) and all(
        p.dtype == torch.float64 for p in module.parameters()
    )


# --- mixture-of-Gaussians prior ----------------------------------------------------------


@pytest.mark.parametrize("estimator", ["reparam", "meanfield", "score", "iwae", "enum"])
def test_mixture_prior_float64_with_every_estimator(estimator):
    model = MixturePriorVAE((12,), latent_dim=2, n_components=3, hidden=(8,),
                            enumerate_component=estimator == "enum")
    result = lvm_pyro.fit(model, _binary(), estimator=estimator, steps=3, batch_size=16,
                          num_particles=2 if estimator == "enum" else 1, progress=False, seed=0)
    assert _finite_float64(result, model)


def test_enumeration_and_the_analytic_marginal_are_the_same_objective():
    torch.manual_seed(0)
    enum = MixturePriorVAE((12,), latent_dim=2, n_components=4, hidden=(8,), enumerate_component=True)
    analytic = MixturePriorVAE((12,), latent_dim=2, n_components=4, hidden=(8,))
    analytic.load_state_dict(enum.state_dict())
    x = _binary(20, dtype=torch.float32)
    pyro.set_rng_seed(5)
    enum_loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enum.model, enum.guide, x)
    pyro.set_rng_seed(5)
    analytic_loss = Trace_ELBO().loss(analytic.model, analytic.guide, x)
    assert enum_loss == pytest.approx(analytic_loss, rel=1e-5)
    # the prior is the mixture density: log p(z) = logsumexp_c [log pi_c + log N(z; mu_c, sigma_c)]
    z = torch.randn(7, 2)
    by_hand = (torch.log_softmax(enum.component_logits, -1)
               + dist.Normal(enum.component_locs, enum.component_scales()).log_prob(z[:, None]).sum(-1))
    torch.testing.assert_close(analytic.prior(torch.Size([7]), z).log_prob(z), by_hand.logsumexp(-1))
    with pytest.raises(errors.ConfigurationError, match="objective='enum'"):
        lvm_pyro.fit(enum, x, steps=1, progress=False)


def test_mixture_prior_learns_and_clusters():
    torch.manual_seed(0)
    model = MixturePriorVAE((12,), latent_dim=2, n_components=3, hidden=(16,))
    x = _binary(64, dtype=torch.float32)
    start = lvm_pyro.elbo(model, x, num_particles=20, seed=0)
    lvm_pyro.fit(model, x, epochs=60, batch_size=32, lr=1e-2, kl_warmup=10, progress=False, seed=0)
    assert lvm_pyro.elbo(model, x, num_particles=20, seed=0) > start + 1.0
    probs = model.component_probs(x)
    assert probs.shape == (64, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(64))
    assert isinstance(get_model("mixvae").build(load_digits(binarize=8)), MixturePriorVAE)


# --- discrete latents --------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["reparam", "score", "iwae"])
def test_sigmoid_belief_net_float64_with_every_valid_estimator(estimator):
    model = SigmoidBeliefNet((12,), latent_dim=3, encoder_hidden=(8,))
    result = lvm_pyro.fit(model, _binary(), estimator=estimator, steps=3, batch_size=16, progress=False,
                          seed=0)
    assert _finite_float64(result, model)


def test_score_function_gradients_train_binary_latents():
    """A binary z has no pathwise gradient: the encoder learns only through the score function."""
    torch.manual_seed(0)
    truth = SigmoidBeliefNet((16,), latent_dim=3, encoder_hidden=(8,))
    with torch.no_grad():
        truth.decoder.net[0].weight.mul_(8.0)
    x = truth.sample(400)
    model = SigmoidBeliefNet((16,), latent_dim=3, encoder_hidden=(16,))
    guide_trace = pyro.poutine.trace(model.guide).get_trace(x)
    assert not guide_trace.nodes["z"]["fn"].has_rsample
    before = model.exact_log_likelihood(x).mean()
    elbo_before = lvm_pyro.elbo(model, x, num_particles=20, seed=0)
    lvm_pyro.fit(model, x, estimator="score", epochs=40, batch_size=100, lr=2e-2, progress=False, seed=0)
    exact = model.exact_log_likelihood(x).mean()
    elbo = lvm_pyro.elbo(model, x, num_particles=20, seed=0)
    assert float(exact) > float(before) + 3.0
    assert elbo > elbo_before + 3.0 and exact - elbo < 1.5  # the encoder has learned: the bound is tight-ish
    assert abs(log_likelihood(model, x, num_samples=500, seed=0).mean - float(exact)) < 0.05
    assert model.reconstruct(x[:5]).shape == (5, 16) and model.encode(x[:5]).event_shape == (3,)


def test_sigmoid_belief_net_bad_input():
    with pytest.raises(errors.ConfigurationError, match="latent_dim <= 16"):
        SigmoidBeliefNet((4,), latent_dim=17).exact_log_likelihood(torch.zeros(2, 4))
    with pytest.raises(errors.ConfigurationError, match="latent_dim must be a positive integer"):
        SigmoidBeliefNet((4,), latent_dim=0)
    with pytest.raises(errors.DataError, match="likelihood='gaussian'"):
        lvm_pyro.fit(SigmoidBeliefNet((4,), latent_dim=2), torch.rand(8, 4) + 0.1, steps=1, progress=False)
    assert get_model("sbn").fit_options["objective"] == "score"


# --- black-box (non-amortized) VI ----------------------------------------------------------


@pytest.mark.parametrize("encoder", ["diag", "full"])
@pytest.mark.parametrize("estimator", ["reparam", "meanfield", "score", "iwae"])
def test_black_box_float64_with_every_estimator_keeps_the_decoder(encoder, estimator):
    vae = VAE((12,), latent_dim=2, hidden=(8,), encoder=encoder)
    local = BlackBoxVI(vae, num_data=32)
    x = _binary()
    before = {k: v.clone().double() for k, v in vae.state_dict().items()}
    loc_before = local.loc.detach().clone().double()
    result = lvm_pyro.fit(local, local.with_index(x), estimator=estimator, steps=3, batch_size=16,
                          progress=False, seed=0)
    assert _finite_float64(result, local) and "compile_fallback" not in result.config
    for model in (vae, local.vae):
        assert all(torch.equal(before[k], v.double()) for k, v in model.state_dict().items())
    assert not torch.equal(loc_before, local.loc.detach())


def test_black_box_can_train_the_decoder_too():
    vae = VAE((12,), latent_dim=2, hidden=(8,))
    local = BlackBoxVI(vae, num_data=32, train_decoder=True)
    weight = vae.decoder.net[0].weight.detach().clone()
    lvm_pyro.fit(local, local.with_index(_binary(dtype=torch.float32)), steps=3, batch_size=16,
                 progress=False, seed=0)
    assert not torch.equal(weight, vae.decoder.net[0].weight.detach())


def test_amortization_gap_is_positive_after_training():
    data = load_digits(binarize=8)
    vae = VAE(latent_dim=4, hidden=(32,))
    lvm_pyro.fit(vae, data.train.x, epochs=10, batch_size=64, lr=3e-3, kl_warmup=3, progress=False, seed=0)
    result = amortization_gap(vae, data.test.x[:50], steps=300, lr=0.05, num_particles=200)
    assert result.gap > 0.05, result
    assert result.elbo_local <= log_likelihood(vae, data.test.x[:50], num_samples=500, seed=0).mean + 0.05


def test_black_box_bad_input():
    vae = VAE((12,), latent_dim=2, hidden=(8,))
    local = BlackBoxVI(vae, num_data=10)
    with pytest.raises(errors.DataError, match="x has 12 rows .* num_data=12"):
        local.with_index(_binary(12))
    with pytest.raises(errors.DataError, match=r"rows 0..11 .* rows 0..9"):
        lvm_pyro.fit(local, (_binary(12), torch.arange(12)), steps=1, progress=False)
    with pytest.raises(errors.ConfigurationError, match="needs a VAE"):
        BlackBoxVI(SigmoidBeliefNet((12,), latent_dim=2), num_data=10)
    bb = BlackBoxVI(vae, num_data=6).init_from_encoder(_binary(6, dtype=torch.float32))
    q = vae.encode(_binary(6, dtype=torch.float32))
    torch.testing.assert_close(bb.local_posterior(torch.arange(6)).base_dist.scale, q.base_dist.scale)
