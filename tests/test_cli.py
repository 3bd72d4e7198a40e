"""The command line: help, info, models, fit on a registered model, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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


register_model(
    "tinyfactor",
    lambda data, scale=1.0: TinyFactor(data.event_shape[0], scale),
    description="a one-factor model used by the CLI tests",
    fit_options={"epochs": 2, "batch_size": 128},
)


def test_fit_writes_a_run_directory(tmp_path, capsys):
    code = cli.main(["fit", "tinyfactor", "--data", "digits", "--out", str(tmp_path), "--name", "r",
                     "--quiet", "--option", "scale=0.5"])
    assert code == 0
    run = tmp_path / "r"
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 2 * (1197 // 128)
    assert metrics["test_elbo"] < 0 and metrics["val_elbo"] is not None
    assert config["options"] == {"scale": 0.5} and config["fit"]["batch_size"] == 128
    assert (run / "checkpoint.pt").exists()
    assert "test ELBO" in capsys.readouterr().out
    # the same name again is refused, --resume continues it
    assert cli.main(["fit", "tinyfactor", "--out", str(tmp_path), "--name", "r", "--quiet"]) == 2
    assert cli.main(["fit", "tinyfactor", "--out", str(tmp_path), "--name", "r", "--quiet",
                     "--resume", "--epochs", "3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "nosuchmodel"], "unknown model 'nosuchmodel'; available models:"),
        (["fit", "tinyfactor", "--data", "/no/such/file.npy"], "/no/such/file.npy"),
        (["fit", "tinyfactor", "--option", "novalue"], "--option takes key=value"),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys):
    assert cli.main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
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
