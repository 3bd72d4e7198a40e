"""The tutorials: each runs end to end in smoke mode as a notebook and shows its figures inline;
run as a script it saves them where it is told to; and nothing here writes into tracked files.

Setting ``LVM_PYRO_NOTEBOOKS=DIR`` keeps the executed notebooks in DIR; the docs build
(``docs/conf.py``) then renders them instead of executing the tutorials a second time.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL_DIR = ROOT / "tutorials"
TUTORIALS = sorted(TUTORIAL_DIR.glob("[0-9][0-9]_*.py"))
#: tqdm.auto's warning in a kernel without ipywidgets (the progress bars are off in the tutorials)
NOTEBOOK_WARNINGS = "ignore:IProgress not found"
CELL_TIMEOUT = 600  # seconds; a whole smoke run takes well under a minute on an idle machine


def _pythonpath() -> str:
    """The tutorials import ``_common`` from their folder and ``lvm_pyro`` from this checkout."""
    return os.pathsep.join(filter(None, [str(TUTORIAL_DIR), str(ROOT), os.environ.get("PYTHONPATH")]))


def _git_status() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return proc.stdout if proc.returncode == 0 else None


@pytest.fixture(scope="module", autouse=True)
def _leaves_the_checkout_as_it_found_it():
    """Running these tests changes nothing git sees (skipped outside a git checkout)."""
    before = _git_status()
    yield
    after = _git_status()
    if before is not None and after is not None:
        assert after == before, f"the tutorial tests changed the checkout:\n{after}"


def _is_blank(png: bytes) -> bool:
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return float(np.std(pixels)) <= 0.01


def test_the_tutorials_are_numbered_from_01_without_gaps():
    assert len(TUTORIALS) >= 9
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_a_jupytext_percent_script_with_its_runtime(path):
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n")
    assert "format_name: percent" in text
    assert "# %% [markdown]" in text
    assert "Runtime:" in text, "each tutorial documents its expected runtime at the top"
    assert "plt.show()" not in text, "figures go through _common.save (inline in notebooks, files in scripts)"


def source_digest(path: Path) -> str:
    """What an executed notebook was made from: the script and _common.py (the docs build checks it)."""
    digest = hashlib.sha256(path.read_bytes())
    digest.update((TUTORIAL_DIR / "_common.py").read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_as_a_notebook_with_its_figures_inline(path, tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    notebook = jupytext.read(path)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert notebook.cells[0].cell_type == "markdown" and len(code) >= 3
    env = {
        **os.environ,
        "LVM_PYRO_SMOKE": "1",
        "PYTHONPATH": _pythonpath(),
        "PYTHONWARNINGS": NOTEBOOK_WARNINGS,
    }
    env.pop("LVM_PYRO_FIGURES", None)  # a notebook shows its figures; it writes no file
    env.pop("MPLBACKEND", None)  # the kernel's own (inline) backend
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, errors
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "Key numbers" in text
    assert "figure: " not in text, "in a notebook figures are shown, not written to files"
    images = [out.data["image/png"] for out in outputs if "image/png" in out.get("data", {})]
    assert images, f"{path.name} shows no figure inline"
    for image in images:
        assert not _is_blank(base64.b64decode(image)), f"{path.name} shows a blank figure"
    assert list(tmp_path.iterdir()) == [], "a notebook run writes no file into its working folder"

    keep = os.environ.get("LVM_PYRO_NOTEBOOKS")
    if keep:
        notebook.metadata["lvm_pyro"] = {"source_sha256": source_digest(path), "smoke": True}
        Path(keep).mkdir(parents=True, exist_ok=True)
        jupytext.write(notebook, Path(keep) / f"{path.stem}.ipynb", fmt="ipynb")


def _run_script(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MPLBACKEND": "Agg", **env}
    full_env["PYTHONPATH"] = _pythonpath()
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True)


SAVE_ONE = """
from matplotlib.figure import Figure
import _common
fig = Figure()
fig.add_subplot().plot([0, 1, 0])
_common.save(fig, "99_probe.png")
print("folder", _common.FIGURES)
"""


def test_a_script_saves_its_figures_where_it_is_told(tmp_path):
    figures = tmp_path / "out"
    proc = _run_script(SAVE_ONE, tmp_path, LVM_PYRO_SMOKE="1", LVM_PYRO_FIGURES=str(figures))
    assert proc.returncode == 0, proc.stderr
    saved = figures / "99_probe.png"
    assert f"figure: {saved}" in proc.stdout
    assert not _is_blank(saved.read_bytes())


def test_a_smoke_script_without_a_folder_saves_to_a_temporary_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LVM_PYRO_FIGURES"}
    proc = subprocess.run(
        [sys.executable, "-c", SAVE_ONE],
        cwd=tmp_path,
        env={**env, "LVM_PYRO_SMOKE": "1", "MPLBACKEND": "Agg", "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.split("folder ", 1)[1].strip())
    try:
        assert (folder / "99_probe.png").is_file()
        assert TUTORIAL_DIR not in folder.parents and folder != TUTORIAL_DIR / "figures"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_tutorial_run_as_a_script_saves_non_blank_figures_named_after_it(tmp_path):
    """The script form end to end, on the shortest tutorial (the notebook test runs them all)."""
    path = TUTORIAL_DIR / "02_elbo.py"
    figures = tmp_path / "figures"
    env = {**os.environ, "LVM_PYRO_SMOKE": "1", "LVM_PYRO_FIGURES": str(figures), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Key numbers" in proc.stdout
    pngs = sorted(figures.glob("*.png"))
    assert pngs and all(p.name.startswith("02_") for p in pngs)
    assert not any(_is_blank(p.read_bytes()) for p in pngs)
