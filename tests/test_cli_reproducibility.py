"""The command line reproduces a run: the same seed gives byte-identical metrics.json and
weights, and kill -9 then ``lvm-pyro resume`` ends on the parameters of an uninterrupted run,
bit for bit, with default settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lvm_pyro import cli
from lvm_pyro.infer.checkpoint import load_checkpoint


def _fit(out: Path, name: str, *extra: str) -> Path:
    argv = ["fit", "vae", "--data", "digits", "--seed", "0", "--out", str(out), "--name", name,
            "--quiet", "--num-samples", "10", *extra]
    assert cli.main(argv) == 0
    return out / name


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "model.pt")["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"parameters differ between {a.name} and {b.name}: {differ}"


def test_the_same_seed_gives_identical_metrics_and_weights(tmp_path):
    first = _fit(tmp_path, "first", "--epochs", "2")
    second = _fit(tmp_path, "second", "--epochs", "2")
    # metrics.json holds no timing (that is timing.json), so the whole file must match
    assert (first / "metrics.json").read_bytes() == (second / "metrics.json").read_bytes()
    _assert_same_weights(first, second)
    assert (first / "timing.json").is_file()


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    epochs = "6"
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lvm_pyro.cli", "fit", "vae", "--data", "digits", "--seed", "0",
               "--epochs", epochs, "--out", str(tmp_path), "--name", "killed", "--quiet",
               "--num-samples", "10"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 600
        while not (killed / "checkpoint.pt").exists():
            assert proc.poll() is None, f"the run ended before its first checkpoint: {log.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = load_checkpoint(killed / "checkpoint.pt")["counters"]
    assert not (killed / "model.pt").exists(), "killed after it finished: the test proves nothing"
    assert cli.main(["resume", str(killed), "--quiet", "--num-samples", "10"]) == 0
    whole = _fit(tmp_path, "whole", "--epochs", epochs)
    _assert_same_weights(killed, whole)
    resumed, uninterrupted = (load_checkpoint(r / "checkpoint.pt") for r in (killed, whole))
    assert resumed["history"] == uninterrupted["history"], f"killed at {done}"
    assert not list(killed.glob(".*.tmp")), "temporary files left in the run"
