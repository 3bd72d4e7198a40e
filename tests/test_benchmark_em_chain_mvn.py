"""The chain-route MVN benchmark runs in its quick mode (its agreement checks are assertions)."""

import subprocess
import sys
from pathlib import Path

import pytest


def test_benchmark_runs_in_quick_mode():
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "em_chain_mvn.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--iters", "4"],
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
