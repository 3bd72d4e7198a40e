"""The compiled loss: used by default, same trajectory as eager, safe fallback."""

from __future__ import annotations

import platform
import shutil
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import LocalGaussian

import lvm_pyro
from lvm_pyro.infer import compiled as compiled_module
from lvm_pyro.infer.compiled import CompiledLoss


@pytest.mark.parametrize("estimator", ["reparam", "meanfield", "iwae"])
def test_compiled_and_eager_paths_follow_the_same_trajectory(estimator):
    x = torch.randn(96, 3)
    runs = {}
    for jit in (False, True):
        pyro.clear_param_store()
        model = LocalGaussian(3, learn_w=True)
        result = lvm_pyro.fit(model, x, estimator=estimator, epochs=12, batch_size=32, lr=0.02,
                              kl_warmup=2 if estimator != "iwae" else 0, progress=False, seed=3, jit=jit)
        runs[jit] = (result, {k: v.detach().clone() for k, v in model.state_dict().items()})
    eager, compiled = runs[False], runs[True]
    # the graph was recorded, verified and used for every step (no timed trial any more)
    assert compiled[0].config["compiled"] is True and eager[0].config["compiled"] is False
    torch.testing.assert_close(torch.tensor(compiled[0].losses), torch.tensor(eager[0].losses),
                               rtol=1e-5, atol=1e-5)
    for name, value in eager[1].items():
        torch.testing.assert_close(compiled[1][name], value, rtol=1e-5, atol=1e-6)


def test_data_dependent_model_falls_back_to_eager_with_a_warning():
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        spread = float(x.abs().max())  # a Python number taken from the data: recorded once
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, spread), obs=x)

    x = torch.randn(64) * torch.linspace(0.5, 3.0, 64)
    with pytest.warns(UserWarning, match="differ from the eager ones"):
        result = lvm_pyro.fit((model, lambda x: None), x, steps=6, batch_size=16, progress=False,
                              seed=0)
    assert result.config["compiled"] is False
    assert "differ" in result.config["compile_fallback"]
    pyro.clear_param_store()
    eager = lvm_pyro.fit((model, lambda x: None), x, steps=6, batch_size=16, progress=False, seed=0,
                         jit=False)
    assert result.losses == pytest.approx(eager.losses, rel=1e-6)


def test_branch_independent_of_data_is_compiled():
    w = torch.nn.Parameter(torch.ones(2))

    def loss_fn(x, beta):
        scale = 2.0 if x.shape[0] > 1 else 1.0  # depends on the shape only: one graph per shape
        return scale * (w * x).sum() * beta

    compiled = CompiledLoss(loss_fn, [w])
    for _ in range(3):
        assert float(compiled((torch.ones(3, 2),), torch.tensor(1.0))) == 12.0
    assert float(compiled((torch.ones(1, 2),), torch.tensor(0.5))) == 1.0
    assert compiled.active and len(compiled.graphs) == 2  # a new shape is recorded on first use


def test_tracing_failure_falls_back_to_eager():
    w = torch.nn.Parameter(torch.ones(2))

    def loss_fn(x, beta):
        if torch.jit.is_tracing():
            raise RuntimeError("cannot be traced")
        return (w * x).sum()

    compiled = CompiledLoss(loss_fn, [w])
    x = torch.ones(3, 2)
    with pytest.warns(UserWarning, match="tracing failed: RuntimeError: cannot be traced"):
        values = [float(compiled((x,), torch.tensor(1.0))) for _ in range(3)]
    assert values == [6.0, 6.0, 6.0] and not compiled.active


