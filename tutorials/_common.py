"""What every tutorial sets up: one torch thread, smoke mode, and where figures go.

``LVM_PYRO_SMOKE=1`` runs a tutorial small and fast (the tests and the docs build do).

Figures: in a notebook (Jupyter, or the docs build) ``save`` shows each figure inline; run as
a script it writes the figure to a file. Files go to ``$LVM_PYRO_FIGURES`` when it is set, to a
fresh temporary folder in smoke mode, and to ``tutorials/figures/`` (untracked, ignored by git)
otherwise. In a notebook files are written only when ``$LVM_PYRO_FIGURES`` is set.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

torch.set_num_threads(1)
SMOKE = os.environ.get("LVM_PYRO_SMOKE", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent
STARTED = time.perf_counter()
_FIGURES: Path | None = None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (a notebook, or the docs build executing one)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def figures_dir() -> Path:
    """Where figure files go (created on first use)."""
    global _FIGURES
    if _FIGURES is None:
        chosen = os.environ.get("LVM_PYRO_FIGURES")
        if chosen:
            _FIGURES = Path(chosen)
        elif SMOKE:
            _FIGURES = Path(tempfile.mkdtemp(prefix="lvm_pyro_figures_"))
        else:
            _FIGURES = HERE / "figures"
        _FIGURES.mkdir(parents=True, exist_ok=True)
    return _FIGURES


def save(fig: Figure, name: str, dpi: int = 90) -> None:
    """Show a figure inline in a notebook; write it to a file when run as a script."""
    if in_notebook():
        from IPython.display import Image, display

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        display(Image(data=buffer.getvalue(), format="png"))
        if not os.environ.get("LVM_PYRO_FIGURES"):
            return
    path = figures_dir() / name
    fig.savefig(path, dpi=dpi)
    print(f"figure: {path}")


def runtime() -> str:
    """Seconds since the tutorial started, for its closing summary."""
    return f"{time.perf_counter() - STARTED:.1f} s"


def __getattr__(name: str):
    if name == "FIGURES":  # the folder, for tutorials that write files of their own
        return figures_dir()
    raise AttributeError(f"module '_common' has no attribute {name!r}")
