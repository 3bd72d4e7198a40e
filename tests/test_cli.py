"""The command line: help, info, models, fit on a registered model, one-line errors."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import pyro_method

from lvm_pyro import LatentVariableModel, cli
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
    assert az.from_netcdf(str(run / "inference_data.nc")).log_likelihood["x"].shape[-1] == 300
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
    assert "tinyfactor" in capsys.readouterr().out


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
    out = capsys.readouterr().out
    assert "gmm: test log-likelihood" in out and "vae: test log-likelihood" in out
