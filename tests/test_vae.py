"""VAE: every likelihood, encoder and estimator in float64; user methods; learning; bad input."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.data import load_digits
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.registry import get_model
from lvm_pyro.models.vae import VAE


def _data(likelihood: str, shape=(4, 4), n: int = 32, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if likelihood == "bernoulli":
        return torch.randint(0, 2, (n, *shape), generator=g).to(dtype)
    if likelihood == "categorical":
        return torch.randint(0, 5, (n, *shape), generator=g).to(dtype)
    return torch.randn((n, *shape), generator=g, dtype=dtype)


@pytest.mark.parametrize("estimator", ["reparam", "meanfield", "score", "iwae"])
@pytest.mark.parametrize("likelihood, encoder", [("bernoulli", "diag"), ("bernoulli", "full"),
                                                 ("gaussian", "diag"), ("categorical", "full")])
def test_float64_training_with_every_estimator(likelihood, encoder, estimator):
    assert torch.get_default_dtype() == torch.float32
    vae = VAE((4, 4), latent_dim=2, hidden=(8,), likelihood=likelihood, encoder=encoder, n_levels=5)
    result = lvm_pyro.fit(vae, _data(likelihood), estimator=estimator, steps=3, batch_size=16,
                          progress=False, seed=0)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float64 for p in vae.parameters())
    # the model's default warm-up applies to the ELBO estimators; the IWAE bound has no KL term
    assert result.config["kl_warmup"] == (0.0 if estimator == "iwae" else VAE.default_kl_warmup)


def test_user_methods_have_the_documented_shapes_and_meaning():
    vae = VAE((8, 8), latent_dim=3, hidden=(16,), likelihood="categorical", n_levels=17)
    x = torch.randint(0, 17, (5, 8, 8)).float()
    q = vae.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    p = vae.decode(q.mean)
    assert p.batch_shape == (5,) and p.event_shape == (8, 8)
    recon = vae.reconstruct(x)
    assert recon.shape == (5, 8, 8) and bool(((recon >= 0) & (recon <= 16)).all())
    draws = vae.sample(4)
    assert draws.shape == (4, 8, 8) and bool((draws == draws.round()).all()) and float(draws.max()) <= 16
    assert vae.sample(2, mean=True).shape == (2, 8, 8)
    with pytest.raises(errors.DataError, match=r"pass z of shape \(N, 3\)"):
        vae.decode(torch.zeros(5, 2))


def test_map_z_maximizes_the_joint_density_and_leaves_the_model_alone():
    torch.manual_seed(0)
    vae = VAE((16,), latent_dim=2, hidden=(8,))
    x = torch.randint(0, 2, (10, 16)).float()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    z_map = vae.map_z(x, steps=300)
    z_enc = vae.encode(x).mean
    with torch.no_grad():
        gain = vae.log_joint(x, z_map) - vae.log_joint(x, z_enc)
    assert bool((gain >= -1e-4).all()) and float(gain.mean()) > 0.01
    # at a maximum the gradient vanishes
    z = z_map.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(vae.log_joint(x, z).sum(), z)
    assert float(grad.abs().max()) < 1e-2
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_full_covariance_encoder_is_mu_plus_L_eps():
    vae = VAE((6,), latent_dim=3, hidden=(8,), encoder="full")
    with torch.no_grad():
        vae.encoder_head.tril.bias.normal_()
    q = vae.encode(torch.ones(2, 6))
    L = q.scale_tril
    assert torch.equal(L, torch.tril(L)) and bool((torch.diagonal(L, dim1=-2, dim2=-1) > 0).all())
    assert float(torch.tril(L, -1).abs().max()) > 0.1  # correlations are representable
    torch.manual_seed(3)
    z = q.rsample()
    torch.manual_seed(3)
    eps = torch.randn(2, 3)
    torch.testing.assert_close(z, q.loc + (L @ eps[..., None])[..., 0])


def test_gaussian_scale_is_learned_or_fixed():
    x = _data("gaussian", shape=(6,), dtype=torch.float32) * 0.1
    learned = VAE((6,), latent_dim=1, hidden=(4,), likelihood="gaussian")
    fixed = VAE((6,), latent_dim=1, hidden=(4,), likelihood="gaussian", gaussian_scale=0.3)
    for vae in (learned, fixed):
        lvm_pyro.fit(vae, x, steps=50, lr=0.05, batch_size=32, progress=False, seed=0, kl_warmup=0)
    assert float(learned.decoder.scale().detach().max()) < 0.6  # moved from softplus(0) ~ 0.70 toward 0.1
    torch.testing.assert_close(fixed.decoder.scale(), torch.full((6,), 0.3))


def test_a_short_training_beats_independent_pixels_on_the_digits():
    data = load_digits(binarize=8)
    x, test = data.train.x, data.test.x
    p = x.mean(0).clamp(1e-3, 1 - 1e-3)
    independent = float((test * p.log() + (1 - test) * (1 - p).log()).sum(1).mean())
    vae = VAE(latent_dim=4, hidden=(64,))
    lvm_pyro.fit(vae, x, epochs=15, batch_size=64, lr=3e-3, kl_warmup=5, progress=False, seed=0)
    ll = log_likelihood(vae, test, num_samples=100, seed=0)
    assert ll.mean > independent + 4.0, (ll.mean, independent)  # about -20 vs -25.2
    assert ll.mean >= lvm_pyro.elbo(vae, test, seed=0)


def test_registered_for_the_command_line():
    entry = get_model("vae")
    vae = entry.build(load_digits(binarize=8), latent_dim=8)
    assert isinstance(vae, VAE) and vae.latent_dim == 8 and entry.data_options == {"binarize": 8}


def test_bad_input_is_refused_with_a_fix():
    vae = VAE((8, 8), latent_dim=2, hidden=(4,))
    grey = torch.randint(0, 17, (10, 8, 8)).float()
    with pytest.raises(errors.DataError, match="likelihood='gaussian'.*'categorical'"):
        lvm_pyro.fit(vae, grey, steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"3-D data is expected: .* x.reshape\(-1, 8, 8\)"):
        lvm_pyro.fit(vae, torch.zeros(10, 64), steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"examples of shape \(4, 16\) but the model expects \(8, 8\)"):
        lvm_pyro.fit(vae, torch.zeros(10, 4, 16), steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"x.reshape\(-1, 8, 8\)"):
        vae.encode(torch.zeros(64))
    with pytest.raises(errors.ConfigurationError, match="latent_dim must be a positive integer"):
        VAE((64,), latent_dim=0)
    categorical = VAE((8, 8), latent_dim=2, hidden=(4,), likelihood="categorical", n_levels=16)
    with pytest.raises(errors.DataError, match="the level 16 .* pass n_levels=17"):
        lvm_pyro.fit(categorical, grey.clamp(0, 16) + (grey == 0) * 16, steps=1, progress=False)
    with pytest.raises(errors.ConfigurationError, match="unknown likelihood 'poisson'"):
        VAE((64,), likelihood="poisson")
    with pytest.raises(errors.ConfigurationError, match="unknown encoder"):
        VAE((64,), encoder="lowrank")
    with pytest.raises(errors.ConfigurationError, match="gaussian_scale=-1"):
        VAE((64,), likelihood="gaussian", gaussian_scale=-1)
    with pytest.raises(errors.ConfigurationError, match="input_shape"):
        VAE((8, 0))
    with pytest.raises(errors.ConfigurationError, match="hidden"):
        VAE((64,), hidden=256)


def test_model_broadcasts_over_extra_batch_dims():
    """Vectorized particles add a leading dim: the model and guide must broadcast over it."""
    vae = VAE((4,), latent_dim=2, hidden=(3,))
    x = torch.randint(0, 2, (5, 4)).float()
    with pyro.plate("particles", 7, dim=-2):
        trace = pyro.poutine.trace(vae.guide).get_trace(x)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=trace)).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (7, 5, 2)
    assert model_trace.nodes["x"]["fn"].batch_shape == (7, 5)


@pytest.mark.parametrize("objective", ["reparam", "meanfield"])
def test_compiled_digits_vae_follows_the_eager_trajectory(objective):
    """The benchmarked set-up (benchmarks/svi_overhead.py), shrunk: compiled losses equal eager ones."""
    x = load_digits(binarize=8).train.x[:256]
    runs = {}
    for mode in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        vae = VAE((64,), latent_dim=4, hidden=(32,))
        result = lvm_pyro.fit(vae, x, objective=objective, steps=40, batch_size=32, lr=1e-3, kl_warmup=0,
                              progress=False, seed=0, compile=mode)
        runs[mode] = (result, {k: v.detach().clone() for k, v in vae.state_dict().items()})
    (eager, eager_state), (compiled, compiled_state) = runs[False], runs[True]
    assert compiled.config["compiled"] is True  # recorded, verified and used (no timed trial: a fixed rule)
    torch.testing.assert_close(torch.tensor(compiled.losses), torch.tensor(eager.losses), rtol=1e-5, atol=0.0)
    for name, value in eager_state.items():
        torch.testing.assert_close(compiled_state[name], value, rtol=1e-4, atol=1e-6)
