"""Bad input to ``em``: every argument, the data, and models that break em's contract, each
refused with an lvm_pyro error naming the fix (or, for a run whose result must be qualified,
a warning), never a traceback from inside torch or Pyro and never a silent accept."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from harness import Case, run_case
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch.distributions import constraints

from lvm_pyro.errors import ConfigurationError, DataError, DataTypeError, ModelContractError
from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GaussianMixtureModel


def _x(n=20, d=1):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _gmm(**kwargs):
    kwargs.setdefault("max_iter", 2)
    kwargs.setdefault("device", "cpu")
    return em(GaussianMixtureModel(2, 1), _x(), **kwargs)


def mixture(x):
    """Two-component mixture with pyro.params and no guide (all latents discrete)."""
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("bad_em_loc", x.new_tensor([-1.0, 1.0]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=x[:, 0])


def positive_locs(x):
    """A mixture whose locs are constrained positive: no closed form, so no online EM."""
    w = pyro.param("bad_em_pw", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    loc = pyro.param("bad_em_ploc", x.new_tensor([0.5, 2.0]), constraint=constraints.positive)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(loc[z], 1.0), obs=x[:, 0])


def _mix(**kwargs):
    pyro.clear_param_store()
    kwargs.setdefault("max_iter", 2)
    kwargs.setdefault("device", "cpu")
    return em(mixture, _x(), **kwargs)


def in_sequences(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    with pyro.plate("sequences", len(x), dim=-1):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[:, 0])


def fixed_size_plate(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    with pyro.plate("data", 20):  # not len(x): wrong for any chunk of rows
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[:, 0])


def self_subsampling(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    with pyro.plate("data", len(x), subsample_size=5) as idx:
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[idx, 0])


def sequential_plate(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    for i in pyro.plate("data", len(x)):
        z = pyro.sample(f"z_{i}", dist.Categorical(w))
        pyro.sample(f"obs_{i}", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[i, 0])


def observed_global(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[:, 0])
    pyro.sample("total", dist.Normal(x.new_zeros(()), 100.0), obs=x.sum())


def enumerated_global(x):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    shift = pyro.sample("shift", dist.Categorical(w))  # one for all rows
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[shift], 1.0), obs=x[:, 0])


def no_discrete(x):
    loc = pyro.param("bad_em_loc", x.new_zeros(()))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=x[:, 0])


def continuous_local(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(x.new_tensor(0.5)))
        u = pyro.sample("u", dist.Normal(x.new_tensor(0.0), 1.0))
        pyro.sample("obs", dist.Normal(u + z, 1.0), obs=x[:, 0])


def sampled_global(x):
    loc = pyro.sample("loc", dist.Normal(x.new_tensor(0.0), 10.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(x.new_tensor(0.5)))
        pyro.sample("obs", dist.Normal(loc + z, 1.0), obs=x[:, 0])


def local_point_estimate(x):
    with pyro.plate("data", len(x)):
        loc = pyro.sample("loc", dist.Normal(x.new_zeros(()), 10.0))
        z = pyro.sample("z", dist.Bernoulli(x.new_tensor(0.5)))
        pyro.sample("obs", dist.Normal(loc + z, 1.0), obs=x[:, 0])


def padded(x, lengths):
    w = pyro.param("bad_em_w", x.new_tensor([0.5, 0.5]), constraint=constraints.simplex)
    with pyro.plate("data", len(x)), pyro.poutine.mask(mask=lengths > 0):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[:, 0])


def no_params(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(x.new_tensor([0.5, 0.5])))
        pyro.sample("obs", dist.Normal(x.new_tensor([-1.0, 1.0])[z], 1.0), obs=x[:, 0])


def _x_with(value, index=(3, 0)):
    x = _x()
    x[index] = value
    return x


CASES = [
    # ---- max_iter, tol, n_init, init, e_step
    Case(
        "max_iter negative",
        lambda: _gmm(max_iter=-1),
        ConfigurationError,
        r"max_iter must be a non-negative integer",
    ),
    Case("max_iter float", lambda: _gmm(max_iter=2.5), ConfigurationError, r"max_iter must be .*integer"),
    Case("max_iter bool", lambda: _gmm(max_iter=True), ConfigurationError, r"max_iter must be .*integer"),
    Case("max_iter string", lambda: _gmm(max_iter="10"), ConfigurationError, r"max_iter must be .*integer"),
    Case(
        "tol negative",
        lambda: _gmm(tol=-1.0),
        ConfigurationError,
        r"tol must be a finite non-negative number",
    ),
    Case("tol nan", lambda: _gmm(tol=math.nan), ConfigurationError, r"tol must be a finite"),
    Case("tol inf", lambda: _gmm(tol=math.inf), ConfigurationError, r"tol must be a finite"),
    Case("tol string", lambda: _gmm(tol="1e-3"), ConfigurationError, r"tol must be a finite"),
    Case(
        "n_init zero",
        lambda: _gmm(n_init=0),
        ConfigurationError,
        r"n_init must be a positive integer.*n_init=3",
    ),
    Case("n_init float", lambda: _gmm(n_init=2.0), ConfigurationError, r"n_init must be a positive integer"),
    Case("init unknown", lambda: _gmm(init="zeros"), ConfigurationError, r"init must be one of .*callable"),
    Case("init number", lambda: _gmm(init=3), ConfigurationError, r"init must be one of"),
    Case(
        "n_init with current",
        lambda: _gmm(n_init=2, init="current"),
        ConfigurationError,
        r"n_init > 1 with init='current'.*init='random'",
    ),
    Case(
        "init kmeans without initialize_",
        lambda: _mix(init="kmeans"),
        ConfigurationError,
        r"init='kmeans' needs a model with an initialize_.*init='current'",
    ),
    Case("e_step unknown", lambda: _gmm(e_step="exact"), ConfigurationError, r"e_step must be one of"),
    Case("e_step None", lambda: _gmm(e_step=None), ConfigurationError, r"e_step must be one of"),
    Case(
        "e_step closed_form without statistics",
        lambda: _mix(e_step="closed_form"),
        ConfigurationError,
        r"closed_form.*use e_step='enum'",
    ),
    # ---- the generalized M-step
    Case(
        "m_step_steps zero",
        lambda: _mix(m_step_steps=0),
        ConfigurationError,
        r"m_step_steps must be a positive integer",
    ),
    Case(
        "m_step_steps float",
        lambda: _mix(m_step_steps=2.5),
        ConfigurationError,
        r"m_step_steps must be a positive integer",
    ),
    Case(
        "m_step_lr zero",
        lambda: _mix(m_step_lr=0.0),
        ConfigurationError,
        r"m_step_lr must be a finite positive number",
    ),
    Case(
        "m_step_lr negative",
        lambda: _mix(m_step_lr=-0.1),
        ConfigurationError,
        r"m_step_lr must be a finite positive",
    ),
    Case(
        "m_step_lr nan",
        lambda: _mix(m_step_lr=math.nan),
        ConfigurationError,
        r"m_step_lr must be a finite positive",
    ),
    Case(
        "m_step_lr inf",
        lambda: _mix(m_step_lr=math.inf),
        ConfigurationError,
        r"m_step_lr must be a finite positive",
    ),
    Case(
        "m_step_lr string",
        lambda: _mix(m_step_lr="0.1"),
        ConfigurationError,
        r"m_step_lr must be a finite positive",
    ),
    Case(
        "stalled M-step warns",
        lambda: _mix(max_iter=20, tol=1e-6, m_step_lr=50.0, m_step_steps=2, e_step="enum"),
        RuntimeWarning,
        r"stopped without converging.*raise m_step_steps.*m_step_lr",
    ),
    Case("masked enumerated site warns",
         lambda: em(padded, (_x(), torch.arange(20) % 3), device="cpu", max_iter=1),
         UserWarning, r"masked.*log K per masked value.*subtract"),
    # ---- chunk_size, data_plate
    Case(
        "chunk_size zero",
        lambda: _gmm(chunk_size=0),
        ConfigurationError,
        r"chunk_size must be a positive integer or None",
    ),
    Case(
        "chunk_size negative",
        lambda: _mix(chunk_size=-5),
        ConfigurationError,
        r"chunk_size must be a positive integer",
    ),
    Case(
        "chunk_size float",
        lambda: _mix(chunk_size=2.5),
        ConfigurationError,
        r"chunk_size must be a positive integer",
    ),
    Case(
        "chunk_size bool",
        lambda: _mix(chunk_size=True),
        ConfigurationError,
        r"chunk_size must be a positive integer",
    ),
    Case("data_plate empty", lambda: _mix(data_plate=""), ConfigurationError, r"data_plate must be the name"),
    Case(
        "data_plate not a string",
        lambda: _mix(data_plate=3),
        ConfigurationError,
        r"data_plate must be the name",
    ),
    Case(
        "data_plate misspelled",
        lambda: em(in_sequences, _x(), device="cpu", data_plate="sequence"),
        ModelContractError,
        r"no plate named 'sequence'.*\['sequences'\].*data_plate=",
    ),
    Case(
        "chunks without the plate's name",
        lambda: em(in_sequences, _x(), device="cpu", chunk_size=5),
        ModelContractError,
        r"no plate named 'data'.*chunk_size.*data_plate=",
    ),
    Case(
        "data_plate on a closed-form mixture",
        lambda: _gmm(data_plate="sequences"),
        ModelContractError,
        r"plate 'data'.*leave data_plate='data'",
    ),
    Case(
        "data plate of a fixed size",
        lambda: em(fixed_size_plate, _x(30), device="cpu"),
        ModelContractError,
        r"has size 20.*30 rows.*pyro.plate\('data', len\(x\)\)",
    ),
    Case(
        "data plate subsampled by the model",
        lambda: em(self_subsampling, _x(), device="cpu"),
        ModelContractError,
        r"subsamples its data plate 'data'.*chunk_size=",
    ),
    Case(
        "data plate sequential",
        lambda: em(sequential_plate, _x(6), device="cpu"),
        ModelContractError,
        r"sequential plate.*vectorized",
    ),
    Case(
        "observed site outside the plate, chunked",
        lambda: em(observed_global, _x(), device="cpu", chunk_size=5),
        ModelContractError,
        r"\['total'\] are outside the data plate 'data'.*chunk_size=None",
    ),
    Case(
        "enumerated global, chunked",
        lambda: em(enumerated_global, _x(), device="cpu", chunk_size=5),
        ModelContractError,
        r"\['shift'\] are outside the data plate.*chunk_size=None",
    ),
    Case("guide site inside the data plate, chunked",
         lambda: em(local_point_estimate, _x(), device="cpu", chunk_size=5,
                    guide=AutoDelta(pyro.poutine.block(local_point_estimate, expose=["loc"]))),
         ModelContractError, r"guide samples site\(s\) \['loc'\] inside the data plate.*chunk_size=None"),
    # ---- seed, callbacks, flags, guide, device
    Case(
        "seed negative",
        lambda: _gmm(seed=-1),
        ConfigurationError,
        r"seed must be an integer in \[0, 2\*\*63\)",
    ),
    Case("seed too large", lambda: _gmm(seed=2**64), ConfigurationError, r"seed must be an integer"),
    Case("seed float", lambda: _gmm(seed=1.5), ConfigurationError, r"seed must be an integer"),
    Case("seed string", lambda: _gmm(seed="0"), ConfigurationError, r"seed must be an integer"),
    Case(
        "callbacks a single callable", lambda: _gmm(callbacks=print), ConfigurationError, r"callbacks=\[f\]"
    ),
    Case(
        "callbacks not callable",
        lambda: _gmm(callbacks=[1]),
        ConfigurationError,
        r"every callback must be callable",
    ),
    Case(
        "callbacks a string", lambda: _gmm(callbacks="stop"), ConfigurationError, r"callbacks must be a list"
    ),
    Case(
        "progress not a bool",
        lambda: _gmm(progress="yes"),
        ConfigurationError,
        r"progress must be True or False",
    ),
    Case(
        "canonical_order not a bool",
        lambda: _gmm(canonical_order=1),
        ConfigurationError,
        r"canonical_order must be",
    ),
    Case(
        "distributed not a bool", lambda: _gmm(distributed="no"), ConfigurationError, r"distributed must be"
    ),
    Case(
        "guide not callable",
        lambda: em(mixture, _x(), guide=3, device="cpu"),
        ConfigurationError,
        r"guide must be a callable.*AutoDelta",
    ),
    Case("device unknown", lambda: _gmm(device="gpu"), ConfigurationError, r"unknown device 'gpu'"),
    Case("model not a model", lambda: em(3, _x(), device="cpu"), ConfigurationError, r"LatentVariableModel"),
    # ---- data
    Case(
        "data with a row of NaN only (a missing value with nothing observed beside it)",
        lambda: em(GaussianMixtureModel(2, 1), _x_with(math.nan), device="cpu"),
        DataError,
        r"every entry missing.*first row 3",
    ),
    Case(
        "data with inf", lambda: em(mixture, _x_with(math.inf), device="cpu"), DataError, r"non-finite.*inf"
    ),
    Case(
        "wrong feature count",
        lambda: em(GaussianMixtureModel(2, 3), _x(20, 2), device="cpu"),
        DataError,
        r"expects \(3,\)",
    ),
    Case(
        "empty data",
        lambda: em(GaussianMixtureModel(2, 1), torch.zeros(0, 1), device="cpu"),
        DataError,
        r"zero rows",
    ),
    Case(
        "more components than points",
        lambda: em(GaussianMixtureModel(5, 1), _x(3), device="cpu"),
        DataError,
        r"n_components=5 is larger than the number of points",
    ),
    Case(
        "data of strings",
        lambda: em(mixture, np.array([["a"], ["b"]]), device="cpu"),
        (DataError, DataTypeError),
        r"numeric|number|string",
    ),
    Case(
        "tuple of data for a closed-form mixture",
        lambda: em(GaussianMixtureModel(2, 1), (_x(), torch.zeros(20)), device="cpu"),
        ConfigurationError,
        r"takes the data x alone",
    ),
    Case(
        "condition of the wrong length",
        lambda: em(mixture, (_x(), torch.zeros(7)), device="cpu"),
        DataError,
        r"one condition per example",
    ),
    # ---- models that break em's contract
    Case(
        "no discrete latent",
        lambda: em(no_discrete, _x(), device="cpu"),
        ModelContractError,
        r"needs a discrete latent site to enumerate.*fit\(\)",
    ),
    Case(
        "continuous latent without a guide",
        lambda: em(continuous_local, _x(), device="cpu"),
        ModelContractError,
        r"'u' .*neither enumerable nor sampled by the guide",
    ),
    Case(
        "global latent without a guide",
        lambda: em(sampled_global, _x(), device="cpu"),
        ModelContractError,
        r"'loc' .*neither enumerable nor sampled by the guide.*AutoDelta",
    ),
    Case(
        "guide sampling a global from a Normal",
        lambda: em(
            sampled_global,
            _x(),
            device="cpu",
            guide=AutoNormal(pyro.poutine.block(sampled_global, expose=["loc"])),
        ),
        ModelContractError,
        r"point estimates.*from a Normal.*AutoDelta",
    ),
    Case(
        "nothing to fit",
        lambda: em(no_params, _x(), device="cpu"),
        ModelContractError,
        r"no parameters to fit.*pyro.param",
    ),
    # sample weights and online EM
    Case("sample_weight wrong length", lambda: em(mixture, _x(), sample_weight=np.ones(19), device="cpu"),
         DataError, r"one weight per row of x \(20\)"),
    Case("sample_weight 2-d", lambda: em(mixture, _x(), sample_weight=np.ones((20, 1)), device="cpu"),
         DataError, r"one weight per row"),
    Case("sample_weight negative", lambda: em(mixture, _x(), sample_weight=-np.ones(20), device="cpu"),
         DataError, r"finite and non-negative.*20 entries.*index 0"),
    Case("sample_weight nan", lambda: em(mixture, _x(), sample_weight=np.r_[np.ones(19), np.nan],
                                         device="cpu"), DataError, r"finite and non-negative.*index 19"),
    Case("sample_weight all zero", lambda: em(mixture, _x(), sample_weight=np.zeros(20), device="cpu"),
         DataError, r"sums to 0"),
    Case("sample_weight strings", lambda: em(mixture, _x(), sample_weight=["a"] * 20, device="cpu"),
         DataError, r"array of numbers"),
    Case("sample_weight with a model's m_step",
         lambda: em(_PoissonWithMStep(), torch.ones(6, 1), sample_weight=np.ones(6), device="cpu"),
         ConfigurationError, r"own m_step.*receives no weights"),
    Case("batch_size on a user model with gradient-route params",
         lambda: em(positive_locs, _x(), batch_size=5, device="cpu"),
         ConfigurationError, r"\['bad_em_ploc'\] take gradient steps.*batch_size=None"),
    Case("batch_size zero", lambda: _gmm(batch_size=0), ConfigurationError,
         r"batch_size must be a positive integer"),
    Case("batch_size with n_init", lambda: _gmm(batch_size=5, n_init=2), ConfigurationError,
         r"batch_size=.*n_init > 1"),
]


class _PoissonWithMStep:
    """A (model, guide) object with its own m_step."""

    def model(self, x):
        rate = pyro.param("pw_rate", x.new_tensor([1.0, 3.0]), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(x.new_tensor([0.5, 0.5])))
            pyro.sample("obs", dist.Poisson(rate[z]), obs=x[:, 0])

    def guide(self, x):
        pass

    def m_step(self, x, posterior):
        pass


def _error(case: Case) -> Case:
    """The harness takes one error class; a tuple of accepted classes is narrowed to their base."""
    if isinstance(case.error, tuple):
        from lvm_pyro.errors import LVMError

        return Case(case.id, case.call, LVMError, case.match)
    return case


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_em_input(case):
    run_case(_error(case))


def test_the_table_is_big_enough_and_ids_are_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
