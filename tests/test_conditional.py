"""Conditional VAE and baseline: float64 with every estimator, a task only the CVAE models, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.data import load_digits
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.conditional import ConditionalBaseline, ConditionalVAE, halves
from lvm_pyro.models.registry import get_model


def _completion(n: int = 32, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (n, 6), generator=g).to(dtype)
    x = torch.randint(0, 2, (n, 4), generator=g).float()
    return y, x


@pytest.mark.parametrize("estimator", ["reparam", "meanfield", "score", "iwae"])
@pytest.mark.parametrize("condition", ["features", "labels"])
def test_float64_training_with_every_estimator(condition, estimator):
    y, x = _completion()
    if condition == "labels":
        x = torch.arange(len(y)) % 3
        model = ConditionalVAE((6,), n_classes=3, latent_dim=2, hidden=(8,), prior_hidden=(4,))
    else:
        model = ConditionalVAE((6,), (4,), latent_dim=2, hidden=(8,), prior_hidden=())
    result = lvm_pyro.fit(model, (y, x), estimator=estimator, steps=3, batch_size=16, progress=False, seed=0)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float64 for p in model.parameters())


def test_baseline_trains_in_float64():
    y, x = _completion()
    base = ConditionalBaseline((6,), (4,), hidden=(8,))
    result = lvm_pyro.fit(base, (y, x), steps=3, batch_size=16, progress=False, seed=0)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float64 for p in base.parameters())


def test_cvae_models_a_bimodal_target_the_baseline_cannot():
    """y | x is one of two complementary patterns with probability 1/2 each.

    Any network predicting independent pixels is at best 8 log(1/2) = -5.55 nats;
    the CVAE's latent picks the pattern, reaching log(1/2) = -0.69.
    """
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.randint(0, 2, (n, 2), generator=g).float()
    pattern = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0])
    flip = torch.randint(0, 2, (n, 1), generator=g).float()
    y = flip * pattern + (1 - flip) * (1 - pattern)
    cvae = ConditionalVAE((8,), (2,), latent_dim=1, hidden=(16,), prior_hidden=(8,))
    base = ConditionalBaseline((8,), (2,), hidden=(16,))
    lvm_pyro.fit(cvae, (y, x), epochs=150, batch_size=64, lr=1e-2, kl_warmup=20, progress=False, seed=0)
    lvm_pyro.fit(base, (y, x), epochs=60, batch_size=64, lr=1e-2, progress=False, seed=0)
    ll_cvae = log_likelihood(cvae, (y, x), num_samples=200, seed=0).mean
    ll_base = log_likelihood(base, (y, x), num_samples=1).mean
    assert 8 * math.log(0.5) - 0.05 < ll_base < 8 * math.log(0.5) + 0.2  # up to the sample's imbalance
    assert ll_cvae > -1.5 > ll_base + 3.0, (ll_cvae, ll_base)
    draws = cvae.sample(x)
    clean = ((draws == pattern).all(1) | (draws == 1 - pattern).all(1)).float().mean()
    assert float(clean) > 0.7, float(clean)  # most draws are one of the two patterns
    mean = cvae.predict(x[:4], num_samples=2000)
    torch.testing.assert_close(mean, torch.full((4, 8), 0.5), atol=0.15, rtol=0)


def test_user_methods_and_the_digit_tasks():
    data = load_digits(binarize=8)
    y, top = halves(data.test)
    assert y.shape == (300, 32) and top.shape == (300, 32)
    torch.testing.assert_close(torch.cat([top, y], 1), data.test.x)
    cvae = ConditionalVAE((32,), (32,), latent_dim=2, hidden=(8,))
    assert cvae.encode(y, top).batch_shape == (300,)
    assert cvae.sample(top[:5]).shape == (5, 32) and cvae.predict(top[:5]).shape == (5, 32)
    label = ConditionalVAE((8, 8), n_classes=10, latent_dim=2, hidden=(8,))
    images = label.sample(torch.arange(10))
    assert images.shape == (10, 8, 8) and set(images.unique().tolist()) <= {0.0, 1.0}
    assert ConditionalBaseline((64,), n_classes=10, hidden=(8,)).sample(torch.arange(3)).shape == (3, 64)
    for name, kind in (("cvae", ConditionalVAE), ("cvae-label", ConditionalVAE), ("cvae-baseline",
                                                                                  ConditionalBaseline)):
        entry = get_model(name)
        model = entry.build(data)
        target, cond = entry.prepare(data.val)
        assert isinstance(model, kind) and len(target) == len(cond) == 300
        assert math.isfinite(lvm_pyro.elbo(model, (target, cond)))


def test_bad_input_is_refused_with_a_fix():
    y, x = _completion(10, dtype=torch.float32)
    cvae = ConditionalVAE((6,), (4,), latent_dim=2, hidden=(8,))
    with pytest.raises(errors.DataError, match="condition 1 has 9 rows but the data has 10"):
        lvm_pyro.fit(cvae, (y, x[:9]), steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"\(5,\) but the model expects \(4,\).*shape=\(5,\)"):
        lvm_pyro.fit(cvae, (y, torch.zeros(10, 5)), steps=1, progress=False)
    with pytest.raises(errors.DataError, match="likelihood='gaussian'"):
        lvm_pyro.fit(cvae, (y + 0.5, x), steps=1, progress=False)
    labelled = ConditionalVAE((6,), n_classes=3, latent_dim=2, hidden=(8,))
    with pytest.raises(errors.DataError, match=r"label 5 at index 2.*n_classes=6"):
        lvm_pyro.fit(labelled, (y, torch.tensor([0, 1, 5, 0, 1, 2, 0, 1, 2, 0])), steps=1, progress=False)
    with pytest.raises(errors.DataError, match="one class label per example"):
        labelled.sample(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(errors.ConfigurationError, match="exactly one of condition_shape"):
        ConditionalVAE((6,), (4,), n_classes=3)
    with pytest.raises(errors.ConfigurationError, match="exactly one of condition_shape"):
        ConditionalBaseline((6,))
    with pytest.raises(errors.ConfigurationError, match="latent_dim must be a positive integer"):
        ConditionalVAE((6,), (4,), latent_dim=0)
