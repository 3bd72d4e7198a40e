"""Runs that can be trusted: seeds reproduce, resume is exact, changes are used or refused,
one writer per checkpoint directory. Every comparison is bitwise (CPU, default settings)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from models_for_tests import LocalGaussian

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.infer.callbacks import Callback, EarlyStopping, KLWarmupWarning, LRScheduler
from lvm_pyro.infer.checkpoint import RunLock, load_checkpoint

TESTS = Path(__file__).parent


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), (name, float((a[name] - b[name]).abs().max()))


def _binary(n=96, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) > 0.5).float()


def _vae():
    torch.manual_seed(11)  # the model's own initialization happens before fit: seed it
    return lvm_pyro.VAE((12,), latent_dim=2, hidden=(16,))


def test_same_seed_same_run_for_a_library_vae():
    x = _binary()
    runs = []
    for _ in range(2):
        pyro.clear_param_store()
        vae = _vae()
        with pytest.warns(KLWarmupWarning):  # 6 epochs of the VAE's 100-epoch warm-up
            result = lvm_pyro.fit(vae, x, epochs=6, batch_size=32, progress=False, seed=0)
        runs.append((result, _state(vae)))
    (first, a), (second, b) = runs
    assert first.config["compiled"] is False  # the default path: too short a run to compile
    _assert_bitwise(a, b)
    assert first.losses == second.losses and len(first.losses) == 18
    pyro.clear_param_store()
    other = _vae()
    with pytest.warns(KLWarmupWarning):
        lvm_pyro.fit(other, x, epochs=6, batch_size=32, progress=False, seed=1)
    assert any(not torch.equal(v, a[k]) for k, v in _state(other).items())  # another seed differs


def _user_model(x):
    w = pyro.param("w", torch.zeros(()))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(w, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=x)


def _user_guide(x):
    loc = pyro.param("q_loc", torch.zeros(()))
    scale = pyro.param("q_scale", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc + 0.5 * x, scale))


def test_same_seed_same_run_for_a_user_model_guide_pair():
    x = torch.randn(64) + 1.0
    runs = []
    for _ in range(2):
        pyro.clear_param_store()
        result = lvm_pyro.fit((_user_model, _user_guide), x, steps=40, batch_size=16, lr=0.05,
                              progress=False, seed=3)
        runs.append((result.losses, {k: pyro.param(k).detach().clone() for k in ("w", "q_loc", "q_scale")}))
    assert runs[0][0] == runs[1][0]
    _assert_bitwise(runs[0][1], runs[1][1])
    assert runs[0][1]["w"] != 0.0


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import lvm_pyro
    from lvm_pyro.infer.callbacks import Callback

    class Slow(Callback):
        def on_epoch_end(self, state):
            time.sleep(float(sys.argv[4]))

    g = torch.Generator().manual_seed(3)
    x = (torch.rand(128, 12, generator=g) > 0.5).float()
    torch.manual_seed(5)
    vae = lvm_pyro.VAE((12,), latent_dim=2, hidden=(16,))
    lvm_pyro.fit(vae, x, epochs=int(sys.argv[2]), batch_size=32, progress=False, seed=7, kl_warmup=4,
                 checkpoint_dir=sys.argv[1], resume=sys.argv[3] == "1", callbacks=[Slow()])
    """
)


def test_kill_9_then_resume_equals_the_uninterrupted_run_bitwise(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS)))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), "400", "0", "0.15"])
    ckpt = run_dir / "checkpoint.pt"
    deadline = time.time() + 600  # generous: a loaded machine imports torch slowly
    while time.time() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["counters"]["epoch"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["counters"]["epoch"]
    assert 3 <= killed_at < 400
    target = killed_at + 3
    subprocess.run([sys.executable, str(script), str(run_dir), str(target), "1", "0"], check=True)
    straight_dir = tmp_path / "straight"
    subprocess.run([sys.executable, str(script), str(straight_dir), str(target), "0", "0"], check=True)
    resumed, straight = load_checkpoint(ckpt), load_checkpoint(straight_dir / "checkpoint.pt")
    assert resumed["counters"] == straight["counters"] == {"step": 4 * target, "epoch": target}
    assert resumed["config"]["compile"] == "auto" and resumed["config"]["compiled"] is False  # the default
    _assert_bitwise(resumed["params"], straight["params"])
    _assert_bitwise(resumed["module"], straight["module"])
    assert resumed["history"]["losses"] == straight["history"]["losses"]
    assert resumed["history"]["epoch_losses"] == straight["history"]["epoch_losses"]
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]


