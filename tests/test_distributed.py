"""fit(distributed=True) under torchrun with 2 CPU processes (gloo)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
    from models_for_tests import LocalGaussian

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
    result = lvm_pyro.fit((mixture, lambda x: None), x, estimator="enum", steps=25, batch_size=60,
                          lr=0.05, seed=1, progress=False, distributed=distributed)
    locs, w = pyro.param("locs").detach(), pyro.param("w").detach()
    vae = lvm_pyro.fit(LocalGaussian(2, learn_w=True), x, epochs=4, batch_size=50, lr=0.05, seed=1,
                       progress=False, distributed=distributed, checkpoint_dir=sys.argv[1] + ".run")
    if not distributed or torch.distributed.get_rank() == 0:
        torch.save({{"locs": locs, "w": w,
                    "losses": result.losses, "vae_losses": vae.losses,
                    "world": vae.config["world_size"]}}, sys.argv[1])
    """
)


def _run(tmp_path: Path, distributed: bool) -> dict:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    out = tmp_path / ("multi.pt" if distributed else "single.pt")
    cmd = [sys.executable, str(script), str(out), "1" if distributed else "0"]
    if distributed:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return torch.load(out)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    single, multi = _run(tmp_path, False), _run(tmp_path, True)
    assert multi["world"] == 2 and single["world"] == 1
    # the enumerated mixture has no sampling: the sharded, all-reduced step is the same step
    torch.testing.assert_close(multi["locs"], single["locs"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multi["w"], single["w"], rtol=1e-5, atol=1e-6)
    assert multi["losses"] == pytest.approx(single["losses"], rel=1e-5)
    # the VAE draws its noise per process: same objective, its own noise; both learn
    for run in (single, multi):
        assert run["vae_losses"][-1] < run["vae_losses"][0]
    assert (tmp_path / "multi.pt.run" / "checkpoint.pt").exists()


def test_distributed_without_a_process_group_names_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(errors.ConfigurationError, match="torchrun --nproc_per_node"):
        lvm_pyro.fit((lambda x: None, lambda x: None), torch.randn(8, 2), steps=1, progress=False,
                     distributed=True)
    pyro.clear_param_store()
