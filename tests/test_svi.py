"""fit(): posterior recovery, estimators, scaling, dtype, callbacks, divergence and bad input."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import (
    LocalGaussian,
    local_gaussian_log_px,
    normal_normal_guide,
    normal_normal_model,
    normal_normal_posterior,
)
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from torch.utils.data import DataLoader, TensorDataset

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.infer.callbacks import Callback, Convergence, EarlyStopping, KLWarmup, LRScheduler


@pytest.fixture
def nn_data():
    torch.manual_seed(1)
    return 1.5 + torch.randn(40)


def _posterior_of_fit():
    return float(pyro.param("q_loc").detach()), float(pyro.param("q_scale").detach())


def _decay(steps, final=0.05):
    """Exponential learning-rate decay to ``final`` x the start over ``steps`` steps."""
    return LRScheduler(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, final ** (1 / steps)),
                       interval="step")


@pytest.mark.parametrize(
    "estimator, kwargs, tol_mean, tol_sd",
    [
        ("reparam", dict(steps=1500, num_particles=4), 0.02, 0.05),
        ("meanfield", dict(steps=1500, num_particles=4), 0.02, 0.05),
        ("score", dict(steps=1500, num_particles=8), 0.02, 0.05),
    ],
)
def test_normal_normal_posterior_is_recovered(nn_data, estimator, kwargs, tol_mean, tol_sd):
    mean, sd = normal_normal_posterior(nn_data)
    lvm_pyro.fit(
        (normal_normal_model, normal_normal_guide), nn_data, objective=estimator,
        batch_size=len(nn_data), progress=False, seed=0, lr=0.1, callbacks=[_decay(kwargs["steps"])],
        **kwargs,
    )
    q_mean, q_sd = _posterior_of_fit()
    assert abs(q_mean - mean) < tol_mean, (q_mean, mean)
    assert abs(q_sd - sd) / sd < tol_sd, (q_sd, sd)


def test_minibatches_estimate_the_full_data_elbo(nn_data):
    """A global latent sees prior once and N likelihood terms: only data-plate sites are scaled."""
    mean, sd = normal_normal_posterior(nn_data)
    lvm_pyro.fit(
        (normal_normal_model, normal_normal_guide), nn_data, objective="meanfield",
        batch_size=10, steps=3000, lr=0.05, progress=False, seed=0, callbacks=[_decay(3000)],
    )
    q_mean, q_sd = _posterior_of_fit()
    assert abs(q_mean - mean) < 0.05
    assert abs(q_sd - sd) / sd < 0.1  # unscaled, the posterior sd would be 2x too wide


def test_amortized_local_model_reaches_log_px_for_each_estimator():
    torch.manual_seed(0)
    x = torch.randn(256, 2) * math.sqrt(2.0)
    exact = local_gaussian_log_px(x)
    for estimator in ("reparam", "meanfield", "iwae"):
        model = LocalGaussian(dim=2)
        result = lvm_pyro.fit(model, x, objective=estimator, epochs=150, batch_size=64, lr=0.05,
                              progress=False, seed=0)
        assert result.config["estimator"] == estimator
        torch.testing.assert_close(model.a.detach(), torch.full((2,), 0.5), atol=0.06, rtol=0)
        torch.testing.assert_close(model.log_s.exp().detach(), torch.full((2,), 0.5**0.5),
                                   atol=0.06, rtol=0)
        # an IWAE-trained guide is a proposal, not the posterior: judge it by its own bound
        bound = "iwae" if estimator == "iwae" else "reparam"
        held_out = lvm_pyro.elbo(model, x, objective=bound, num_particles=64, seed=0)
        assert abs(held_out - exact) < 0.02, (estimator, held_out, exact)


def test_iwae_bound_lies_between_elbo_and_log_px():
    torch.manual_seed(0)
    x = torch.randn(500, 2) * math.sqrt(2.0)
    model = LocalGaussian(dim=2)  # untrained guide: a loose bound
    exact = local_gaussian_log_px(x)
    e = lvm_pyro.elbo(model, x, num_particles=200, seed=0)
    iwae_5 = lvm_pyro.elbo(model, x, objective="iwae", num_particles=5, seed=0)
    iwae_100 = lvm_pyro.elbo(model, x, objective="iwae", num_particles=100, seed=0)
    assert e < iwae_5 < iwae_100 < exact + 0.01
    assert exact - iwae_100 < 0.5 * (exact - e)


def test_float64_data_with_float32_default_runs_in_float64():
    assert torch.get_default_dtype() == torch.float32
    x = torch.randn(64, 3, dtype=torch.float64)
    model = LocalGaussian(dim=3, learn_w=True)
    for estimator in ("reparam", "meanfield", "score", "iwae"):
        result = lvm_pyro.fit(model, x, objective=estimator, steps=3, batch_size=16,
                              progress=False, seed=0)
        assert all(math.isfinite(v) for v in result.losses)
        assert all(p.dtype == torch.float64 for p in result.params.values()), estimator


def test_plain_callables_with_autoguide(nn_data):
    guide = AutoNormal(normal_normal_model)
    result = lvm_pyro.fit(normal_normal_model, nn_data, guide=guide, steps=1200, lr=0.03,
                          batch_size=len(nn_data), progress=False, seed=0)
    mean, _ = normal_normal_posterior(nn_data)
    assert abs(float(guide.median()["mu"]) - mean) < 0.05
    assert result.steps == 1200 and len(result.losses) == 1200


def test_dataloader_input_and_tuple_conditions():
    x = torch.randn(96, 2)
    loader = DataLoader(TensorDataset(x), batch_size=32, shuffle=True)
    result = lvm_pyro.fit(LocalGaussian(dim=2), loader, epochs=2, progress=False, seed=0)
    assert result.steps == 6 and result.epochs == 2 and len(result.epoch_losses) == 2

    def model(x, y):
        w = pyro.param("w", torch.zeros(()))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x[:, 0], 1.0), obs=y)

    y = 3.0 * x[:, 0] + 0.1 * torch.randn(96)
    lvm_pyro.fit((model, lambda x, y: None), (x, y), steps=800, lr=0.05, batch_size=32,
                 progress=False, seed=0)
    assert abs(float(pyro.param("w")) - 3.0) < 0.1


def test_enum_estimator_sums_out_a_discrete_site():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200) - 3, torch.randn(200) + 3])

    @pyro.infer.config_enumerate
    def model(x):
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("x", dist.Normal(locs[z], 1.0), obs=x)

    lvm_pyro.fit((model, lambda x: None), x, objective="enum", steps=300, lr=0.1,
                 batch_size=400, progress=False, seed=0)
    torch.testing.assert_close(pyro.param("locs").detach(), torch.tensor([-3.0, 3.0]), atol=0.2, rtol=0)
    with pytest.raises(errors.ConfigurationError, match="objective='enum'"):
        lvm_pyro.fit((model, lambda x: None), x, steps=1, progress=False)


class _Recorder(Callback):
    def __init__(self):
        self.betas, self.lrs = [], []

    def on_step_end(self, state):
        self.betas.append(state.beta)
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_kl_warmup_and_lr_schedule():
    rec = _Recorder()
    x = torch.randn(64, 2)
    lvm_pyro.fit(LocalGaussian(2), x, epochs=4, batch_size=16, kl_warmup=2, progress=False, seed=0,
                 callbacks=[rec, LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5))])
    # 4 steps per epoch; beta is set before each step from the fraction of warm-up done
    assert rec.betas[:5] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert rec.betas[8:] == [1.0] * 8
    assert rec.lrs[0] == pytest.approx(1e-3) and rec.lrs[-1] == pytest.approx(1e-3 / 8)


def test_model_default_kl_warmup_is_used_and_can_be_switched_off():
    class Warm(LocalGaussian):
        default_kl_warmup = 1.0

    rec = _Recorder()
    lvm_pyro.fit(Warm(2), torch.randn(32, 2), epochs=1, batch_size=16, progress=False, callbacks=[rec])
    assert rec.betas == [0.0, 0.5]
    rec = _Recorder()
    lvm_pyro.fit(Warm(2), torch.randn(32, 2), epochs=1, batch_size=16, progress=False,
                 callbacks=[rec], kl_warmup=0)
    assert rec.betas == [1.0, 1.0]


def test_early_stopping_restores_best_parameters():
    torch.manual_seed(0)
    x, val = torch.randn(64, 2), torch.randn(32, 2)

    class Snap(Callback):
        def __init__(self):
            self.by_epoch = {}

        def on_epoch_end(self, state):
            self.by_epoch[state.epoch] = state.snapshot()

    snap, stopper = Snap(), EarlyStopping(patience=2)
    # a large learning rate makes the validation ELBO wander, so it stops early
    result = lvm_pyro.fit(LocalGaussian(2), x, val_data=val, epochs=40, batch_size=8, lr=0.5,
                          callbacks=[snap, stopper], progress=False, seed=0)
    assert result.epochs < 40 and "early stopping" in result.stop_reason
    best = int(np.argmax(result.val_elbo)) + 1
    assert stopper.best_epoch == best
    for name, value in snap.by_epoch[best].items():
        torch.testing.assert_close(result.params[name].detach(), value)


def test_convergence_stops_on_flat_loss():
    x = torch.randn(64, 2)
    result = lvm_pyro.fit(LocalGaussian(2), x, epochs=500, batch_size=64, lr=0.05,
                          callbacks=[Convergence(rtol=1e-3, window=3)], progress=False, seed=0)
    assert result.epochs < 500 and result.stop_reason.startswith("converged")
    last = result.epoch_losses[-4:]
    assert all(abs(b - a) <= 1e-3 * abs(a) for a, b in zip(last, last[1:]))


class _NaNAfter(Callback):
    """Make the model's likelihood NaN from a given step on."""

    def __init__(self, flag, step):
        self.flag, self.step = flag, step

    def on_step_end(self, state):
        if state.step == self.step:
            self.flag["nan"] = True


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_divergence_keeps_last_good_parameters_and_checkpoint(tmp_path):
    flag = {"nan": False}

    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        bad = x.new_tensor(float("nan")) if flag["nan"] else x.new_tensor(0.0)
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc + bad, 1.0), obs=x)

    class Keep(Callback):
        def on_step_end(self, state):
            self.last = state.snapshot()

    keep = Keep()
    x = torch.randn(20) + 2.0
    with pytest.raises(errors.DivergenceError, match="step 4") as info:
        lvm_pyro.fit((model, lambda x: None), x, steps=10, batch_size=20, lr=0.1, progress=False,
                     callbacks=[keep, _NaNAfter(flag, 3)], checkpoint_dir=tmp_path, seed=0,
                     jit=False)  # the model reads Python state, which a compiled loss records once
    assert info.value.result.steps == 3
    torch.testing.assert_close(pyro.param("loc").detach(), keep.last["param.loc"])
    ckpt = lvm_pyro.infer.checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["counters"]["step"] == 3
    torch.testing.assert_close(ckpt["params"]["param.loc"], keep.last["param.loc"])


