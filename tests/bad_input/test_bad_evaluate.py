"""Bad inputs to evaluation: ``elbo``, ``log_likelihood``, ``amortization_gap`` and the models'
posterior / MAP / generation / reconstruction helpers (encode, decode, map_z, sample,
reconstruct, predict, exact_log_likelihood, component_probs)."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from harness import Case, run_case

from lvm_pyro import (
    VAE,
    ConditionalVAE,
    HierarchicalVAE,
    MixturePriorVAE,
    SigmoidBeliefNet,
    amortization_gap,
    elbo,
    errors,
    log_likelihood,
)

D = 8
torch.manual_seed(0)
VAE_ = VAE((D,), latent_dim=2, hidden=(4,))
CAT_VAE = VAE((D,), latent_dim=2, hidden=(4,), likelihood="categorical", n_levels=3)
HVAE = HierarchicalVAE((D,), latent_dims=(3, 2), hidden=(4,), layer_hidden=(4,))
SBN = SigmoidBeliefNet((D,), latent_dim=2, encoder_hidden=(4,))
BIG_SBN = SigmoidBeliefNet((D,), latent_dim=20, encoder_hidden=(4,))
CVAE = ConditionalVAE((D,), condition_shape=(3,), latent_dim=2, hidden=(4,), prior_hidden=(4,))
LABEL_CVAE = ConditionalVAE((D,), n_classes=3, latent_dim=2, hidden=(4,), prior_hidden=(4,))
MIXVAE = MixturePriorVAE((D,), latent_dim=2, n_components=3, hidden=(4,))

X = torch.randint(0, 2, (6, D)).float()
COND = torch.randn(6, 3)


def with_nan() -> torch.Tensor:
    x = X.clone()
    x[2, 3] = float("nan")
    return x


def with_inf() -> torch.Tensor:
    x = X.clone()
    x[1, 0] = float("inf")
    return x


def model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x)), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))


def guide_without_z(x):
    with pyro.plate("data", len(x)):
        pyro.sample("w", dist.Normal(x / 2, 0.5**0.5))


def empty_guide(x):
    pass


def global_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def global_guide(x):
    pyro.sample("mu", dist.Normal(x.mean(), 0.5))


XR = torch.randn(5)


CASES = [
    # --- elbo: data -----------------------------------------------------------------------
    Case("elbo-nan", lambda: elbo(VAE_, with_nan()), errors.DataError, r"nan"),
    Case("elbo-inf", lambda: elbo(VAE_, with_inf()), errors.DataError, r"inf"),
    Case("elbo-wrong-features", lambda: elbo(VAE_, X[:, :5]), errors.DataError, r"shape|feature"),
    Case("elbo-1d", lambda: elbo(VAE_, X[0]), errors.DataError, r"shape|reshape|D"),
    Case("elbo-3d", lambda: elbo(VAE_, X[None]), errors.DataError, r"shape|D"),
    Case("elbo-empty", lambda: elbo(VAE_, X[:0]), errors.DataError, r"empty|no rows|at least"),
    Case("elbo-nonbinary-bernoulli", lambda: elbo(VAE_, X * 0.5), errors.DataError, r"binary|0 or 1"),
    Case(
        "elbo-strings",
        lambda: elbo(VAE_, np.array([["a"] * D] * 3)),
        errors.DataTypeError,
        r"numeric|number|str",
    ),
    Case("elbo-complex", lambda: elbo(VAE_, X.to(torch.complex64)), errors.DataTypeError, r"complex"),
    Case(
        "elbo-object",
        lambda: elbo(VAE_, np.array([[0, None] * (D // 2)] * 3, dtype=object)),
        errors.DataTypeError,
        r"numeric|number|object",
    ),
    Case("elbo-negative-counts", lambda: elbo(CAT_VAE, -X), errors.DataError, r"non-negative|count|support"),
    Case("elbo-level-too-high", lambda: elbo(CAT_VAE, X * 5), errors.DataError, r"level|n_levels"),
    # --- elbo: arguments --------------------------------------------------------------------
    Case(
        "elbo-num-particles-0",
        lambda: elbo(VAE_, X, num_particles=0),
        errors.ConfigurationError,
        r"num_particles",
    ),
    Case(
        "elbo-num-particles-float",
        lambda: elbo(VAE_, X, num_particles=2.5),
        errors.ConfigurationError,
        r"num_particles",
    ),
    Case(
        "elbo-num-particles-bool",
        lambda: elbo(VAE_, X, num_particles=True),
        errors.ConfigurationError,
        r"num_particles",
    ),
    Case(
        "elbo-unknown-estimator",
        lambda: elbo(VAE_, X, estimator="bogus"),
        errors.ConfigurationError,
        r"estimator|bogus",
    ),
    Case("elbo-batch-size-0", lambda: elbo(VAE_, X, batch_size=0), errors.ConfigurationError, r"batch_size"),
    Case(
        "elbo-batch-size-negative",
        lambda: elbo(VAE_, X, batch_size=-3),
        errors.ConfigurationError,
        r"batch_size",
    ),
    Case("elbo-seed-string", lambda: elbo(VAE_, X, seed="zero"), errors.ConfigurationError, r"seed"),
    Case("elbo-seed-negative", lambda: elbo(VAE_, X, seed=-1), errors.ConfigurationError, r"seed"),
    Case("elbo-unknown-device", lambda: elbo(VAE_, X, device="gpu7"), errors.ConfigurationError, r"device"),
    # --- elbo: model / guide ----------------------------------------------------------------
    Case("elbo-model-string", lambda: elbo("vae", X), errors.ConfigurationError, r"model"),
    Case(
        "elbo-pair-and-guide",
        lambda: elbo((model, guide), XR, guide=guide),
        errors.ConfigurationError,
        r"guide",
    ),
    Case(
        "ll-pair-of-three",
        lambda: log_likelihood((model, guide, guide), XR, num_samples=4),
        errors.ConfigurationError,
        r"pair|guide",
    ),
    Case("elbo-model-without-guide", lambda: elbo(model, XR), errors.ConfigurationError, r"guide"),
    Case(
        "elbo-guide-not-callable", lambda: elbo(model, XR, guide="guide"), errors.ConfigurationError, r"guide"
    ),
    Case(
        "elbo-guide-missing-site",
        lambda: elbo(model, XR, guide=empty_guide),
        errors.ModelContractError,
        r"'z'|z",
    ),
    Case(
        "elbo-guide-wrong-site-name",
        lambda: elbo(model, XR, guide=guide_without_z),
        errors.ModelContractError,
        r"'w'|'z'",
    ),
    # --- log_likelihood -----------------------------------------------------------------------
    Case(
        "ll-num-samples-0",
        lambda: log_likelihood(VAE_, X, num_samples=0),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "ll-num-samples-negative",
        lambda: log_likelihood(VAE_, X, num_samples=-5),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "ll-num-samples-float",
        lambda: log_likelihood(VAE_, X, num_samples=10.5),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "ll-num-samples-bool",
        lambda: log_likelihood(VAE_, X, num_samples=True),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "ll-num-samples-nan",
        lambda: log_likelihood(VAE_, X, num_samples=float("nan")),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "ll-max-elements-0",
        lambda: log_likelihood(VAE_, X, max_elements=0),
        errors.ConfigurationError,
        r"max_elements",
    ),
    Case(
        "ll-chunk-size-0",
        lambda: log_likelihood(VAE_, X, chunk_size=0),
        errors.ConfigurationError,
        r"chunk_size",
    ),
    Case(
        "ll-batch-size-float",
        lambda: log_likelihood(VAE_, X, batch_size=1.5),
        errors.ConfigurationError,
        r"batch_size",
    ),
    Case("ll-nan", lambda: log_likelihood(VAE_, with_nan(), num_samples=4), errors.DataError, r"nan"),
    Case(
        "ll-wrong-features",
        lambda: log_likelihood(VAE_, X[:, :3], num_samples=4),
        errors.DataError,
        r"shape|feature",
    ),
    Case(
        "ll-empty",
        lambda: log_likelihood(VAE_, X[:0], num_samples=4),
        errors.DataError,
        r"empty|rows|at least",
    ),
    Case(
        "ll-nonbinary",
        lambda: log_likelihood(VAE_, X + 0.3, num_samples=4),
        errors.DataError,
        r"binary|0 or 1",
    ),
    Case(
        "ll-strings",
        lambda: log_likelihood(VAE_, [["x"] * D] * 2, num_samples=4),
        errors.DataTypeError,
        r"numeric|number|str",
    ),
    Case(
        "ll-guide-missing-site",
        lambda: log_likelihood(model, XR, guide=empty_guide, num_samples=4),
        errors.ModelContractError,
        r"'z'|z",
    ),
    Case(
        "ll-guide-wrong-site-name",
        lambda: log_likelihood(model, XR, guide=guide_without_z, num_samples=4),
        errors.ModelContractError,
        r"'w'|'z'",
    ),
    Case(
        "ll-global-latent-not-point",
        lambda: log_likelihood(global_model, XR, guide=global_guide, num_samples=4),
        errors.ModelContractError,
        r"plate|global",
    ),
    Case(
        "ll-unknown-data-plate",
        lambda: log_likelihood(model, XR, guide=guide, num_samples=4, data_plate="sequences"),
        errors.ModelContractError,
        r"sequences",
    ),
    Case(
        "ll-data-plate-not-string",
        lambda: log_likelihood(model, XR, guide=guide, num_samples=4, data_plate=3),
        errors.ConfigurationError,
        r"data_plate",
    ),
    Case(
        "ll-seed-string",
        lambda: log_likelihood(VAE_, X, num_samples=4, seed="a"),
        errors.ConfigurationError,
        r"seed",
    ),
    Case(
        "ll-conditional-rows-differ",
        lambda: log_likelihood(CVAE, (X, COND[:4]), num_samples=4),
        errors.DataError,
        r"rows|6|4",
    ),
    Case(
        "ll-conditional-wrong-condition-shape",
        lambda: log_likelihood(CVAE, (X, torch.randn(6, 5)), num_samples=4),
        errors.DataError,
        r"condition|shape|\(3,\)",
    ),
    # --- amortization_gap ---------------------------------------------------------------------
    Case("gap-steps-0", lambda: amortization_gap(VAE_, X, steps=0), errors.ConfigurationError, r"steps"),
    Case(
        "gap-steps-bool", lambda: amortization_gap(VAE_, X, steps=True), errors.ConfigurationError, r"steps"
    ),
    Case(
        "gap-lr-negative",
        lambda: amortization_gap(VAE_, X, steps=2, lr=-0.1),
        errors.ConfigurationError,
        r"lr",
    ),
    Case(
        "gap-num-particles-0",
        lambda: amortization_gap(VAE_, X, steps=2, num_particles=0),
        errors.ConfigurationError,
        r"num_particles",
    ),
    Case("gap-not-a-vae", lambda: amortization_gap("vae", X, steps=2), errors.ConfigurationError, r"VAE"),
    Case("gap-nan", lambda: amortization_gap(VAE_, with_nan(), steps=2), errors.DataError, r"nan"),
    Case(
        "gap-nonbinary", lambda: amortization_gap(VAE_, X * 0.5, steps=2), errors.DataError, r"binary|0 or 1"
    ),
    # --- posterior / MAP / generation / reconstruction helpers --------------------------------
    Case("vae-encode-nan", lambda: VAE_.encode(with_nan()), errors.DataError, r"nan"),
    Case("vae-encode-wrong-features", lambda: VAE_.encode(X[:, :4]), errors.DataError, r"shape|feature"),
    Case("vae-reconstruct-nonbinary", lambda: VAE_.reconstruct(X * 3), errors.DataError, r"binary|0 or 1"),
    Case("vae-decode-wrong-latent", lambda: VAE_.decode(torch.zeros(3, 5)), errors.DataError, r"latent"),
    Case("vae-decode-nan", lambda: VAE_.decode(torch.full((3, 2), float("nan"))), errors.DataError, r"nan"),
    Case(
        "vae-decode-strings", lambda: VAE_.decode([["a", "b"]]), errors.DataTypeError, r"numeric|number|str"
    ),
    Case("vae-sample-0", lambda: VAE_.sample(0), errors.ConfigurationError, r"\bn\b"),
    Case("vae-sample-float", lambda: VAE_.sample(2.5), errors.ConfigurationError, r"\bn\b"),
    Case("vae-sample-bool", lambda: VAE_.sample(True), errors.ConfigurationError, r"\bn\b"),
    Case("vae-map-z-steps-0", lambda: VAE_.map_z(X, steps=0), errors.ConfigurationError, r"steps"),
    Case("vae-map-z-lr-negative", lambda: VAE_.map_z(X, steps=2, lr=-1.0), errors.ConfigurationError, r"lr"),
    Case(
        "vae-map-z-lr-nan", lambda: VAE_.map_z(X, steps=2, lr=float("nan")), errors.ConfigurationError, r"lr"
    ),
    Case("vae-map-z-nan", lambda: VAE_.map_z(with_nan(), steps=2), errors.DataError, r"nan"),
    Case("hvae-encode-layer-3", lambda: HVAE.encode(X, layer=3), errors.ConfigurationError, r"layer"),
    Case("hvae-encode-layer-0", lambda: HVAE.encode(X, layer=0), errors.ConfigurationError, r"layer"),
    Case("hvae-encode-layer-bool", lambda: HVAE.encode(X, layer=True), errors.ConfigurationError, r"layer"),
    Case("hvae-decode-wrong-latent", lambda: HVAE.decode(torch.zeros(2, 2)), errors.DataError, r"z1"),
    Case(
        "hvae-reconstruct-wrong-features",
        lambda: HVAE.reconstruct(X[:, :2]),
        errors.DataError,
        r"shape|feature",
    ),
    Case("hvae-sample-negative", lambda: HVAE.sample(-2), errors.ConfigurationError, r"\bn\b"),
    Case("sbn-decode-wrong-latent", lambda: SBN.decode(torch.zeros(3, 7)), errors.DataError, r"latent|shape"),
    Case(
        "sbn-decode-nonbinary-code",
        lambda: SBN.decode(torch.full((3, 2), 0.5)),
        errors.DataError,
        r"binary|0 or 1",
    ),
    Case(
        "sbn-exact-ll-too-many-codes",
        lambda: BIG_SBN.exact_log_likelihood(X),
        errors.ConfigurationError,
        r"latent_dim|2\^",
    ),
    Case(
        "sbn-exact-ll-nonbinary", lambda: SBN.exact_log_likelihood(X * 2), errors.DataError, r"binary|0 or 1"
    ),
    Case("sbn-sample-0", lambda: SBN.sample(0), errors.ConfigurationError, r"\bn\b"),
    Case(
        "cvae-predict-num-samples-0",
        lambda: CVAE.predict(COND, num_samples=0),
        errors.ConfigurationError,
        r"num_samples",
    ),
    Case(
        "cvae-sample-wrong-condition",
        lambda: CVAE.sample(torch.randn(4, 7)),
        errors.DataError,
        r"condition|shape|\(3,\)",
    ),
    Case("cvae-encode-rows-differ", lambda: CVAE.encode(X, COND[:2]), errors.DataError, r"rows|6|2"),
    Case(
        "cvae-predict-nan-condition",
        lambda: CVAE.predict(torch.full((2, 3), float("nan"))),
        errors.DataError,
        r"nan",
    ),
    Case(
        "label-cvae-unknown-class",
        lambda: LABEL_CVAE.predict(torch.tensor([0, 5])),
        errors.DataError,
        r"label 5|classes 0\.\.2",
    ),
    Case(
        "label-cvae-float-label",
        lambda: LABEL_CVAE.sample(torch.tensor([0.5, 1.0])),
        errors.DataError,
        r"label|classes",
    ),
    Case(
        "label-cvae-2d-labels",
        lambda: LABEL_CVAE.sample(torch.zeros(2, 3, dtype=torch.long)),
        errors.DataError,
        r"label",
    ),
    Case(
        "vae-encode-numpy-strings",
        lambda: VAE_.encode(np.array([["1"] * D])),
        errors.DataTypeError,
        r"numeric|number|str",
    ),
    Case("mixvae-component-probs-nan", lambda: MIXVAE.component_probs(with_nan()), errors.DataError, r"nan"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_evaluate(case: Case) -> None:
    run_case(case)