def _gauss_fit(model, x, tmp, **kw):
    kw = {"batch_size": 32, "lr": 0.02, "progress": False, "seed": 7, **kw}
    return lvm_pyro.fit(model, x, checkpoint_dir=tmp, **kw)


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(100, 2, generator=g) * 1.4, torch.randn(30, 2, generator=g) * 1.4


def test_steps_ending_mid_epoch_with_val_data_resume_exactly(tmp_path):
    x, val = _data()  # 3 steps an epoch
    pyro.clear_param_store()
    straight = LocalGaussian(2, learn_w=True)
    full = lvm_pyro.fit(straight, x, val_data=val, steps=11, batch_size=32, lr=0.02, progress=False, seed=7)
    pyro.clear_param_store()
    _gauss_fit(LocalGaussian(2, learn_w=True), x, tmp_path, val_data=val, steps=5)  # ends inside epoch 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"] == {"step": 5, "epoch": 1}
    pyro.clear_param_store()
    resumed = LocalGaussian(2, learn_w=True)
    again = _gauss_fit(resumed, x, tmp_path, val_data=val, steps=11, resume=True)
    _assert_bitwise(_state(resumed), _state(straight))
    assert again.losses == full.losses and again.val_elbo == full.val_elbo
    # 3 whole epochs and the partial fourth: no split epoch from the interruption at step 5
    assert len(again.epoch_losses) == 4 and again.epoch_losses == full.epoch_losses
    assert again.partial_epoch and again.epochs == 3


class _StopAt(Callback):
    key = "stop"

    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            state.stop, state.stop_reason = True, f"stopped at {self.step}"


def test_a_callback_stopping_mid_epoch_leaves_a_final_checkpoint(tmp_path):
    x, _ = _data()
    pyro.clear_param_store()
    model = LocalGaussian(2, learn_w=True)
    result = _gauss_fit(model, x, tmp_path, epochs=5, callbacks=[_StopAt(7)])
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert result.steps == 7 and ckpt["counters"] == {"step": 7, "epoch": 2}
    _assert_bitwise({k: v for k, v in ckpt["module"].items()}, _state(model))


