"""The chain-route mixture benchmark runs in its quick mode, for full and diagonal covariances
(its agreement checks against GaussianMixtureModel, scikit-learn and MAP-ECM are assertions)."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_benchmark_runs_in_quick_mode(covariance):
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "em_chain_mvn.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--iters", "4", "--covariance", covariance],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 500 |")]
    assert [row.split("|")[4].strip() for row in rows] == [
        "chain ML",
        "chain MAP",
        "GaussianMixtureModel",
        "sklearn",
    ]
    assert "Agreement (asserted)" in done.stdout
