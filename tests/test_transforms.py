"""The positive-definite bijection: the right Jacobian, usable by autoguides, and registered
only where asked for (never on import)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_mean
from torch.autograd.functional import jacobian
from torch.distributions import biject_to, constraints

import lvm_pyro
from lvm_pyro.models.transforms import (
    BijectiveWishart,
    CholeskyVectorToPositiveDefinite,
    bijective_positive_definite,
    positive_definite_bijection,
)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_round_trip_and_jacobian_match_autograd(d):
    t = biject_to(bijective_positive_definite())
    assert isinstance(t, CholeskyVectorToPositiveDefinite)
    g = torch.Generator().manual_seed(d)
    v = torch.randn(d * (d + 1) // 2, generator=g, dtype=torch.float64)
    m = t(v)
    assert m.shape == (d, d) and bool((torch.linalg.eigvalsh(m) > 0).all())
    torch.testing.assert_close(m, m.mT)
    torch.testing.assert_close(t.inv(m), v)
    rows, cols = torch.tril_indices(d, d)
    J = jacobian(lambda u: t(u)[rows, cols], v)  # density w.r.t. the free (lower) entries
    assert float(t.log_abs_det_jacobian(v, m)) == pytest.approx(float(torch.linalg.slogdet(J)[1]), abs=1e-10)
    assert t.forward_shape(v.shape) == m.shape and t.inverse_shape(m.shape) == v.shape


def test_batched_matrices_round_trip():
    t = CholeskyVectorToPositiveDefinite()
    v = torch.randn(5, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(t.inv(t(v)), v)
    assert t.log_abs_det_jacobian(v, t(v)).shape == (5, 3)


@pytest.mark.parametrize("route", ["BijectiveWishart", "context"])
def test_autonormal_over_a_wishart_precision_finds_the_conjugate_posterior(route):
    torch.manual_seed(0)
    cov = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    x = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), cov).sample((400,))
    df0, v0 = 4.0, torch.eye(2, dtype=torch.float64)

    def model(x):
        wishart = BijectiveWishart if route == "BijectiveWishart" else dist.Wishart
        precision = pyro.sample("precision", wishart(x.new_tensor(df0), covariance_matrix=v0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.MultivariateNormal(x.new_zeros(2), precision_matrix=precision), obs=x)

    with positive_definite_bijection() if route == "context" else contextlib.nullcontext():
        guide = AutoNormal(model, init_loc_fn=init_to_mean)
        lvm_pyro.fit((model, guide), x, steps=1500, lr=0.02, batch_size=len(x), progress=False, seed=0)
        draws = torch.stack([guide(x)["precision"].detach() for _ in range(400)])
    # conjugacy: precision | x ~ Wishart(df0 + N, (V0^-1 + sum x x^T)^-1), mean df_n V_n
    v_n = torch.linalg.inv(torch.linalg.inv(v0) + x.T @ x)
    exact_mean = (df0 + len(x)) * v_n
    torch.testing.assert_close(draws.mean(0), exact_mean, rtol=0.05, atol=0.02)


def test_import_registers_nothing_and_the_context_restores_the_registry():
    """``import lvm_pyro`` (in a fresh interpreter) leaves torch's biject_to registry as
    torch and Pyro made it; the context manager registers for its block only."""
    code = (
        "import pyro, torch\n"
        "from torch.distributions import biject_to\n"
        "before = dict(biject_to._registry)\n"
        "import lvm_pyro, lvm_pyro.models.gmm, lvm_pyro.estimators\n"
        "assert dict(biject_to._registry) == before, set(biject_to._registry) ^ set(before)\n"
        "print('unchanged')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "unchanged", out.stderr
    key = type(constraints.positive_definite)
    had = key in biject_to._registry
    with positive_definite_bijection():
        assert isinstance(biject_to(constraints.positive_definite), CholeskyVectorToPositiveDefinite)
    assert (key in biject_to._registry) == had
    if not had:
        with pytest.raises(NotImplementedError):
            biject_to(constraints.positive_definite)
