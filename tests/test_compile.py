"""The compiled training step: make_fx + TorchInductor, verified against eager, chosen by a fixed rule.

Compiling costs seconds, so the tests that compile are few and share one shape
(LocalGaussian(3), batches of 32): after the first, PyTorch's compile cache serves the rest.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import LocalGaussian

import lvm_pyro
from lvm_pyro.errors import ConfigurationError, DivergenceError
from lvm_pyro.infer.compile import AUTO_MIN_WORK, Compilation, CompiledStep, choose, graph_pays_off

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")), reason="inductor needs a C++ compiler"
)
X = torch.randn(96, 3, generator=torch.Generator().manual_seed(0))


def _fit(compile, **kw):
    pyro.clear_param_store()
    model = LocalGaussian(3, learn_w=True)
    settings = dict(epochs=12, batch_size=32, lr=0.02, kl_warmup=2, progress=False, seed=3, compile=compile)
    result = lvm_pyro.fit(model, X, **{**settings, **kw})
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}


@needs_compiler
@pytest.mark.parametrize("mode, clip_norm", [
    ("step", None),  # the graph of the other tests here: served by the compile cache
    pytest.param("grad", 5.0, marks=pytest.mark.slow),  # another graph (benchmarks/svi_overhead.py)
])
def test_compiled_and_eager_steps_follow_the_same_trajectory(mode, clip_norm):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback
        compiled = _fit(mode, clip_norm=clip_norm)
    eager = _fit(False, clip_norm=clip_norm)
    assert compiled[0].config["compiled"] is True and compiled[0].config["compile_mode"] == mode
    assert eager[0].config["compiled"] is False and eager[0].compile_time == 0.0
    assert compiled[0].compile_time > 0
    assert compiled[0].betas == eager[0].betas and compiled[0].betas[0] < 1.0  # beta: a graph input
    # the two paths round differently: 36 steps apart they agree to ~1e-5
    torch.testing.assert_close(torch.tensor(compiled[0].losses), torch.tensor(eager[0].losses),
                               rtol=1e-4, atol=1e-4)
    for name, value in eager[1].items():
        torch.testing.assert_close(compiled[1][name], value, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_compiled_runs_are_bitwise_reproducible_and_resume_exactly(tmp_path):
    from torch._dynamo.utils import counters

    first = _fit(True)
    bypassed, hits = counters["inductor"]["fxgraph_cache_bypass"], counters["inductor"]["fxgraph_cache_hit"]
    second = _fit(True)
    # the second recording of one shape is served by PyTorch's compile cache, not compiled again
    assert counters["inductor"]["fxgraph_cache_bypass"] == bypassed
    assert counters["inductor"]["fxgraph_cache_hit"] == hits + 1
    assert first[0].config["compiled"] is True
    assert first[0].losses == second[0].losses
    for name, value in first[1].items():
        assert torch.equal(second[1][name], value), name
    # stopped after 5 epochs, resumed to 12: the uninterrupted run, bit for bit
    _fit(True, epochs=5, checkpoint=str(tmp_path / "run"))
    resumed = _fit("auto", checkpoint=lvm_pyro.infer.trainer.Checkpointing(tmp_path / "run", resume=True))
    assert resumed[0].config["compiled"] is True  # "auto" keeps the path the checkpoint records
    assert resumed[0].losses == first[0].losses
    for name, value in first[1].items():
        assert torch.equal(resumed[1][name], value), name


@needs_compiler
def test_a_diverging_compiled_step_leaves_the_parameters_alone():
    pyro.clear_param_store()
    model = LocalGaussian(3, learn_w=True)
    seen = []

    class Snapshot(lvm_pyro.infer.callbacks.Callback):
        def on_step_end(self, state):
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    # lr=1e3: the first update puts log-scales near 1e3, so the next loss is not finite
    with pytest.raises(DivergenceError) as info:
        lvm_pyro.fit(model, X, epochs=12, batch_size=32, lr=1e3, kl_warmup=0, progress=False, seed=3,
                     compile=True, callbacks=[Snapshot()])
    result = info.value.result
    assert result.config["compiled"] is True and result.steps == len(result.losses) == len(seen) >= 1
    for name, value in model.state_dict().items():  # the parameters after the last finite step
        assert torch.equal(value, seen[-1][name]), name


@needs_compiler
def test_the_compiled_step_draws_the_same_noise_and_leaves_state_alone():
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    opt = torch.optim.Adam([w], lr=0.1)

    def loss_fn(batch, beta):
        z = batch[0] * w + torch.randn_like(batch[0])  # a reparameterized draw inside the graph
        return (torch.nn.functional.softplus(z) * beta).sum()

    step = CompiledStep(loss_fn, [w], opt)
    torch.manual_seed(4)
    rng = torch.get_rng_state()
    assert step.prepare((torch.ones(4, 2),), (2 * torch.ones(4, 2),), torch.tensor(1.0))
    assert torch.equal(torch.get_rng_state(), rng)  # recording, compiling, checking: no draws kept
    assert torch.equal(w.detach(), torch.tensor([0.5, -1.0])) and w.grad is None
    loss, _ = step((torch.ones(4, 2),), torch.tensor(2.0)).tolist()
    after = w.detach().clone()
    with torch.no_grad():
        w.copy_(torch.tensor([0.5, -1.0]))
    eager_opt = torch.optim.Adam([w], lr=0.1)
    torch.manual_seed(4)
    eager = loss_fn((torch.ones(4, 2),), torch.tensor(2.0))
    eager.backward()
    eager_opt.step()
    assert loss == pytest.approx(float(eager), rel=1e-6)
    torch.testing.assert_close(after, w.detach(), rtol=1e-5, atol=1e-6)  # Adam rounds differently


def test_a_model_reading_python_numbers_from_the_data_falls_back_to_eager():
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        spread = float(x.abs().max())  # a Python number taken from the data: not capturable
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc, spread), obs=x)

    x = torch.randn(64) * torch.linspace(0.5, 3.0, 64)
    with pytest.warns(UserWarning, match="compiled step is not used .*capturing the step failed"):
        result = lvm_pyro.fit((model, lambda x: None), x, steps=6, batch_size=16, progress=False, seed=0,
                              compile=True)
    assert result.config["compiled"] is False and "capturing" in result.config["compile_fallback"]
    pyro.clear_param_store()
    eager = lvm_pyro.fit((model, lambda x: None), x, steps=6, batch_size=16, progress=False, seed=0,
                         compile=False)
    assert result.losses == eager.losses  # the fallback leaves parameters and RNG as they were


def test_the_path_is_chosen_by_a_fixed_rule_not_by_timing():
    digits_vae = [torch.zeros(177_000)]  # the default VAE: 9 steps of 128 digits an epoch
    assert graph_pays_off(digits_vae, batch_rows=128, steps=2700)  # 300 epochs
    assert not graph_pays_off(digits_vae, batch_rows=128, steps=1800)  # 200 epochs: too few steps
    assert not graph_pays_off([torch.zeros(100)], batch_rows=64, steps=10**6)  # a test's model
    assert graph_pays_off([torch.zeros(10**5)], batch_rows=50, steps=2000)
    assert not graph_pays_off([torch.zeros(10**9)], batch_rows=100, steps=1999)  # too few steps
    assert AUTO_MIN_WORK == 1e10
    auto = Compilation.of("auto")
    assert choose(auto, "score", digits_vae, 128, 10**5) == (
        False, "objective 'score' is not compiled (only reparam, meanfield, iwae)")
    assert choose(Compilation.of(True), "reparam", [torch.zeros(1)], 1, 1)[0] is True
    assert choose(Compilation.of(False), "reparam", digits_vae, 128, 10**5)[0] is False
    # a default fit of a test's size runs eager, and says why
    result = lvm_pyro.fit(LocalGaussian(3), X, epochs=2, batch_size=32, progress=False, seed=0)
    assert result.config["compiled"] is False and result.compile_time == 0.0
    assert result.config["compile_reason"] == "auto: the run is too short to repay compiling"


def test_compile_argument_values():
    assert Compilation.of("grad") == Compilation(enabled=True, mode="grad")
    assert Compilation.of("inductor") == Compilation(enabled=True)
    for bad in ("yes", 1, None, "step+grad"):
        with pytest.raises(ConfigurationError, match=r"compile=.*pass 'auto'"):
            Compilation.of(bad)
    with pytest.raises(ConfigurationError, match="mode"):
        Compilation(mode="whole")


def test_no_torch_jit_and_no_ctypes_in_the_engine():
    root = Path(lvm_pyro.__file__).parent
    offenders = [str(p) for p in root.rglob("*.py") if "torch.jit" in p.read_text()]
    assert offenders == []
    for name in ("infer/svi.py", "infer/trainer.py", "infer/compile.py", "infer/evaluate.py"):
        assert "ctypes" not in (root / name).read_text()

