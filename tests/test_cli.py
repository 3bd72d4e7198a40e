"""The command line: help, info, models, fit on a registered model, one-line errors."""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import pyro_method
from test_report import check_story

from lvm_pyro import LatentVariableModel, cli, errors
from lvm_pyro.diagnostics.arviz import from_netcdf, group
from lvm_pyro.models.registry import register_model


class TinyFactor(LatentVariableModel):
    """One latent factor: z ~ N(0, 1), x | z ~ N(w z + b, s^2); amortized linear guide."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.input_shape = (dim,)
        self.w = torch.nn.Parameter(0.1 * torch.ones(dim))
        self.b = torch.nn.Parameter(torch.zeros(dim))
        self.enc = torch.nn.Linear(dim, 2)
        self.scale = scale

    @pyro_method
    def model(self, x):
        with self.data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[:-1]), 1.0))
            pyro.sample("x", dist.Normal(self.w * z[..., None] + self.b, self.scale).to_event(1), obs=x)

    @pyro_method
    def guide(self, x):
        loc, log_scale = self.enc(x).unbind(-1)
        with self.data_plate(x):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()))


    @torch.no_grad()
    def sample(self, n):
        z = self.w.new_empty(n).normal_()
        return self.w * z[:, None] + self.b + self.scale * torch.randn(n, self.w.shape[0])


register_model(
    "tinyfactor",
    lambda data, scale=1.0: TinyFactor(data.event_shape[0], scale),
    description="a one-factor model used by the CLI tests",
    fit_options={"epochs": 2, "batch_size": 128},
)


def _images_in(report: Path) -> list[np.ndarray]:
    found = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", report.read_text())
    return [plt.imread(io.BytesIO(base64.b64decode(b)), format="png") for b in found]


def test_fit_writes_a_complete_run_directory(tmp_path, capsys):
    code = cli.main(["fit", "tinyfactor", "--data", "digits", "--out", str(tmp_path), "--name", "r",
                     "--quiet", "--option", "scale=0.5", "--num-samples", "20"])
    assert code == 0
    run = tmp_path / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 2 * (1197 // 128)
    assert metrics["test_elbo"] <= metrics["test_log_likelihood"] + 3 * metrics["test_log_likelihood_se"]
    assert config["options"] == {"scale": 0.5} and config["model"] == "tinyfactor"
    for name in ("checkpoint.pt", "model.pt", "inference_data.nc", "report.html"):
        assert (run / name).is_file(), name
    assert group(from_netcdf(run / "inference_data.nc"), "log_likelihood")["x"].shape[-1] == 300
    images = _images_in(run / "report.html")
    assert len(images) == len(list((run / "figures").glob("*.png"))) == 2  # loss, samples
    assert all(img.std() > 0.01 for img in images)
    assert "test log-likelihood" in capsys.readouterr().out
    # evaluate and sample read the run back; resume continues it
    assert cli.main(["evaluate", str(run), "--num-samples", "20"]) == 0
    assert "test_log_likelihood" in capsys.readouterr().out
    assert cli.main(["sample", str(run), "--n", "5", "--output", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (5, 64)
    assert cli.main(["resume", str(run), "--epochs", "3", "--quiet", "--num-samples", "20"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    # the same name again is refused
    assert cli.main(["fit", "tinyfactor", "--out", str(tmp_path), "--name", "r", "--quiet"]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "nosuchmodel"], "unknown model 'nosuchmodel'; available models:"),
        (["fit", "tinyfactor", "--data", "/no/such/file.npy"], "/no/such/file.npy"),
        (["fit", "tinyfactor", "--option", "novalue"], "--option takes key=value"),
        (["fit", "tinyfactor", "--option", "colour=3"], "bad --option for model 'tinyfactor'"),
        (["evaluate", "/no/such/run"], "is not a run directory"),
        (["sample", "/no/such/run"], "is not a run directory"),
        (["resume", "/no/such/run"], "is not a run directory"),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys):
    if argv[0] == "fit":
        argv = [*argv, "--out", str(tmp_path), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_console_script_help_and_info():
    out = subprocess.run([sys.executable, "-m", "lvm_pyro.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "fit" in out and "info" in out
    out = subprocess.run([sys.executable, "-m", "lvm_pyro.cli", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert "torch" in out and "device" in out and "cpu" in out


def test_models_lists_registered_models(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tinyfactor" in out
    # each model's options with their defaults, and its training defaults
    block = out[out.index("\nvae:") + 1:].split("\n")[1:3]
    assert block[0].strip().startswith("options: latent_dim=16, hidden=(256, 256)")
    assert "encoder='diag'" in block[0]
    assert "input_shape" not in block[0]  # set from the data, not an option
    assert block[1].strip() == ("training (fit): epochs=300, batch_size=64, lr=0.001, objective=reparam, "
                                "kl_warmup=100")
    assert "options: scale=1.0" in out[out.index("tinyfactor:"):]
    assert "objective=score" in out[out.index("sbn:"):] and "training (em): max_iter=200" in out


def _help(*command: str) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit) as stop, contextlib.redirect_stdout(out):
        cli.build_parser().parse_args([*command, "--help"])
    assert stop.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("command", ["run", "fit", "resume", "evaluate", "sample"])
def test_every_flag_has_help_and_a_default(command):
    text = _help(command)
    flags = [a for a in cli.build_parser()._subparsers._group_actions[0].choices[command]._actions
             if a.option_strings and a.help != "==SUPPRESS==" and a.dest != "help"]
    assert flags
    for action in flags:
        assert action.help and len(action.help.split()) >= 3, action.option_strings
        if action.nargs != 0:  # a flag with a value says its default
            assert "default" in cli._HelpFormatter("x")._get_help_string(action), action.option_strings
    if command == "fit":
        for flag in ("--objective", "--epochs", "--lr", "--batch-size", "--steps"):
            assert flag in text
        assert "(default: the model's, 300 for the VAEs)" in " ".join(text.split())
        assert "--estimator" not in text  # the old name: hidden, still accepted


def test_the_old_estimator_flag_is_accepted_with_a_warning(tmp_path, capsys):
    args = cli.build_parser().parse_args(["fit", "vae", "--estimator", "score"])
    cli._objective_alias(args)
    assert args.objective == "score" and "--estimator is deprecated" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["fit", "vae", "--estimator", "score", "--objective", "iwae"])
    with pytest.raises(errors.ConfigurationError, match="old name of --objective"):
        cli._objective_alias(args)
    assert cli._fit_keywords({"estimator": "score", "epochs": 1}).keys() == {
        "objective" if "objective" in inspect.signature(cli.fit).parameters else "estimator",
        "epochs"}


def test_an_unknown_option_lists_the_valid_ones(tmp_path, capsys):
    assert cli.main(["fit", "vae", "--out", str(tmp_path), "--quiet", "--option", "latent=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown option(s) latent" in err and "valid: latent_dim, hidden, likelihood, encoder" in err
    assert list(tmp_path.iterdir()) == []


def test_models_and_results_print_in_one_line():
    from lvm_pyro.models.conditional import ConditionalVAE
    from lvm_pyro.models.hierarchical import HierarchicalVAE
    from lvm_pyro.models.mixture_prior import MixturePriorVAE
    from lvm_pyro.models.registry import get_model
    from lvm_pyro.models.vae import VAE

    texts = [repr(m) for m in (VAE(), HierarchicalVAE(), MixturePriorVAE(), ConditionalVAE(n_classes=10))]
    texts.append(repr(get_model("vae")))
    assert all("\n" not in t and len(t) < 200 for t in texts), texts
    assert texts[0] == ("VAE(input_shape=(64,), latent_dim=16, hidden=(256, 256), encoder='diag', "
                        "likelihood='bernoulli'; 177,248 parameters)")


def test_the_main_job_writes_one_report_for_the_mixture_and_the_vae(tmp_path, capsys):
    assert cli.main(["run", "--data", "digits", "--quick", "--out", str(tmp_path), "--name", "story",
                     "--quiet", "--num-samples", "20"]) == 0
    story = tmp_path / "story"
    gmm = json.loads((story / "gmm" / "metrics.json").read_text())
    vae = json.loads((story / "vae" / "metrics.json").read_text())
    assert gmm["log_likelihood_samples"] == "exact" and gmm["converged"] is True
    assert vae["epochs"] == 20 and vae["test_elbo"] < vae["test_log_likelihood"] + 1.0
    images = _images_in(story / "report.html")
    assert len(images) >= 7 and all(img.std() > 0.01 for img in images)
    captured = capsys.readouterr()
    assert "gmm: test log-likelihood" in captured.out and "vae: test log-likelihood" in captured.out
    # one report, read as a story; the export's point-estimate warning said once, in words
    report = check_story(story / "report.html")
    assert "not comparable across models" in " ".join(report.text)
    assert captured.err.count("one point estimate") == 1
    assert "not comparable: gmm's is a log-density, vae's is a log-probability" in captured.out
    assert "every draw of this InferenceData" not in captured.err


# ------------------------------------------------------------------ data, preprocessing, run folders


def test_digits_binarization_is_stated_in_console_metrics_and_report(tmp_path, capsys):
    assert cli.main(["fit", "vae", "--data", "digits", "--out", str(tmp_path), "--name", "v", "--quiet",
                     "--epochs", "1", "--kl-warmup", "3", "--num-samples", "5",
                     "--option", "hidden=(8,)"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert metrics["preprocessing"] == "binarized at >= 8 of the grey levels 0..16"
    assert metrics["likelihood"] == "Bernoulli"
    assert "preprocessing: binarized at >= 8 of the grey levels 0..16" in captured.out
    # a run that ends inside its KL warm-up says so: metrics, console, report and loss curve
    assert metrics["kl_warmup_epochs"] == 3.0 and metrics["ended_in_kl_warmup"] is True
    assert metrics["train_objective_is"].startswith("annealed ELBO")
    assert "inside the KL warm-up" in captured.err and "lvm-pyro resume" in captured.err
    report = (tmp_path / "v" / "report.html").read_text()
    assert "binarized at &gt;= 8 of the grey levels 0..16" in report and "annealed" in report
    assert "wall_time_s" not in metrics and "wall_time_s" in (tmp_path / "v" / "timing.json").read_text()


@pytest.mark.parametrize(
    "values, binarize, preprocessing, likelihood",
    [
        (np.linspace(0, 1, 120).reshape(30, 4), None, r"none: real-valued data used as stored", "Gaussian"),
        (np.linspace(-2, 2, 120).reshape(30, 4), "0.5", r"binarized at >= 0.5 of values in \[-2, 2\]",
         "Bernoulli"),
        ((np.arange(120).reshape(30, 4) % 2).astype(float), None, r"none: binary-valued data", "Bernoulli"),
    ],
)
def test_the_likelihood_follows_a_user_file(values, binarize, preprocessing, likelihood, tmp_path, capsys):
    np.save(tmp_path / "x.npy", values)
    argv = ["fit", "vae", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path), "--name", "r", "--quiet",
            "--epochs", "1", "--num-samples", "5", "--option", "hidden=(8,)"]
    assert cli.main(argv + (["--binarize", binarize] if binarize else [])) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert re.match(preprocessing, metrics["preprocessing"]) and metrics["likelihood"].startswith(likelihood)
    assert config["options"] == {"hidden": [8]}
    assert config["auto_options"] == ({"likelihood": "gaussian"} if likelihood == "Gaussian" else {})
    assert re.search(preprocessing, capsys.readouterr().out)
    # the run is rebuilt from its config as it was trained: evaluate reads it back
    assert cli.main(["evaluate", str(tmp_path / "r"), "--num-samples", "5"]) == 0


def test_run_directories_are_created_atomically(tmp_path):
    import threading

    results = []

    def create():
        try:
            lock = cli.create_run_directory(tmp_path / "same", {"n": 1})
            results.append("created")
            lock.release()
        except errors.ConfigurationError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("created") == 1
    assert all("exists: pass another --name" in r for r in results if r != "created")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]  # no temporary directory left
    assert json.loads((tmp_path / "same" / "config.json").read_text()) == {"n": 1}


def test_a_failed_fit_leaves_no_run_folder(tmp_path, capsys):
    # the mixture is built, its directory made, then EM refuses (more components than points)
    assert cli.main(["fit", "gmm", "--out", str(tmp_path), "--name", "g", "--quiet",
                     "--option", "n_components=5000"]) == 2
    assert "n_components=5000" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_locked_run_refuses_a_second_writer_and_stray_files_are_removed(tmp_path, capsys):
    assert cli.main(["fit", "tinyfactor", "--out", str(tmp_path), "--name", "r", "--quiet",
                     "--num-samples", "5"]) == 0
    run = tmp_path / "r"
    lock = cli.run_lock(run).acquire()
    try:
        assert cli.main(["resume", str(run), "--quiet", "--num-samples", "5"]) == 2
        assert "in use by another lvm-pyro command" in capsys.readouterr().err
    finally:
        lock.release()
    (run / ".metrics.json.abc123.tmp").write_text("half")
    (run / "figures" / ".loss.png.xyz.tmp").write_bytes(b"half")
    stale = tmp_path / ".other.q1w2.lvm-pyro-new"  # a half-made run of a command that died
    stale.mkdir()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert cli.main(["resume", str(run), "--epochs", "3", "--quiet", "--num-samples", "5"]) == 0
    assert not list(run.glob(".*.tmp")) and not list((run / "figures").glob(".*.tmp"))
    assert cli.main(["fit", "tinyfactor", "--out", str(tmp_path), "--name", "r2", "--quiet",
                     "--num-samples", "5"]) == 0
    assert not stale.exists()


def test_a_damaged_config_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.json").write_text('{"model": "vae", "data": "dig')
    assert cli.main(["evaluate", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and "not valid JSON" in err and err.count("\n") == 1


def test_atomic_output_keeps_the_old_file_when_writing_fails(tmp_path):
    from lvm_pyro.report import atomic_output

    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_options_are_literals_or_words():
    assert cli.parse_options(["hidden=(64, 64)", "likelihood=gaussian", "scale='learned'", "flag=True"]) == {
        "hidden": (64, 64), "likelihood": "gaussian", "scale": "learned", "flag": True}
    with pytest.raises(errors.ConfigurationError, match="not a literal"):
        cli.parse_options(["prior=GMMPrior()"])


def _holds_flock(path: Path) -> bool:
    """Whether some process holds a flock on ``path`` (Linux: /proc/locks lists it by inode)."""
    inode = f":{path.stat().st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return any("FLOCK" in line and inode in line + " " for line in lines)


SMALL_VAE = ["--option", "hidden=(8,)", "--option", "latent_dim=2", "--quiet", "--num-samples", "5"]


@pytest.mark.slow  # three processes of lvm-pyro (minutes on a loaded machine); the default run has
# test_run_directories_are_created_atomically and the locked-run cases of tests/bad_input
@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_two_processes_one_run_one_writer(tmp_path, capsys):
    # two `fit --name same` started together: exactly one gets the folder
    fit_cmd = [sys.executable, "-m", "lvm_pyro.cli", "fit", "vae", "--out", str(tmp_path), "--name", "same",
               "--epochs", "1", *SMALL_VAE]
    procs = [subprocess.Popen(fit_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted((p.wait(), p.stderr.read()) for p in procs)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "exists: pass another --name" in outcomes[1][1] and "Traceback" not in outcomes[1][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]
    # two `resume` at once: the second is refused while the first writes, which finishes intact
    run = tmp_path / "same"
    lock_file = run / cli.LOCK_NAME
    resume_cmd = [sys.executable, "-m", "lvm_pyro.cli", "resume", str(run), "--epochs", "40", "--quiet",
                  "--num-samples", "5"]
    first = subprocess.Popen(resume_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not _holds_flock(lock_file):
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert cli.main(["resume", str(run), "--epochs", "40", "--quiet", "--num-samples", "5"]) == 2
        assert "in use by another lvm-pyro command" in capsys.readouterr().err
    finally:
        code = first.wait()
    assert code == 0, first.stderr.read()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 40
    assert group(from_netcdf(run / "inference_data.nc"), "log_likelihood")["x"].shape[-1] == 300