def test_the_path_is_chosen_by_a_fixed_rule_not_by_timing():
    small = [torch.zeros(256, 256), torch.zeros(256, 64)]
    assert compiled_module.graph_pays_off(small, batch_rows=128)  # the small digits VAE's size
    large = [torch.zeros(1024, 1024), torch.zeros(1024, 1024)]
    assert not compiled_module.graph_pays_off(large, batch_rows=1024)  # the large one's: eager
    limit = compiled_module.GRAPH_MAX_WORK
    assert compiled_module.graph_pays_off([torch.zeros(limit // 4)], batch_rows=4)
    assert not compiled_module.graph_pays_off([torch.zeros(limit // 4 + 1)], batch_rows=4)
    x = torch.randn(96, 3)
    configs = []
    for jit in ("auto", True):
        pyro.clear_param_store()
        configs.append(lvm_pyro.fit(LocalGaussian(3), x, epochs=2, batch_size=32, progress=False, seed=0,
                                    jit=jit).config)
    assert configs[0]["compiled"] is True and configs[1]["compiled"] is True


def test_prepared_graph_is_used_from_the_first_step_and_leaves_the_rng_alone():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))

    def loss_fn(x, beta):
        return ((x * w + torch.randn_like(x)) ** 2).sum() * beta

    compiled = CompiledLoss(loss_fn, [w])
    torch.manual_seed(4)
    before = torch.get_rng_state()
    assert compiled.prepare((torch.ones(4, 2),), (2 * torch.ones(4, 2),), torch.tensor(1.0))
    assert torch.equal(torch.get_rng_state(), before)  # recording, checking, warming up: no draws
    value = compiled((torch.ones(4, 2),), torch.tensor(1.0))
    torch.manual_seed(4)
    assert float(value) == pytest.approx(float(loss_fn(torch.ones(4, 2), torch.tensor(1.0))), rel=1e-6)


needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")), reason="torch.compile needs a C++ compiler"
)


@needs_compiler
@pytest.mark.parametrize("estimator", ["reparam", "meanfield"])
def test_inductor_backend_follows_the_eager_trajectory(estimator):
    x = torch.randn(64, 3)
    runs = {}
    for jit in (False, "inductor"):
        pyro.clear_param_store()
        model = LocalGaussian(3, learn_w=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback to the TorchScript graph
            result = lvm_pyro.fit(model, x, estimator=estimator, epochs=18, batch_size=32, lr=0.02,
                                  kl_warmup=2, progress=False, seed=5, jit=jit)
        runs[jit] = (result, {k: v.detach().clone() for k, v in model.state_dict().items()})
    eager, fused = runs[False], runs["inductor"]
    assert fused[0].config["compiled"] is True
    torch.testing.assert_close(torch.tensor(fused[0].losses), torch.tensor(eager[0].losses),
                               rtol=1e-5, atol=1e-5)
    for name, value in eager[1].items():
        torch.testing.assert_close(fused[1][name], value, rtol=1e-5, atol=1e-6)


@needs_compiler
def test_inductor_graph_draws_the_same_noise_as_eager():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))

    def loss_fn(x, beta):
        z = x * w + torch.randn_like(x)  # a reparameterized draw inside the graph
        return (torch.nn.functional.softplus(z) * beta).sum()

    compiled = CompiledLoss(loss_fn, [w], backend="inductor")
    x = (torch.ones(4, 2),)
    for _ in range(2):
        compiled(x, torch.tensor(1.0))
    assert compiled.inductor_fallback is None and compiled.graphs
    graph = next(iter(compiled.graphs.values()))
    assert not isinstance(graph, torch.jit.ScriptFunction)
    torch.manual_seed(11)
    value = graph(*x, torch.tensor(2.0), w)
    torch.manual_seed(11)
    assert float(value) == pytest.approx(float(loss_fn(*x, torch.tensor(2.0))), rel=1e-6)


def test_inductor_failure_keeps_the_torchscript_graph(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    w = torch.nn.Parameter(torch.ones(2))
    compiled = CompiledLoss(lambda x, beta: (w * x).sum() * beta, [w], backend="inductor")
    x = (torch.ones(3, 2),)
    with pytest.warns(UserWarning, match="torch.compile is not used .*no compiler here"):
        values = [float(compiled(x, torch.tensor(1.0))) for _ in range(3)]
    assert values == [6.0, 6.0, 6.0] and compiled.active
    assert isinstance(next(iter(compiled.graphs.values())), torch.jit.ScriptFunction)
    with pytest.raises(ValueError, match="unknown backend"):
        CompiledLoss(lambda x, beta: x.sum(), [w], backend="nnc")


def test_freed_memory_setting_is_applied_once_and_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(compiled_module, "_malloc_tuned", None)
    monkeypatch.setenv("LVM_PYRO_RETAIN_FREED_MEMORY", "0")
    assert compiled_module.retain_freed_memory() is False
    monkeypatch.setattr(compiled_module, "_malloc_tuned", None)
    monkeypatch.delenv("LVM_PYRO_RETAIN_FREED_MEMORY")
    glibc = platform.libc_ver()[0] == "glibc"
    assert compiled_module.retain_freed_memory() is glibc
    assert compiled_module.retain_freed_memory() is glibc  # cached: mallopt is called once
