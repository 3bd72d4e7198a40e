"""Checkpoints: atomic writes, weights-only reads, exact resume, recovery after SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyro
import pytest
import torch
from models_for_tests import LocalGaussian

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.infer.callbacks import Callback, EarlyStopping
from lvm_pyro.infer.checkpoint import RunLock, load_checkpoint, save_checkpoint

TESTS = Path(__file__).parent


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(100, 2, generator=g) * 1.4, torch.randn(30, 2, generator=g) * 1.4


def _fit(model, x, val, epochs, **kw):
    return lvm_pyro.fit(model, x, val_data=val, epochs=epochs, batch_size=32, lr=0.02,
                        objective="reparam", progress=False, seed=7, jit=False, **kw)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_plus_two_epochs_equal_four(tmp_path):
    x, val = _data()
    straight = LocalGaussian(2, learn_w=True)
    full = _fit(straight, x, val, 4, callbacks=[EarlyStopping(patience=50)])

    pyro.clear_param_store()
    first = LocalGaussian(2, learn_w=True)
    _fit(first, x, val, 2, checkpoint_dir=tmp_path, callbacks=[EarlyStopping(patience=50)])
    pyro.clear_param_store()
    resumed = LocalGaussian(2, learn_w=True)
    again = lvm_pyro.fit(resumed, x, val_data=val, epochs=4, batch_size=32, lr=0.02, progress=False,
                         seed=7, checkpoint_dir=tmp_path, resume=True, jit=False,
                         callbacks=[EarlyStopping(patience=50)])
    for name, value in _params(straight).items():
        torch.testing.assert_close(_params(resumed)[name], value, rtol=0, atol=0)
    assert again.losses == full.losses
    assert again.val_elbo == full.val_elbo and again.epochs == 4


def test_resume_refuses_different_settings(tmp_path):
    x, val = _data()
    _fit(LocalGaussian(2), x, val, 1, checkpoint_dir=tmp_path)
    with pytest.raises(errors.CheckpointError, match="batch_size=32"):
        lvm_pyro.fit(LocalGaussian(2), x, epochs=2, batch_size=16, progress=False,
                     checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "lvm_pyro.checkpoint/1", "evil": EarlyStopping()}, path)
    with pytest.raises(errors.CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(errors.CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})

    def crash(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    import lvm_pyro
    from lvm_pyro.infer.callbacks import Callback
    from models_for_tests import LocalGaussian

    class Slow(Callback):
        def on_epoch_end(self, state):
            time.sleep(0.2)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 2, generator=g) * 1.4
    lvm_pyro.fit(LocalGaussian(2, learn_w=True), x, epochs=int(sys.argv[2]), batch_size=32, lr=0.02,
                 progress=False, seed=7, checkpoint_dir=sys.argv[1], resume=sys.argv[3] == "1",
                 callbacks=[Slow()])
    """
)


def test_sigkill_during_training_resumes_from_last_checkpoint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), "200", "0"])
    ckpt = run_dir / "checkpoint.pt"
    deadline = time.time() + 600  # generous: a loaded machine imports torch slowly
    while time.time() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["counters"]["epoch"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["counters"]["epoch"]
    assert 3 <= killed_at < 200
    assert not [p for p in os.listdir(run_dir) if p.endswith(".tmp")]

    target = killed_at + 2
    subprocess.run([sys.executable, str(script), str(run_dir), str(target), "1"], check=True)
    resumed = load_checkpoint(ckpt)
    straight_dir = tmp_path / "straight"
    subprocess.run([sys.executable, str(script), str(straight_dir), str(target), "0"], check=True)
    straight = load_checkpoint(straight_dir / "checkpoint.pt")
    assert resumed["counters"] == straight["counters"]
    # the compiled loss's path is chosen by a fixed rule, not by timing: bit for bit
    for name, value in straight["params"].items():
        torch.testing.assert_close(resumed["params"][name], value, rtol=0, atol=0)


def test_a_refused_pickle_does_not_pass_on_torchs_unsafe_advice(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "lvm_pyro.checkpoint/2", "evil": EarlyStopping()}, path)
    with pytest.raises(errors.CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "not a checkpoint lvm_pyro wrote" in message and "unsafe" in message
    assert "weights_only=False" not in message and "trust" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # nor in a chained traceback


def test_the_lock_is_released_when_fit_fails(tmp_path):
    x, _ = _data()
    flag = {"nan": False}

    def model(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", len(x)):
            pyro.sample("x", pyro.distributions.Normal(loc + (math.nan if flag["nan"] else 0.0), 1.0),
                        obs=x[:, 0])

    class Poison(Callback):
        def on_step_end(self, state):
            flag["nan"] = True

    with pytest.raises(errors.DivergenceError, match="step 2"):
        lvm_pyro.fit((model, lambda x: None), x, steps=3, progress=False, checkpoint_dir=tmp_path, jit=False,
                     callbacks=[Poison()])
    RunLock(tmp_path).acquire().release()  # free again: no process holds it
    assert load_checkpoint(tmp_path / "checkpoint.pt")["counters"]["step"] == 1


def test_resume_of_a_finished_run_returns_its_history(tmp_path):
    x, val = _data()
    first = _fit(LocalGaussian(2), x, val, 2, checkpoint_dir=tmp_path)
    pyro.clear_param_store()
    again = _fit(LocalGaussian(2), x, val, 2, checkpoint_dir=tmp_path, resume=True)
    assert again.losses == first.losses and again.epoch_losses == first.epoch_losses
    assert again.val_elbo == first.val_elbo and again.steps == first.steps == 6