# --- bad input -------------------------------------------------------------------------


def test_bad_data_is_refused_with_a_fix():
    model = LocalGaussian(dim=2)
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    bad[7, 0] = float("inf")
    with pytest.raises(errors.DataError, match=r"2 non-finite.*first at index \[3, 1\]"):
        lvm_pyro.fit(model, bad, steps=1, progress=False)
    with pytest.raises(errors.DataError, match="x.reshape"):
        lvm_pyro.fit(model, torch.randn(10), steps=1, progress=False)
    with pytest.raises(errors.DataError, match="reshape"):
        lvm_pyro.fit(model, torch.randn(10, 2, 1), steps=1, progress=False)
    with pytest.raises(errors.DataError, match="zero rows"):
        lvm_pyro.fit(model, torch.randn(0, 2), steps=1, progress=False)
    with pytest.raises(errors.DataError, match=r"shape \(3,\) but the model expects \(2,\)"):
        lvm_pyro.fit(model, torch.randn(10, 3), steps=1, progress=False)


def test_integer_and_bool_data_are_converted():
    model = LocalGaussian(dim=2)
    for data in (np.ones((8, 2), dtype=np.int64), torch.ones(8, 2, dtype=torch.bool)):
        result = lvm_pyro.fit(model, data, steps=2, progress=False)
        assert result.config["dtype"] == str(torch.get_default_dtype())


