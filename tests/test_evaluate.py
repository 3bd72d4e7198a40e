"""log_likelihood: exact on tractable models, bounds and monotonicity in k, chunking, bad input."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.nn import functional as F

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.data import make_mixture
from lvm_pyro.infer import evaluate
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.conditional import ConditionalBaseline
from lvm_pyro.models.discrete import SigmoidBeliefNet
from lvm_pyro.models.gmm import GaussianMixtureModel, GMMPrior
from lvm_pyro.models.mixture_prior import MixturePriorVAE
from lvm_pyro.models.vae import VAE

D, LATENT, NOISE = 5, 2, 0.5


def _ppca(encoder: str) -> VAE:
    """A linear-Gaussian VAE (probabilistic PCA): x = W z + b + N(0, NOISE^2 I), z ~ N(0, I)."""
    torch.manual_seed(0)
    vae = VAE((D,), LATENT, hidden=(), likelihood="gaussian", gaussian_scale=NOISE, encoder=encoder).double()
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(torch.randn(D, LATENT, dtype=torch.float64))
        vae.decoder.net[0].bias.copy_(torch.randn(D, dtype=torch.float64))
    return vae


def _ppca_truth(vae: VAE):
    W, b = vae.decoder.net[0].weight.detach(), vae.decoder.net[0].bias.detach()
    marginal = dist.MultivariateNormal(b, W @ W.T + NOISE**2 * torch.eye(D, dtype=W.dtype))
    post_cov = torch.linalg.inv(torch.eye(LATENT, dtype=W.dtype) + W.T @ W / NOISE**2)
    gain = post_cov @ W.T / NOISE**2  # E[z | x] = gain (x - b)
    return marginal, post_cov, gain, b


def _set_exact_posterior(vae: VAE) -> None:
    """Make the full-covariance encoder the exact posterior N(gain (x - b), post_cov)."""
    _, post_cov, gain, b = _ppca_truth(vae)
    head = vae.encoder_head
    L = torch.linalg.cholesky(post_cov)
    raw = L.clone()
    diag = torch.diagonal(L) - head.min_scale
    raw[range(LATENT), range(LATENT)] = diag + torch.log(-torch.expm1(-diag))  # softplus^-1
    with torch.no_grad():
        head.loc.weight.copy_(gain)
        head.loc.bias.copy_(-gain @ b)
        head.tril.weight.zero_()
        head.tril.bias.copy_(raw[head.rows, head.cols])


def _ppca_data(vae: VAE, n: int = 200) -> torch.Tensor:
    marginal, *_ = _ppca_truth(vae)
    torch.manual_seed(1)
    return marginal.sample((n,))


def test_exact_posterior_proposal_gives_the_exact_log_likelihood():
    vae = _ppca("full")
    _set_exact_posterior(vae)
    x = _ppca_data(vae)
    exact = _ppca_truth(vae)[0].log_prob(x)
    ll = log_likelihood(vae, x, num_samples=7, seed=0)
    torch.testing.assert_close(ll.per_example, exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(ll.ess, torch.full((len(x),), 7.0, dtype=torch.float64))
    assert ll.mean == pytest.approx(float(exact.mean()), abs=1e-9)
    assert ll.stderr == pytest.approx(float(exact.std() / math.sqrt(len(x))), rel=1e-9)
    assert lvm_pyro.elbo(vae, x, num_particles=3, seed=0) == pytest.approx(float(exact.mean()), abs=1e-9)


def _poor_guide_ppca(n: int = 200) -> tuple[VAE, torch.Tensor, float]:
    vae = _ppca("diag")
    _, post_cov, gain, b = _ppca_truth(vae)
    with torch.no_grad():
        vae.encoder_head.loc.weight.copy_(gain)
        vae.encoder_head.loc.bias.copy_(-gain @ b + 0.3)
        wide = 1.3 * post_cov.diagonal().sqrt() - vae.encoder_head.min_scale
        vae.encoder_head.raw_scale.weight.zero_()
        vae.encoder_head.raw_scale.bias.copy_(wide + torch.log(-torch.expm1(-wide)))
    x = _ppca_data(vae, n)
    return vae, x, float(_ppca_truth(vae)[0].log_prob(x).mean())


def test_estimate_rises_with_k_from_the_elbo_to_the_exact_value():
    vae, x, exact = _poor_guide_ppca()
    # L_1 is the ELBO: with the same seed and batches the two draw the same z
    one = log_likelihood(vae, x, num_samples=1, batch_size=len(x), seed=5).mean
    assert one == pytest.approx(lvm_pyro.elbo(vae, x, batch_size=len(x), seed=5), abs=1e-9)
    elbo = lvm_pyro.elbo(vae, x, num_particles=500, seed=0)
    estimates = [log_likelihood(vae, x, num_samples=k, seed=0).mean for k in (1, 10, 100, 3000)]
    assert estimates[0] < estimates[1] < estimates[2] < estimates[3] <= exact + 0.005, (estimates, exact)
    assert elbo < estimates[1] and exact - elbo > 1.0  # a loose guide, so the rise is not noise
    assert abs(estimates[3] - exact) < 0.02 * (exact - elbo) + 0.005


def _one_observed_site(x):
    """The smallest model the per-point checks accept (its weights are replaced below)."""
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(x.new_zeros(len(x)), 1.0), obs=x[:, 1])


def test_chunks_over_samples_and_data_are_combined_exactly(monkeypatch):
    """With a fixed table of log-weights, every way of cutting it gives logmeanexp of the table."""
    k, n = 50, 23
    table = torch.randn(k, n, dtype=torch.float64) * 3
    taken = torch.zeros(n, dtype=torch.long)

    def fake_log_weights(program, batch, num, nesting, plate):
        rows = batch[0][:, 0].long()
        start = int(taken[rows[0]])
        taken[rows] += num
        return table[start:start + num, rows]

    monkeypatch.setattr(evaluate, "_log_weights", fake_log_weights)
    x = torch.stack([torch.arange(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)
    expected = table.logsumexp(0) - math.log(k)
    weights = table.exp()
    expected_ess = weights.sum(0) ** 2 / (weights**2).sum(0)
    for options in ({}, {"batch_size": 7, "chunk_size": 8}, {"max_elements": 30}, {"chunk_size": 1}):
        taken.zero_()
        ll = log_likelihood(_one_observed_site, x, guide=lambda x: None, num_samples=k, **options)
        assert bool((taken == k).all()), options
        torch.testing.assert_close(ll.per_example, expected)
        torch.testing.assert_close(ll.ess, expected_ess)


def test_a_bounded_pass_still_reaches_the_exact_value():
    vae, x, _ = _poor_guide_ppca()
    x = x[:40]
    exact = float(_ppca_truth(vae)[0].log_prob(x).mean())
    bounded = log_likelihood(vae, x, num_samples=2000, max_elements=500, seed=1)
    assert abs(bounded.mean - exact) < 0.05
    assert bool((bounded.ess >= 1).all()) and bool((bounded.ess <= 2000).all())


def test_discrete_latents_converge_to_the_enumerated_log_likelihood():
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet((12,), latent_dim=4, encoder_hidden=(8,)).double()
    with torch.no_grad():
        sbn.decoder.net[0].weight.mul_(6.0)
    x = sbn.sample(100)
    exact = sbn.exact_log_likelihood(x)
    ll = log_likelihood(sbn, x, num_samples=4000, seed=0)
    small = log_likelihood(sbn, x, num_samples=10, seed=0)
    elbo = lvm_pyro.elbo(sbn, x, num_particles=200, seed=0)
    assert elbo < small.mean - 1.0 < ll.mean - 1.2
    torch.testing.assert_close(ll.per_example, exact, atol=0.15, rtol=0)
    assert abs(ll.mean - float(exact.mean())) < 0.01


def test_enumerated_component_is_summed_out_exactly():
    torch.manual_seed(0)
    enum = MixturePriorVAE((16,), latent_dim=2, n_components=3, hidden=(8,), enumerate_component=True)
    analytic = MixturePriorVAE((16,), latent_dim=2, n_components=3, hidden=(8,))
    analytic.load_state_dict(enum.state_dict())
    x = torch.randint(0, 2, (30, 16)).float()
    a = log_likelihood(enum, x, num_samples=50, seed=3)
    b = log_likelihood(analytic, x, num_samples=50, seed=3)
    torch.testing.assert_close(a.per_example, b.per_example, atol=1e-5, rtol=0)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gaussian_mixture_with_a_delta_guide_gives_the_closed_form(covariance_type):
    """z is enumerated and the globals are point estimates: every weight is p(x_i | theta_hat)."""
    x = make_mixture(120, 3, 2, seed=0, covariance_type=covariance_type, dtype=torch.float64).x
    gmm = GaussianMixtureModel(3, 2, covariance_type).double()
    lvm_pyro.em(gmm, x, max_iter=30, seed=0, device="cpu")
    exact = gmm.log_prob(x)
    for options in ({}, {"batch_size": 17, "chunk_size": 3}):
        ll = log_likelihood(gmm, x, num_samples=7, seed=0, **options)
        torch.testing.assert_close(ll.per_example, exact, atol=1e-10, rtol=0)
        torch.testing.assert_close(ll.ess, torch.full((len(x),), 7.0, dtype=torch.float64))
    assert ll.mean == pytest.approx(float(exact.mean()), abs=1e-10)
    # an AutoDelta over the globals of the Bayesian mixture: log p(x_i | theta_hat), no prior term
    bayes = GaussianMixtureModel(3, 2, covariance_type, prior=GMMPrior(2.0, 0.0, 10.0, 4.0)).double()
    bayes.load_state_dict(gmm.state_dict())
    ll = log_likelihood(bayes.model, x, guide=bayes.global_guide("delta"), num_samples=3, seed=0)
    torch.testing.assert_close(ll.per_example, exact, atol=1e-10, rtol=0)


def test_a_point_estimated_global_is_conditioned_on_and_locals_are_sampled():
    """mu is a global with a Delta guide, z_i local with the exact posterior given mu:
    log p(x_i | mu) = log N(x_i; mu, 2) exactly, whatever k."""
    def model(x):
        mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 10.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        mu = pyro.sample("mu", dist.Delta(x.new_tensor(0.7)))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal((x + mu) / 2, 0.5**0.5))

    x = torch.linspace(-2, 3, 25, dtype=torch.float64)
    ll = log_likelihood(model, x, guide=guide, num_samples=11, seed=0)
    exact = dist.Normal(x.new_tensor(0.7), 2**0.5).log_prob(x)
    torch.testing.assert_close(ll.per_example, exact, atol=1e-10, rtol=0)


def test_plain_callables_and_a_model_without_latents():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):  # too narrow and shifted: a poor proposal
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2 + 0.2, 0.5))

    x = torch.linspace(-2, 2, 40)
    exact = float(dist.Normal(0.0, math.sqrt(2)).log_prob(x).mean())
    assert abs(log_likelihood(model, x, guide=guide, num_samples=5000, seed=0).mean - exact) < 0.005

    torch.manual_seed(0)
    base = ConditionalBaseline((8,), n_classes=3, hidden=(4,))
    y, labels = torch.randint(0, 2, (20, 8)).float(), torch.randint(0, 3, (20,))
    p = base.decoder(F.one_hot(labels, 3).float())
    ll = log_likelihood(base, (y, labels), num_samples=5)
    torch.testing.assert_close(ll.per_example, p.log_prob(y).detach())


def test_bad_input_is_refused_with_a_fix():
    vae = VAE((4,), latent_dim=1, hidden=(3,))
    x = torch.randint(0, 2, (6, 4)).float()
    with pytest.raises(errors.ConfigurationError, match="num_samples must be a positive integer"):
        log_likelihood(vae, x, num_samples=0)
    with pytest.raises(errors.ConfigurationError, match="chunk_size"):
        log_likelihood(vae, x, chunk_size=-1)
    with pytest.raises(errors.DataError, match="likelihood='gaussian'"):
        log_likelihood(vae, x + 0.5)
    with pytest.raises(errors.DataError, match=r"shape \(5,\) but the model expects \(4,\)"):
        log_likelihood(vae, torch.zeros(6, 5))
    base = ConditionalBaseline((4,), n_classes=3, hidden=(3,))
    with pytest.raises(errors.DataError, match="5 rows but the data has 6"):
        log_likelihood(base, (x, torch.zeros(5, dtype=torch.long)))

    def global_model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def global_guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(errors.ModelContractError, match=r"'mu' is outside the 'data' plate"):
        log_likelihood(global_model, torch.zeros(3), guide=global_guide, num_samples=2)


def test_evaluation_follows_the_model_dtype():
    vae = VAE((4,), latent_dim=1, hidden=(3,)).double()
    x = torch.randint(0, 2, (6, 4)).float()
    ll = log_likelihood(vae, x, num_samples=4)
    assert ll.per_example.dtype == torch.float64 and math.isfinite(ll.mean)
    assert math.isfinite(lvm_pyro.elbo(vae, x))
