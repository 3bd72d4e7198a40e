"""Bad command lines: every one exits with status 2 and one line naming the fix, never a
traceback, never a silent accept, and a refused ``fit`` leaves no run folder behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from harness import run_cli

from lvm_pyro.cli import run_lock

VAE_CONFIG = {"model": "vae", "data": "digits", "labels": None, "seed": 0, "binarize": None,
              "options": {"hidden": [8], "latent_dim": 2}, "overrides": {}}


def _run_dir(root: Path, name: str, config, files: dict[str, bytes] | None = None) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    for fname, raw in (files or {}).items():
        (d / fname).write_bytes(raw)
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data files and damaged run directories the cases point at (written once, read only)."""
    root = tmp_path_factory.mktemp("bad_cli")
    rng = np.random.default_rng(0)
    unit = rng.random((30, 4))
    np.save(root / "unit.npy", unit)
    nan = unit.copy()
    nan[4, 1] = np.nan
    np.save(root / "nan.npy", nan)
    np.savetxt(root / "std.csv", rng.standard_normal((30, 3)), delimiter=",")
    (root / "strings.csv").write_text("a,b\nc,d\ne,f\n")
    (root / "ragged.csv").write_text("1,2\n3\n4,5\n")
    (root / "empty.csv").write_text("")
    (root / "inf.csv").write_text("1,2\n3,inf\n")
    np.save(root / "three.npy", rng.random((3, 4)))
    np.save(root / "strings.npy", np.array([["a", "b"]] * 8))
    (root / "notes.json").write_text("{}")
    (root / "idx-bad").write_bytes(b"\0\0\x07\x01" + b"\0" * 8)
    np.save(root / "labels2d.npy", np.zeros((30, 2)))
    (root / "a-file").write_text("x")
    runs = root / "runs"
    runs.mkdir()
    _run_dir(runs, "taken", VAE_CONFIG)
    _run_dir(runs, "corrupt", "{not json")
    _run_dir(runs, "listconfig", "[1, 2]")
    _run_dir(runs, "noseed", {k: v for k, v in VAE_CONFIG.items() if k != "seed"})
    _run_dir(runs, "badseed", {**VAE_CONFIG, "seed": -4})
    _run_dir(runs, "unknownmodel", {**VAE_CONFIG, "model": "nosuchmodel"})
    _run_dir(runs, "emrun", {**VAE_CONFIG, "model": "gmm", "options": {}})
    _run_dir(runs, "nockpt", VAE_CONFIG)
    _run_dir(runs, "badckpt", VAE_CONFIG, {"checkpoint.pt": b"not a checkpoint"})
    _run_dir(runs, "badweights", VAE_CONFIG, {"model.pt": b"\x80\x02garbage"})
    _run_dir(runs, "missingdata", {**VAE_CONFIG, "data": str(root / "gone.npy")})
    _run_dir(runs, "badoptions", {**VAE_CONFIG, "options": {"colour": 3}})
    locked = _run_dir(runs, "locked", VAE_CONFIG, {"checkpoint.pt": b"x"})
    lock = run_lock(locked).acquire()
    yield root
    lock.release()


def fit(*extra: str) -> callable:
    return lambda w: ["fit", *extra]