def test_unknown_estimator_lists_the_valid_ones():
    with pytest.raises(errors.ConfigurationError, match="reparam, meanfield, score, iwae, enum"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), estimator="vimco", steps=1, progress=False)


def test_batch_size_larger_than_data_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match="using batch_size=8"):
        result = lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), batch_size=100, steps=2,
                              progress=False)
    assert result.config["batch_size"] == 8


def test_guide_missing_a_latent_site_is_named():
    def guide(x):
        pass

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(errors.ModelContractError, match=r"latent site\(s\) \['z'\].*pyro.sample\('z'"):
        lvm_pyro.fit((model, guide), torch.randn(8), steps=1, progress=False)


def test_minibatching_without_a_data_plate_is_refused():
    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        pyro.sample("x", dist.Normal(loc, 1.0).expand([len(x)]).to_event(1), obs=x)

    with pytest.raises(errors.ModelContractError, match=r"pyro.plate\('data', len\(x\)\)"):
        lvm_pyro.fit((model, lambda x: None), torch.randn(50), batch_size=10, steps=1, progress=False)


def test_unwritable_checkpoint_dir_and_missing_checkpoint(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(errors.CheckpointError, match="cannot be written"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, progress=False,
                     checkpoint_dir=blocker / "run")
    with pytest.raises(errors.CheckpointError, match="no checkpoint at"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, progress=False,
                     checkpoint_dir=tmp_path / "empty", resume=True)
    with pytest.raises(errors.ConfigurationError, match="needs checkpoint_dir"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, progress=False, resume=True)


def test_bad_sizes_and_options():
    with pytest.raises(errors.ConfigurationError, match="epochs or steps"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, epochs=1, progress=False)
    with pytest.raises(errors.ConfigurationError, match="num_particles"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, num_particles=0, progress=False)
    with pytest.raises(errors.ConfigurationError, match="unknown optimizer"):
        lvm_pyro.fit(LocalGaussian(2), torch.randn(8, 2), steps=1, optimizer="lbfgs2", progress=False)
    with pytest.raises(errors.ConfigurationError, match="KLWarmup"):
        KLWarmup(epochs=0)


def test_a_new_model_instance_does_not_inherit_an_old_ones_parameters():
    x = torch.randn(64, 2) * 3
    first = LocalGaussian(2, learn_w=True)
    lvm_pyro.fit(first, x, epochs=20, batch_size=64, lr=0.1, progress=False, seed=0)
    assert not torch.allclose(first.w.detach(), torch.ones(2), atol=0.1)
    second = LocalGaussian(2, learn_w=True)  # same class, same Pyro parameter names
    lvm_pyro.fit(second, x, steps=1, batch_size=64, lr=1e-6, progress=False, seed=0)
    torch.testing.assert_close(second.w.detach(), torch.ones(2), atol=1e-4, rtol=0)


def test_library_models_also_train_with_pyro_svi():
    """A LatentVariableModel is a plain Pyro program: Pyro's own SVI runs it too."""
    model = LocalGaussian(2, learn_w=True)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    x = torch.randn(64, 2)
    losses = [svi.step(x) for _ in range(100)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_meanfield_refuses_a_discrete_guide_site():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", 0.5 * torch.ones(len(x)), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(p))

    with pytest.raises(errors.ConfigurationError, match=r"\['z'\] cannot be reparameterized"):
        lvm_pyro.fit((model, guide), torch.randn(8), objective="meanfield", steps=1, progress=False)


def test_kl_warmup_asked_for_with_iwae_is_refused_loudly():
    with pytest.warns(UserWarning, match="kl_warmup is not applied"):
        result = lvm_pyro.fit(LocalGaussian(2), torch.randn(16, 2), objective="iwae", kl_warmup=3,
                              steps=2, progress=False)
    assert result.config["kl_warmup"] == 0.0


def test_former_argument_names_work_with_one_future_warning(tmp_path):
    x = torch.randn(64, 2)
    with pytest.warns(FutureWarning, match=r"estimator=, checkpoint_dir=, jit=\) is a former spelling.*"
                                           r"objective='meanfield'.*compile=False"):
        old = lvm_pyro.fit(LocalGaussian(2), x, estimator="meanfield", checkpoint_dir=tmp_path / "old",
                           jit=False, steps=5, batch_size=16, progress=False, seed=0)
    pyro.clear_param_store()
    new = lvm_pyro.fit(LocalGaussian(2), x, objective="meanfield", checkpoint=tmp_path / "new", compile=False,
                       steps=5, batch_size=16, progress=False, seed=0)
    assert old.losses == new.losses and old.config["objective"] == "meanfield"
    with pytest.raises(errors.ConfigurationError, match="objective= or its former name estimator="):
        with pytest.warns(FutureWarning):
            lvm_pyro.fit(LocalGaussian(2), x, objective="iwae", estimator="meanfield", steps=1)
    with pytest.raises(errors.ConfigurationError, match="unexpected keyword argument 'epoch'"):
        lvm_pyro.fit(LocalGaussian(2), x, epoch=3)
    assert lvm_pyro.infer.objectives.ESTIMATORS is lvm_pyro.infer.objectives.OBJECTIVES


def test_checkpointing_config_every_and_resume(tmp_path):
    from lvm_pyro.infer.checkpoint import load_checkpoint
    from lvm_pyro.infer.trainer import Checkpointing

    x = torch.randn(64, 2)
    lvm_pyro.fit(LocalGaussian(2), x, epochs=4, batch_size=16, progress=False, seed=0,
                 checkpoint=Checkpointing(tmp_path, every=3))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"]["epoch"] == 4  # epoch 3 and the end
    result = lvm_pyro.fit(LocalGaussian(2), x, epochs=6, batch_size=16, progress=False,
                          checkpoint=Checkpointing(tmp_path, resume=True))
    assert result.config["resumed_from_step"] == 16 and result.epochs == 6
    with pytest.raises(errors.ConfigurationError, match="Checkpointing every=0"):
        lvm_pyro.fit(LocalGaussian(2), x, checkpoint=Checkpointing(tmp_path, every=0))


def test_results_print_in_a_few_lines():
    x = torch.randn(64, 2)
    result = lvm_pyro.fit(LocalGaussian(2), x, epochs=3, batch_size=16, progress=False, seed=0, val_data=x)
    text = repr(result)
    assert len(text.splitlines()) == 2 and len(text) < 300, text
    assert f"{result.epoch_losses[-1]:.4f} nats/point" in text and "3 epochs, 12 steps, eager" in text
    ll = lvm_pyro.log_likelihood(LocalGaussian(2), x, num_samples=10, seed=0)
    assert len(repr(ll)) < 200 and f"{ll.mean:.4f}" in repr(ll)


def test_the_step_takes_beta_as_an_argument():
    from lvm_pyro.infer.trainer import Trainer

    x = torch.randn(64, 2)
    seen = []
    original = Trainer.loss

    def spy(self, batch, beta):
        seen.append(beta)
        return original(self, batch, beta)

    Trainer.loss = spy
    try:
        lvm_pyro.fit(LocalGaussian(2), x, epochs=2, batch_size=32, kl_warmup=2, progress=False, seed=0)
    finally:
        Trainer.loss = original
    assert seen == [0.0, 0.25, 0.5, 0.75]  # the KL warm-up's beta, passed in at each step


def _masked_normal_model(x, observed):
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 10.0))
    with pyro.plate("data", x.shape[0], dim=-2), pyro.plate("features", x.shape[1], dim=-1):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x, obs_mask=observed)


