"""fit(distributed=True) and em(distributed=True) under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch

import lvm_pyro
from lvm_pyro import errors

SCRIPT = textwrap.dedent(
    """
    import sys, torch, pyro, pyro.distributions as dist
    sys.path.insert(0, {tests!r})
    import lvm_pyro
    from lvm_pyro.models.gmm import GaussianMixtureModel
    from models_for_tests import (BernoulliMixture, LocalGaussian, RegressionMixture,
                                  RegressionMixtureWithMStep, regression_mixture_data)

    torch.manual_seed(0)
    x = torch.cat([torch.randn(150, 2) - 2, torch.randn(150, 2) + 2])

    @pyro.infer.config_enumerate
    def mixture(x):
        locs = pyro.param("locs", torch.tensor([[-0.5, 0.0], [0.5, 0.0]]))
        w = pyro.param("w", torch.ones(2) / 2, constraint=dist.constraints.simplex)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w))
            pyro.sample("x", dist.Normal(locs[z], 1.0).to_event(1), obs=x)

    distributed = sys.argv[2] == "1"
    result = lvm_pyro.fit((mixture, lambda x: None), x, objective="enum", steps=25, batch_size=60,
                          lr=0.05, seed=1, progress=False, distributed=distributed)
    locs, w = pyro.param("locs").detach(), pyro.param("w").detach()
    vae = lvm_pyro.fit(LocalGaussian(2, learn_w=True), x, epochs=4, batch_size=50, lr=0.05, seed=1,
                       progress=False, distributed=distributed, checkpoint=sys.argv[1] + ".run")

    # em: 301 rows, so the two shards differ in size
    g = torch.Generator().manual_seed(0)
    xg = torch.cat([torch.randn(150, 3, generator=g) - 2, torch.randn(151, 3, generator=g) + 2]).double()
    ems = {{}}
    for name, kwargs in (("closed_form", {{}}), ("enum", {{"e_step": "enum"}})):
        gmm = GaussianMixtureModel(3, 3, "full")
        r = lvm_pyro.em(gmm, xg, max_iter=15, tol=0.0, seed=2, device="cpu", distributed=distributed,
                        n_init=2, **kwargs)
        ems[name] = dict(ll=r.log_likelihood, loc=gmm.loc.detach(), cov=gmm.covariances().detach(),
                         world=r.config["world_size"], e_step=r.e_step, m_step=r.m_step)
    y, u = regression_mixture_data(n=201)
    for cls in (RegressionMixture, RegressionMixtureWithMStep):
        reg = cls(2, seed=3)
        r = lvm_pyro.em(reg, (y, u), max_iter=8, tol=0.0, device="cpu", distributed=distributed,
                        m_step_steps=5)
        ems[cls.__name__] = dict(ll=r.log_likelihood, a=reg.a.detach(), b=reg.b.detach(),
                                 m_step=r.m_step)
    xb = torch.bernoulli(torch.full((101, 6), 0.3), generator=g)
    bern = BernoulliMixture(2, 6)
    r = lvm_pyro.em(bern, xb, max_iter=4, tol=0.0, device="cpu", distributed=distributed,
                    n_init=2, init="random", seed=5, m_step_steps=3)
    ems["bernoulli"] = dict(ll=r.log_likelihood, probs=bern.probs.detach(), m_step=r.m_step)

    if not distributed or torch.distributed.get_rank() == 0:
        torch.save({{"locs": locs, "w": w,
                    "losses": result.losses, "vae_losses": vae.losses,
                    "world": vae.config["world_size"], "em": ems}}, sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, dict]:
    """The same script once in one process and once in two (one pair of runs for every test)."""
    tmp_path = tmp_path_factory.mktemp("distributed")
    return _run(tmp_path, False), _run(tmp_path, True)


def _run(tmp_path: Path, distributed: bool) -> dict:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / ("multi.pt" if distributed else "single.pt")
    cmd = [sys.executable, str(script), str(out), "1" if distributed else "0"]
    if distributed:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(out)
    result["vae_checkpoint"] = (Path(str(out) + ".run") / "checkpoint.pt").exists()
    return result


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    single, multi = runs
    assert multi["world"] == 2 and single["world"] == 1
    # the enumerated mixture has no sampling: the sharded, all-reduced step is the same step
    torch.testing.assert_close(multi["locs"], single["locs"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multi["w"], single["w"], rtol=1e-5, atol=1e-6)
    assert multi["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # the VAE draws its noise per process: same objective, its own noise; both learn
    for run in (single, multi):
        assert run["vae_losses"][-1] < run["vae_losses"][0]
    assert multi["vae_checkpoint"]


def test_distributed_em_equals_single_process_em(runs):
    single, multi = (run["em"] for run in runs)
    for route in ("closed_form", "enum"):  # statistics all-reduced; posteriors gathered
        assert (multi[route]["world"], single[route]["world"]) == (2, 1)
        assert multi[route]["e_step"] == route
        np.testing.assert_allclose(multi[route]["ll"], single[route]["ll"], rtol=1e-12)
        torch.testing.assert_close(multi[route]["loc"], single[route]["loc"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(multi[route]["cov"], single[route]["cov"], rtol=1e-10, atol=1e-10)
    # conditions (y, u) sharded with the rows; the model's own M-step and the gradient one
    assert multi["RegressionMixtureWithMStep"]["m_step"] == "model"
    assert multi["RegressionMixture"]["m_step"] == "gradient"
    for name in ("RegressionMixture", "RegressionMixtureWithMStep"):
        np.testing.assert_allclose(multi[name]["ll"], single[name]["ll"], rtol=1e-9)
        torch.testing.assert_close(multi[name]["b"], single[name]["b"], rtol=1e-7, atol=1e-7)
    # random starts drawn alike in every process; gradients of Q summed over processes
    np.testing.assert_allclose(multi["bernoulli"]["ll"], single["bernoulli"]["ll"], rtol=1e-5)
    torch.testing.assert_close(multi["bernoulli"]["probs"], single["bernoulli"]["probs"], rtol=1e-4,
                               atol=1e-5)


def test_distributed_without_a_process_group_names_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(errors.ConfigurationError, match="torchrun --nproc_per_node"):
        lvm_pyro.fit((lambda x: None, lambda x: None), torch.randn(8, 2), steps=1, progress=False,
                     distributed=True)
    pyro.clear_param_store()