# (id, argv given the world folder w, regex the one-line message matches)
TABLE = [
    # the model and its options
    ("unknown-model", fit("nosuchmodel"), r"unknown model 'nosuchmodel'; available models:.*vae"),
    ("option-without-value", fit("vae", "--option", "latent_dim"), r"--option takes key=value"),
    ("option-empty-key", fit("vae", "--option", "=3"), r"--option takes key=value"),
    ("option-bad-key", fit("vae", "--option", "latent-dim=3"), r"not an option name"),
    ("option-twice", fit("vae", "--option", "latent_dim=3", "--option", "latent_dim=4"), r"given twice"),
    ("option-object", fit("mixvae", "--option", "prior=GMMPrior()"), r"not a literal.*Python API"),
    ("option-empty-value", fit("vae", "--option", "latent_dim="), r"not a literal"),
    ("option-unknown-key", fit("vae", "--option", "colour=3"), r"bad --option for model 'vae'.*colour"),
    ("option-unknown-lists-valid", fit("hvae", "--option", "latent_dim=3"),
     r"unknown option\(s\) latent_dim; valid: latent_dims, hidden, layer_hidden, guide"),
    ("option-negative-latent", fit("vae", "--option", "latent_dim=-1"), r"latent_dim must be a positive"),
    ("option-string-latent", fit("vae", "--option", "latent_dim=abc"), r"latent_dim must be a positive"),
    ("option-bad-hidden", fit("vae", "--option", "hidden=(-5,)"), r"layer size must be a positive"),
    ("option-unknown-likelihood", fit("vae", "--option", "likelihood=poisson"), r"unknown likelihood"),
    ("option-negative-scale", fit("vae", "--option", "likelihood=gaussian", "--option", "gaussian_scale=-1"),
     r"gaussian_scale=-1"),
    ("option-wrong-type", fit("vae", "--option", "activation=relu"), r"activation|bad --option"),
    ("option-gmm-zero-components", fit("gmm", "--option", "n_components=0"), r"n_components must be"),
    ("option-gmm-covariance", fit("gmm", "--option", "covariance_type=foo"), r"covariance_type must be"),
    ("option-gmm-too-many-components", fit("gmm", "--option", "n_components=5000"),
     r"n_components=5000 is larger than the number of points"),
    # training flags
    ("em-epochs", fit("gmm", "--epochs", "1"), r"trained by EM, which takes no --epochs: drop it"),
    ("em-lr", fit("gmm", "--lr", "0.1"), r"trained by EM, which takes no --lr"),
    ("em-kl-warmup", fit("gmm", "--kl-warmup", "3"), r"takes no --kl-warmup"),
    ("lr-negative", fit("vae", "--lr", "-1"), r"argument --lr: -1 is not > 0"),
    ("lr-zero", fit("vae", "--lr", "0"), r"argument --lr: 0 is not > 0"),
    ("lr-nan", fit("vae", "--lr", "nan"), r"argument --lr: 'nan' is not a finite number"),
    ("lr-word", fit("vae", "--lr", "fast"), r"argument --lr: 'fast' is not a number"),
    ("epochs-negative", fit("vae", "--epochs", "-3"), r"argument --epochs: -3 is below 1"),
    ("epochs-zero", fit("vae", "--epochs", "0"), r"argument --epochs: 0 is below 1"),
    ("epochs-float", fit("vae", "--epochs", "2.5"), r"argument --epochs: '2.5' is not a whole number"),
    ("steps-zero", fit("vae", "--steps", "0"), r"argument --steps"),
    ("epochs-and-steps", fit("vae", "--epochs", "2", "--steps", "3"), r"pass --epochs or --steps, not both"),
    ("batch-size-zero", fit("vae", "--batch-size", "0"), r"argument --batch-size: 0 is below 1"),
    ("batch-size-negative", fit("vae", "--batch-size", "-64"), r"argument --batch-size"),
    ("seed-negative", fit("vae", "--seed", "-1"), r"argument --seed: -1 is outside 0\.\.4294967295"),
    ("seed-huge", fit("vae", "--seed", str(2**40)), r"argument --seed: .* is outside"),
    ("seed-word", fit("vae", "--seed", "zero"), r"argument --seed: 'zero' is not a whole number"),
    ("kl-warmup-negative", fit("vae", "--kl-warmup", "-5"), r"argument --kl-warmup: -5 is negative"),
    ("kl-warmup-nan", fit("vae", "--kl-warmup", "nan"), r"argument --kl-warmup: 'nan' is not a finite"),
    ("num-samples-zero", fit("vae", "--num-samples", "0"), r"argument --num-samples"),
    ("estimator-unknown", fit("vae", "--estimator", "magic"), r"invalid choice: 'magic'"),
    ("objective-unknown", fit("vae", "--objective", "magic"), r"--objective: invalid choice: 'magic'"),
    ("estimator-and-objective-differ", fit("vae", "--estimator", "score", "--objective", "iwae"),
     r"--estimator is the old name of --objective"),
    ("device-unknown", fit("vae", "--device", "banana"), r"unknown device 'banana'"),
    ("device-no-cuda", fit("vae", "--device", "cuda:0"), r"CUDA is not available"),
    ("flag-unknown", fit("vae", "--epoch", "3", "--colour"), r"unrecognized arguments"),
    ("no-command", lambda w: [], r"required: command"),
    # the data
    ("data-missing", fit("vae", "--data", "/no/such/file.npy"), r"/no/such/file\.npy: no such file"),
    ("data-nan-npy", lambda w: ["fit", "vae", "--data", str(w / "nan.npy")], r"NaN.*row 4, column 1"),
    ("data-inf-csv", lambda w: ["fit", "vae", "--data", str(w / "inf.csv")], r"inf\).*row 1, column 1"),
    ("data-strings-csv", lambda w: ["fit", "vae", "--data", str(w / "strings.csv")],
     r"cannot be parsed as numbers"),
    ("data-strings-npy", lambda w: ["fit", "vae", "--data", str(w / "strings.npy")], r"save numeric data"),
    ("data-ragged-csv", lambda w: ["fit", "vae", "--data", str(w / "ragged.csv")], r"same number of numeric"),
    ("data-empty-csv", lambda w: ["fit", "vae", "--data", str(w / "empty.csv")], r"no data rows"),
    ("data-unknown-type", lambda w: ["fit", "vae", "--data", str(w / "notes.json")], r"unknown file type"),
    ("data-bad-idx", lambda w: ["fit", "vae", "--data", str(w / "idx-bad")], r"not an IDX file"),
    ("data-a-folder", lambda w: ["fit", "vae", "--data", str(w)], r"is a directory"),
    ("data-too-few", lambda w: ["fit", "vae", "--data", str(w / "three.npy")], r"at least 6 examples"),
    ("binarize-above-range", lambda w: ["fit", "vae", "--data", str(w / "unit.npy"), "--binarize", "2"],
     r"every value of unit\.npy 0 .*pass a threshold"),
    ("binarize-below-range", lambda w: ["fit", "vae", "--data", str(w / "unit.npy"), "--binarize", "-1"],
     r"every value of unit\.npy 1"),
    ("binarize-digits-17", fit("vae", "--binarize", "17"), r"pixel level in \(0, 16\]"),
    ("binarize-word", fit("vae", "--binarize", "half"), r"neither a number nor 'none'"),
    ("bernoulli-on-real-data", lambda w: ["fit", "vae", "--data", str(w / "std.csv"), "--option",
                                          "likelihood=bernoulli"], r"needs data of 0s and 1s.*--binarize T"),
    ("categorical-on-real-data", lambda w: ["fit", "hvae", "--data", str(w / "std.csv"), "--option",
                                            "likelihood=categorical"], r"integer levels.*gaussian"),
    ("labels-for-digits", lambda w: ["fit", "vae", "--labels", str(w / "unit.npy")], r"their own labels"),
    ("labels-wrong-shape", lambda w: ["fit", "vae", "--data", str(w / "unit.npy"), "--labels",
                                      str(w / "labels2d.npy")], r"one integer label per example"),
    ("labels-needed", lambda w: ["fit", "cvae-label", "--data", str(w / "unit.npy")], r"needs labels"),
    # run directories
    ("name-with-slash", fit("vae", "--name", "a/b"), r"not a plain folder name"),
    ("name-hidden", fit("vae", "--name", ".secret"), r"not a plain folder name"),
    ("name-taken", lambda w: ["fit", "vae", "--out", str(w / "runs"), "--name", "taken"],
     r"exists: pass another --name, or `lvm-pyro resume` it"),
    ("out-is-a-file", lambda w: ["fit", "vae", "--out", str(w / "a-file"), "--name", "r"], r"is a file"),
    ("resume-missing", lambda w: ["resume", str(w / "runs" / "nothing")], r"is not a run directory"),
    ("resume-corrupt-config", lambda w: ["resume", str(w / "runs" / "corrupt")],
     r"config\.json' is damaged .*not valid JSON"),
    ("resume-config-not-object", lambda w: ["resume", str(w / "runs" / "listconfig")], r"not a JSON object"),
    ("resume-config-no-seed", lambda w: ["resume", str(w / "runs" / "noseed")], r"'seed' missing"),
    ("resume-config-bad-seed", lambda w: ["resume", str(w / "runs" / "badseed")], r"seed -4 out of range"),
    ("resume-unknown-model", lambda w: ["resume", str(w / "runs" / "unknownmodel")], r"unknown model"),
    ("resume-em-run", lambda w: ["resume", str(w / "runs" / "emrun")], r"EM runs are not resumable"),
    ("resume-no-checkpoint", lambda w: ["resume", str(w / "runs" / "nockpt")], r"holds no checkpoint\.pt"),
    ("resume-garbage-checkpoint", lambda w: ["resume", str(w / "runs" / "badckpt"), "--quiet"],
     r"not a readable checkpoint"),
    ("resume-locked", lambda w: ["resume", str(w / "runs" / "locked")], r"in use by another lvm-pyro"),
    ("resume-lr-negative", lambda w: ["resume", str(w / "runs" / "nockpt"), "--lr", "-1"], r"argument --lr"),
    ("resume-epochs-and-steps", lambda w: ["resume", str(w / "runs" / "badckpt"), "--epochs", "3", "--steps",
                                           "4"], r"not both"),
    ("evaluate-missing-data", lambda w: ["evaluate", str(w / "runs" / "missingdata")], r"gone\.npy: no such"),
    ("evaluate-bad-options", lambda w: ["evaluate", str(w / "runs" / "badoptions")], r"bad --option.*colour"),
    ("evaluate-missing", lambda w: ["evaluate", "/no/such/run"], r"is not a run directory"),
    ("evaluate-corrupt-config", lambda w: ["evaluate", str(w / "runs" / "corrupt")], r"not valid JSON"),
    ("evaluate-untrained", lambda w: ["evaluate", str(w / "runs" / "nockpt")],
     r"holds no trained model.*lvm-pyro resume"),
    ("evaluate-garbage-weights", lambda w: ["evaluate", str(w / "runs" / "badweights")],
     r"not a readable checkpoint"),
    ("evaluate-num-samples", lambda w: ["evaluate", str(w / "runs" / "nockpt"), "--num-samples", "-2"],
     r"argument --num-samples"),
    ("sample-missing", lambda w: ["sample", "/no/such/run"], r"is not a run directory"),
    ("sample-n-zero", lambda w: ["sample", str(w / "runs" / "nockpt"), "--n", "0"], r"argument --n: 0"),
    ("sample-seed-negative", lambda w: ["sample", str(w / "runs" / "nockpt"), "--seed", "-3"], r"--seed"),
    ("sample-output-suffix", lambda w: ["sample", str(w / "runs" / "nockpt"), "--output", str(w / "s.png")],
     r"ending in \.npy"),
    ("sample-output-folder", lambda w: ["sample", str(w / "runs" / "nockpt"), "--output", "/no/dir/s.npy"],
     r"does not exist"),
    ("run-bad-kl-warmup", lambda w: ["run", "--kl-warmup", "-1"], r"argument --kl-warmup"),
    ("run-seed-negative", lambda w: ["run", "--seed", "-1"], r"argument --seed"),
]


@pytest.mark.parametrize("case_id, make_argv, match", TABLE, ids=[row[0] for row in TABLE])
def test_bad_command_line_is_refused(case_id, make_argv, match, world, tmp_path):
    argv = make_argv(world)
    if argv and argv[0] in ("fit", "run") and "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "runs"), "--quiet"]
    before = sorted(p.name for p in (world / "runs").iterdir())
    code, out, err = run_cli(argv)
    assert code == 2, f"{case_id}: exit {code}\n{out}\n{err}"
    assert "Traceback" not in out + err, f"{case_id}: printed a traceback\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{case_id}: the error is not one line: {err!r}"
    assert re.search(match, lines[0], re.I), f"{case_id}: {lines[0]!r} does not match {match!r}"
    # nothing left behind: no new run folder, nothing added to the existing runs
    new_runs = tmp_path / "runs"
    assert not new_runs.exists() or not any(new_runs.iterdir()), f"{case_id}: left {list(new_runs.iterdir())}"
    assert sorted(p.name for p in (world / "runs").iterdir()) == before
    for run in (world / "runs").iterdir():
        assert not list(run.glob(".*.tmp")), f"{case_id}: temporary files left in {run}"


def test_the_table_is_big_enough():
    assert len(TABLE) >= 40