def _masked_normal_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64) + 3
    observed = torch.rand(200, 3, generator=g) > 0.3  # 30% of the entries missing at random
    return torch.where(observed, x, torch.zeros((), dtype=torch.float64)), observed


def _masked_normal_posterior(x, observed):
    """The exact posterior of mu and log p(x_observed) (prior N(0, 10^2), unit noise)."""
    xs = x[observed]
    precision = 1 / 100 + len(xs)
    mean = xs.sum() / precision
    cov = torch.eye(len(xs), dtype=x.dtype) + 100.0
    log_px = dist.MultivariateNormal(torch.zeros_like(xs), cov).log_prob(xs)
    return float(mean), float(precision**-0.5), float(log_px)


def test_fit_and_elbo_sum_out_obs_mask_missing_entries_the_guide_does_not_impute():
    x, observed = _masked_normal_data()
    mean, sd, log_px = _masked_normal_posterior(x, observed)

    def exact_guide(x, observed):
        pyro.sample("mu", dist.Normal(pyro.param("m", x.new_tensor(mean)), pyro.param("s", x.new_tensor(sd))))

    # at the exact posterior the ELBO is log p(x_observed) for every draw of mu
    value = lvm_pyro.elbo((_masked_normal_model, exact_guide), (x, observed), num_particles=3, seed=0,
                          batch_size=len(x))
    assert value * len(x) == pytest.approx(log_px, rel=1e-10)
    # trained, the guide finds that posterior (an imputing mean-field guide would not: its scale
    # comes out near 1/sqrt(all 600 entries), 0.04, instead of 1/sqrt(the observed ones))
    pyro.clear_param_store()
    guide = AutoNormal(poutine.block(_masked_normal_model, hide=["x_unobserved"]))
    lvm_pyro.fit((_masked_normal_model, guide), (x, observed), steps=2000, lr=0.02, batch_size=len(x),
                 objective="meanfield", progress=False, seed=0)
    assert float(guide.locs.mu.detach()) == pytest.approx(mean, abs=0.5 * sd)
    assert float(guide.scales.mu.detach()) == pytest.approx(sd, rel=0.2)
    # an autoguide that imputes the missing entries has a parameter per entry: not in batches
    imputing = AutoNormal(_masked_normal_model)
    lvm_pyro.fit((_masked_normal_model, imputing), (x, observed), steps=2, batch_size=len(x), progress=False)
    with pytest.raises(errors.ModelContractError, match=r"batch of 64 rows.*batch_size=len\(data\)"):
        lvm_pyro.elbo((_masked_normal_model, imputing), (x, observed), batch_size=64)
