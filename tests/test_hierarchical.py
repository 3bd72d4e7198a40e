"""Hierarchical VAE: both guides with every valid estimator in float64, KL warm-up, methods, bad input."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.infer.objectives import TrainingScale
from lvm_pyro.models.hierarchical import HierarchicalVAE
from lvm_pyro.models.registry import get_model


def _tiny(guide: str, dims=(3, 2), **kw) -> HierarchicalVAE:
    return HierarchicalVAE((12,), latent_dims=dims, hidden=(8,), layer_hidden=(4,), guide=guide, **kw)


def _binary(n: int = 32, d: int = 12, dtype=torch.float64) -> torch.Tensor:
    return torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.mark.parametrize(
    "guide, estimator",
    [("ladder", e) for e in ("reparam", "meanfield", "score", "iwae")]
    + [("markov", e) for e in ("reparam", "score", "iwae")],
)
def test_float64_training_with_every_valid_estimator(guide, estimator):
    model = _tiny(guide, dims=(3, 2, 2))
    result = lvm_pyro.fit(model, _binary(), estimator=estimator, steps=3, batch_size=16,
                          progress=False, seed=0)
    assert all(math.isfinite(v) for v in result.losses)
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.parametrize("guide", ["ladder", "markov"])
def test_kl_warmup_scales_every_layer(guide):
    """With beta = 0 the loss is -log p(x | z_1) alone; with beta = 1 every layer's terms return."""
    model = _tiny(guide, dims=(3, 2, 2))
    x = _binary(8, dtype=torch.float32)

    def loss(beta):
        pyro.set_rng_seed(1)
        scale = TrainingScale(num_data=len(x), beta=beta)
        return Trace_ELBO().loss(scale(model.model), scale(model.guide), x)

    pyro.set_rng_seed(1)
    with torch.no_grad():
        guide_trace = poutine.trace(model.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
    assert [n for n in guide_trace.stochastic_nodes if n.startswith("z")] == (
        ["z3", "z2", "z1"] if guide == "ladder" else ["z1", "z2", "z3"]
    )
    recon = float(model_trace.nodes["x"]["log_prob_sum"])
    latent = sum(
        float(model_trace.nodes[name]["log_prob_sum"] - guide_trace.nodes[name]["log_prob_sum"])
        for name in ("z1", "z2", "z3")
    )
    assert loss(0.0) == pytest.approx(-recon, rel=1e-5)
    assert loss(0.5) == pytest.approx(-recon - 0.5 * latent, rel=1e-5)
    assert loss(1.0) == pytest.approx(-(recon + latent), rel=1e-5)
    result = lvm_pyro.fit(model, x, epochs=4, batch_size=4, kl_warmup=2, progress=False, seed=0)
    assert result.config["kl_warmup"] == 2


def test_ladder_guide_shares_the_generative_path():
    """q(z_i | z_{i+1}, x) is the precision-weighted product with p(z_i | z_{i+1})."""
    model = _tiny("ladder")
    x = _binary(6, dtype=torch.float32)
    guide_trace = poutine.trace(model.guide).get_trace(x)
    q1 = guide_trace.nodes["z1"]["fn"].base_dist
    loc_p, scale_p = model.priors[0](guide_trace.nodes["z2"]["value"])
    loc_hat, scale_hat = model.heads[0](model.paths[0](x))
    w_hat, w_p = scale_hat.pow(-2), scale_p.pow(-2)
    torch.testing.assert_close(q1.scale, (w_hat + w_p).rsqrt())
    torch.testing.assert_close(q1.loc, (loc_hat * w_hat + loc_p * w_p) / (w_hat + w_p))
    assert bool((q1.scale <= torch.minimum(scale_p, scale_hat)).all())
    q1.loc.sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.priors.parameters())


@pytest.mark.parametrize("guide", ["ladder", "markov"])
def test_user_methods(guide):
    model = HierarchicalVAE((4, 4), latent_dims=(3, 2), hidden=(8,), layer_hidden=(4,), guide=guide)
    x = torch.randint(0, 2, (5, 4, 4)).float()
    assert model.encode(x).batch_shape == (5,) and model.encode(x).event_shape == (3,)
    assert model.encode(x, layer=2).event_shape == (2,)
    assert model.decode(model.encode(x).mean).event_shape == (4, 4)
    recon = model.reconstruct(x)
    assert recon.shape == (5, 4, 4) and bool(((recon > 0) & (recon < 1)).all())
    draws = model.sample(7)
    assert draws.shape == (7, 4, 4) and set(draws.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(errors.ConfigurationError, match=r"layer number in 1..2"):
        model.encode(x, layer=3)
    with pytest.raises(errors.DataError, match=r"pass z1 of shape \(N, 3\)"):
        model.decode(torch.zeros(5, 2))


def test_registered_for_the_command_line():
    from lvm_pyro.data import load_digits

    model = get_model("hvae").build(load_digits(binarize=8), guide="ladder")
    assert isinstance(model, HierarchicalVAE) and model.site_names == ["z1", "z2"]
    assert model.guide_type == "ladder" and HierarchicalVAE().guide_type == "markov"


def test_bad_input_is_refused_with_a_fix():
    with pytest.raises(errors.ConfigurationError, match="at least two layer sizes.*use VAE"):
        HierarchicalVAE((64,), latent_dims=(16,))
    with pytest.raises(errors.ConfigurationError, match="each of latent_dims must be a positive integer"):
        HierarchicalVAE((64,), latent_dims=(16, 0))
    with pytest.raises(errors.ConfigurationError, match="unknown guide 'topdown'; valid: markov, ladder"):
        HierarchicalVAE((64,), guide="topdown")
    model = _tiny("ladder")
    with pytest.raises(errors.DataError, match="likelihood='gaussian'"):
        lvm_pyro.fit(model, torch.rand(10, 12) + 0.1, steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"examples of shape \(11,\) but the model expects \(12,\)"):
        lvm_pyro.fit(model, torch.zeros(10, 11), steps=1, progress=False)
