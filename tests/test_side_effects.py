"""A default fit, em and GaussianMixture.fit leave the process as they found it: Pyro's param
store, the user's modules, torch's thread settings, glibc's malloc; nothing is registered
globally on import; the opt-in allocator tuning restores what it changed."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import lvm_pyro
from lvm_pyro import allocator
from lvm_pyro.errors import ConfigurationError
from lvm_pyro.models.gmm import GaussianMixtureModel

PACKAGE = Path(lvm_pyro.__file__).parent


def normal_model(x):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


class _Process:
    """What a call may change in the process, taken before and compared after."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.store = dict(pyro.get_param_store().named_parameters())
        self.modules = [(m, self._names(m), self._tensors(m)) for m in modules]
        self.threads = (torch.get_num_threads(), torch.get_num_interop_threads())

    @staticmethod
    def _names(module: torch.nn.Module) -> list[tuple[str, str]]:
        return [(name, sub.__dict__.get("_pyro_name", "")) for name, sub in module.named_modules()]

    @staticmethod
    def _tensors(module: torch.nn.Module) -> list[tuple[str, int]]:
        return [(name, id(p)) for name, p in module.named_parameters()]

    def assert_unchanged(self) -> None:
        store = dict(pyro.get_param_store().named_parameters())
        assert sorted(store) == sorted(self.store)
        assert all(store[k] is v for k, v in self.store.items())
        for module, names, tensors in self.modules:
            assert self._names(module) == names
            assert self._tensors(module) == tensors
        assert (torch.get_num_threads(), torch.get_num_interop_threads()) == self.threads


@pytest.fixture
def two_threads():
    """torch on two intra-op threads (the tests' conftest sets one), put back afterwards."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Every symbol looked up by name through ctypes, and every call of the allocator's mallopt."""
    looked_up: list[str] = []
    original = ctypes.CDLL.__getitem__

    def spy(self, name):
        looked_up.append(name)
        return original(self, name)

    monkeypatch.setattr(ctypes.CDLL, "__getitem__", spy)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda p, v: calls.append((p, v)) or 1)
    yield looked_up, calls


def _mixture_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(300, 2, generator=g) - 4, torch.randn(300, 2, generator=g) + 4])


def test_a_default_fit_leaves_the_process_as_it_found_it(two_threads, mallopt_calls):
    x = torch.randn(200, generator=torch.Generator().manual_seed(1)) + 3
    pyro.param("users_own", torch.tensor(1.5))  # an entry of the user's, kept as it is
    trained = AutoNormal(normal_model)
    lvm_pyro.fit((normal_model, trained), x, steps=3, progress=False, seed=0)  # set up, trained
    guide = AutoNormal(normal_model)
    with torch.no_grad():
        guide(x)  # the user's own guide, set up in plain Pyro: its tensors in the store
    process = _Process(guide, trained)
    lvm_pyro.fit((normal_model, guide), x, steps=20, progress=False, seed=0)
    lvm_pyro.fit((normal_model, trained), x, steps=20, progress=False, seed=0)
    process.assert_unchanged()
    assert guide._pyro_name == trained._pyro_name == "AutoNormal"
    looked_up, calls = mallopt_calls
    assert "mallopt" not in looked_up and calls == []


def test_a_default_em_leaves_the_process_as_it_found_it(two_threads, mallopt_calls):
    x = _mixture_data()
    first, second = GaussianMixtureModel(2, 2, "full"), GaussianMixtureModel(2, 2, "full")
    pyro.param("loc", torch.zeros(3))  # the user's own "loc": the top-level mixture's name too
    process = _Process(first, second)
    lvm_pyro.em(first, x, seed=0, device="cpu")
    lvm_pyro.em(second, x * 2, seed=0, device="cpu")
    process.assert_unchanged()
    assert not torch.allclose(first.loc.detach(), second.loc.detach())
    looked_up, calls = mallopt_calls
    assert "mallopt" not in looked_up and calls == []


def test_the_sklearn_facade_leaves_the_process_as_it_found_it(two_threads, mallopt_calls):
    x = _mixture_data().numpy()
    pyro.param("users_own", torch.tensor(1.5))
    process = _Process()
    gm = lvm_pyro.GaussianMixture(2, random_state=0).fit(x)
    process.assert_unchanged()
    assert np.sort(np.round(gm.means_[:, 0])).tolist() == [-4.0, 4.0]
    looked_up, calls = mallopt_calls
    assert "mallopt" not in looked_up and calls == []


