"""The tutorials: each runs end to end in smoke mode, writes non-blank figures only where it is
told to, and converts to a notebook."""

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
COMMITTED_FIGURES = ROOT / "tutorials" / "figures"
SMOKE_TIMEOUT = 300  # seconds; a smoke run takes well under a minute on an idle machine


def _snapshot(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*")} if folder.is_dir() else {}


def test_there_are_nine_numbered_tutorials():
    assert len(TUTORIALS) == 9
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, 10)]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_a_jupytext_percent_script_with_its_runtime(path):
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n")
    assert "format_name: percent" in text
    assert "# %% [markdown]" in text
    assert "Runtime:" in text, "each tutorial documents its expected runtime at the top"
    assert "plt.show()" not in text


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_in_smoke_mode_and_writes_figures(path, tmp_path):
    figures = tmp_path / "figures"
    env = {
        **os.environ,
        "LVM_PYRO_SMOKE": "1",
        "LVM_PYRO_FIGURES": str(figures),
        "MPLBACKEND": "Agg",
    }
    before = _snapshot(COMMITTED_FIGURES)
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{path.name} exited with {proc.returncode}\n--- stdout (tail) ---\n{proc.stdout[-2000:]}"
        f"\n--- stderr (tail) ---\n{proc.stderr[-4000:]}"
    )
    assert "Key numbers" in proc.stdout
    pngs = sorted(figures.glob("*.png"))
    assert pngs, f"{path.name} wrote no figure to LVM_PYRO_FIGURES"
    for png in pngs:
        assert png.name.startswith(path.name[:3]), f"{png.name}: figures are named after their tutorial"
        pixels = matplotlib.image.imread(png)[..., :3]
        assert pixels.std() > 0.01, f"{png.name} is blank"
    assert _snapshot(COMMITTED_FIGURES) == before, "a smoke run must not touch tutorials/figures"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_converts_to_a_notebook(path, tmp_path):
    pytest.importorskip("jupytext")
    out = tmp_path / f"{path.stem}.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(out), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    notebook = json.loads(out.read_text())
    kinds = [cell["cell_type"] for cell in notebook["cells"]]
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3
    assert notebook["cells"][0]["cell_type"] == "markdown"