def test_resume_with_a_new_lr_uses_it(tmp_path):
    x, _ = _data()
    pyro.clear_param_store()
    _gauss_fit(LocalGaussian(2, learn_w=True), x, tmp_path, epochs=2)
    lrs = []

    class Rec(Callback):
        def on_step_start(self, state):
            lrs.append(state.optimizer.param_groups[0]["lr"])

    pyro.clear_param_store()
    result = _gauss_fit(LocalGaussian(2, learn_w=True), x, tmp_path, epochs=4, lr=0.002, resume=True,
                        callbacks=[Rec()])
    assert lrs == [0.002] * 6
    assert result.config["lr"] == 0.002 and result.config["resume_changed"] == {"lr": [0.02, 0.002]}


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(model=lambda: LocalGaussian(3, learn_w=True), data=lambda x: torch.cat([x, x[:, :1]], 1)),
         r"model parameters differ.*\[2\] in the checkpoint, \[3\] now"),
        (dict(optimizer="sgd"), r"optimizer='torch.optim.adam.Adam' in the checkpoint.*SGD"),
        (dict(estimator="iwae"), r"estimator='reparam' in the checkpoint, estimator='iwae' now"),
        (dict(num_particles=3), r"num_particles=1 in the checkpoint, num_particles=3 now"),
        (dict(data_plate="rows", batch_size=100), r"(?s)batch_size=32.*data_plate='data' in the checkpoint"),
        (dict(kl_warmup=3), r"kl_warmup=0.0 in the checkpoint, kl_warmup=3.0 now"),
    ],
    ids=["model", "optimizer", "estimator", "num_particles", "plate-and-batch", "kl_warmup"],
)
def test_resume_refuses_what_may_not_change_and_lists_it(tmp_path, change, expected):
    x, _ = _data()
    pyro.clear_param_store()
    _gauss_fit(LocalGaussian(2, learn_w=True), x, tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    change = dict(change)
    model = change.pop("model", lambda: LocalGaussian(2, learn_w=True))()
    data = change.pop("data", lambda x: x)(x)
    pyro.clear_param_store()
    with pytest.raises(errors.CheckpointError, match=expected) as info:
        _gauss_fit(model, data, tmp_path, epochs=2, resume=True, **change)
    assert "may not change" in str(info.value) and "new checkpoint_dir" in str(info.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # refused before writing anything


def test_a_second_concurrent_writer_is_refused_at_once(tmp_path):
    x, _ = _data()
    with RunLock(tmp_path):  # another process (or fit) writing to this directory
        with pytest.raises(errors.CheckpointError, match="another process is writing"):
            _gauss_fit(LocalGaussian(2), x, tmp_path, epochs=1)
        assert not (tmp_path / "checkpoint.pt").exists()
    _gauss_fit(LocalGaussian(2), x, tmp_path, epochs=1)  # the lock is released with its holder


LOCK_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import lvm_pyro
    from lvm_pyro.infer.callbacks import Callback
    from models_for_tests import LocalGaussian

    class Slow(Callback):
        def on_epoch_end(self, state):
            time.sleep(0.2)

    lvm_pyro.fit(LocalGaussian(2), torch.randn(64, 2), epochs=500, batch_size=32, progress=False,
                 checkpoint_dir=sys.argv[1], callbacks=[Slow()])
    """
)


def test_two_processes_on_one_directory_the_second_gets_a_checkpoint_error(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(LOCK_SCRIPT.format(tests=str(TESTS)))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "checkpoint.pt").exists():
            time.sleep(0.05)
        assert (run_dir / "checkpoint.pt").exists()
        x, _ = _data()
        with pytest.raises(errors.CheckpointError, match="another process is writing"):
            _gauss_fit(LocalGaussian(2), x, run_dir, epochs=1, resume=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = load_checkpoint(run_dir / "checkpoint.pt")["counters"]["step"]
    assert step >= 2  # the first writer's checkpoint, untouched by the refused second one


def test_a_new_run_does_not_overwrite_another_runs_checkpoint(tmp_path):
    x, _ = _data()
    _gauss_fit(LocalGaussian(2), x, tmp_path, epochs=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / ".checkpoint.pt.abc.tmp").write_bytes(b"left by a killed writer")
    with pytest.raises(errors.CheckpointError, match="resume=True.*new \\(or empty\\) checkpoint_dir"):
        _gauss_fit(LocalGaussian(2), x, tmp_path, epochs=1)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / ".checkpoint.pt.abc.tmp").exists()  # stray temporary file cleaned up


def test_reordered_callbacks_resume_their_own_states(tmp_path):
    x, val = _data()

    def callbacks():
        return [LRScheduler(lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5)), EarlyStopping(patience=50)]

    pyro.clear_param_store()
    straight = LocalGaussian(2, learn_w=True)
    cbs = callbacks()
    full = lvm_pyro.fit(straight, x, val_data=val, epochs=4, batch_size=32, lr=0.02, progress=False, seed=7,
                        callbacks=cbs)
    pyro.clear_param_store()
    _gauss_fit(LocalGaussian(2, learn_w=True), x, tmp_path, val_data=val, epochs=2, callbacks=callbacks())
    pyro.clear_param_store()
    resumed = LocalGaussian(2, learn_w=True)
    swapped = callbacks()[::-1]
    again = _gauss_fit(resumed, x, tmp_path, val_data=val, epochs=4, resume=True, callbacks=swapped)
    _assert_bitwise(_state(resumed), _state(straight))
    assert again.losses == full.losses
    assert swapped[1].scheduler.get_last_lr() == pytest.approx([0.02 / 16])
    assert swapped[0].best == cbs[1].best and swapped[0].best_epoch == cbs[1].best_epoch


def test_short_run_inside_the_kl_warmup_warns_and_records_beta():
    x = _binary()
    pyro.clear_param_store()
    with pytest.warns(KLWarmupWarning, match=r"2 epochs into a 10-epoch KL warm-up.*8 more epochs"):
        result = lvm_pyro.fit(_vae(), x, epochs=2, batch_size=32, kl_warmup=10, progress=False, seed=0)
    assert result.betas == pytest.approx([i / 30 for i in range(6)])
    assert result.epoch_betas == pytest.approx([1 / 30, 4 / 30])
    assert result.objective.startswith("annealed -ELBO")
    pyro.clear_param_store()
    plain = lvm_pyro.fit(_vae(), x, epochs=1, batch_size=32, kl_warmup=0, progress=False, seed=0)
    assert plain.objective == "-ELBO" and plain.betas == [1.0] * 3


def test_validation_never_shifts_the_training_noise():
    x, val = _data()
    runs = []
    for held_out in (None, val):
        pyro.clear_param_store()
        model = LocalGaussian(2, learn_w=True)
        result = lvm_pyro.fit(model, x, val_data=held_out, epochs=3, batch_size=32, lr=0.02, progress=False,
                              seed=7)
        runs.append((result, _state(model)))
    (plain, a), (validated, b) = runs
    assert plain.losses == validated.losses and len(validated.val_elbo) == 3
    _assert_bitwise(a, b)