def test_evaluation_and_diagnostics_leave_the_param_store_as_they_found_it(two_threads):
    x = torch.randint(0, 2, (40, 6), generator=torch.Generator().manual_seed(0)).float()
    vae = lvm_pyro.VAE((6,), latent_dim=2, hidden=(8,))
    lvm_pyro.fit(vae, x, epochs=1, kl_warmup=0, progress=False, seed=0)
    xs = _mixture_data()[::10].double()
    gmm = GaussianMixtureModel(2, 2, "diag", prior=lvm_pyro.GMMPrior(1.0, 0.0, 10.0, 3.0)).double()
    pyro.param("users_own", torch.tensor(1.5))
    process = _Process(vae, gmm)
    calls = {
        "elbo": lambda: lvm_pyro.elbo(vae, x),
        "log_likelihood": lambda: lvm_pyro.log_likelihood(vae, x, num_samples=4),
        "gradient_variance": lambda: lvm_pyro.gradient_variance(vae, x, num_draws=5, warmup_draws=0),
        "to_inference_data": lambda: lvm_pyro.to_inference_data(vae, x[:10], num_samples=4),
        "psis_khat": lambda: lvm_pyro.psis_khat(vae, x[:10], num_samples=20),
        "log_likelihood of a mixture": lambda: lvm_pyro.log_likelihood(gmm, xs),
        "mcmc": lambda: lvm_pyro.mcmc(gmm, xs, num_samples=4, warmup_steps=4, num_chains=1),
    }
    for name, call in calls.items():
        call()
        try:
            process.assert_unchanged()
        except AssertionError as exc:
            raise AssertionError(f"{name} changed the process") from exc


def test_threads_are_restored_when_the_block_raises(two_threads):
    from lvm_pyro.threads import run_chunks, single_threaded

    seen = []
    with pytest.raises(RuntimeError, match="chunk 3"), single_threaded(torch.device("cpu")) as threads:
        assert threads == 2 and torch.get_num_threads() == 1

        def body(i, slot):
            seen.append(i)
            if i == 3:
                raise RuntimeError("chunk 3")

        run_chunks(range(6), body, threads)
    assert torch.get_num_threads() == 2
    assert 3 in seen


def test_import_registers_nothing_globally():
    """``import lvm_pyro`` adds no biject_to / transform_to registration (the mixture's
    positive-definite sites carry their own transform; see models/gmm)."""
    code = (
        "import torch.distributions as td, pyro\n"
        "before = {n: dict(getattr(td, n)._registry) for n in ('biject_to', 'transform_to')}\n"
        "import lvm_pyro, lvm_pyro.models.gmm\n"
        "after = {n: dict(getattr(td, n)._registry) for n in ('biject_to', 'transform_to')}\n"
        "print(sorted(repr(k) for n in after for k in after[n] if after[n][k] is not before[n].get(k)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    assert out.stdout.strip() == "[]"


def _package_sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def test_ctypes_and_mallopt_live_in_the_allocator_module_only():
    uses = {name for name, text in _package_sources().items() if re.search(r"\bctypes\b|\bmallopt\b", text)}
    assert uses == {"allocator.py"}


def test_no_gc_collect_nor_torch_jit_in_the_package():
    found = {name for name, text in _package_sources().items() if re.search(r"gc\.collect|torch\.jit", text)}
    assert found == set()


# ------------------------------------------------------------------------ the opt-in allocator


def test_retain_freed_memory_sets_both_thresholds_and_restores_the_startup_values(monkeypatch):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda p, v: calls.append((p, v)) or 1)
    monkeypatch.setattr(allocator, "_startup_env", lambda: {"MALLOC_TRIM_THRESHOLD_": "1000000"})
    with allocator.retain_freed_memory(64 << 20) as tuned:
        assert tuned is True
        assert calls == [(-3, 32 << 20), (-1, 64 << 20)]  # mmap capped at glibc's 32 MiB
        with allocator.retain_freed_memory(8 << 20):  # nested: the outer settings stay
            pass
        assert len(calls) == 2
    # trim from the environment glibc started with, mmap glibc's default
    assert calls[2:] == [(-3, 128 << 10), (-1, 1_000_000)]


def test_retain_freed_memory_restores_when_the_block_raises(monkeypatch):
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(allocator, "_mallopt", lambda: lambda p, v: calls.append((p, v)) or 1)
    monkeypatch.setattr(allocator, "_startup_env", dict)
    with pytest.raises(KeyError), allocator.retain_freed_memory(1 << 20):
        raise KeyError("x")
    assert calls == [(-3, 1 << 20), (-1, 1 << 20), (-3, 128 << 10), (-1, 128 << 10)]


def test_retain_freed_memory_without_glibc_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    with allocator.retain_freed_memory() as tuned:
        assert tuned is False


@pytest.mark.parametrize("bad", [0, -1, 2**31, 1.5, True, "256M"])
def test_retain_freed_memory_refuses_a_bad_limit(bad):
    with pytest.raises(ConfigurationError, match="limit_bytes"), allocator.retain_freed_memory(bad):
        pass


def test_startup_value_reads_the_environment_glibc_started_with():
    assert allocator._startup_value(-1, {}) == 128 << 10
    assert allocator._startup_value(-1, {"MALLOC_TRIM_THRESHOLD_": "4096"}) == 4096
    assert allocator._startup_value(-3, {"MALLOC_MMAP_THRESHOLD_": "junk"}) == 128 << 10
    env = allocator._startup_env()
    assert env.get("PATH") == os.environ.get("PATH")  # the process's own start-up environment


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retain_freed_memory_calls_glibc():
    with allocator.retain_freed_memory(16 << 20) as tuned:
        blocks = [bytearray(4 << 20) for _ in range(4)]
    assert tuned is (allocator._mallopt() is not None)
    assert len(blocks) == 4
