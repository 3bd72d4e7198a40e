"""What every tutorial sets up: one torch thread, smoke mode, and where figures go.

``LVM_PYRO_SMOKE=1`` runs a tutorial small and fast (the tests do); figures go to
``$LVM_PYRO_FIGURES`` when it is set, to a temporary folder in smoke mode, and to
``tutorials/figures/`` otherwise.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

torch.set_num_threads(1)
SMOKE = os.environ.get("LVM_PYRO_SMOKE", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent
FIGURES = Path(
    os.environ.get("LVM_PYRO_FIGURES")
    or (tempfile.mkdtemp(prefix="lvm_pyro_figures_") if SMOKE else HERE / "figures")
)
FIGURES.mkdir(parents=True, exist_ok=True)
STARTED = time.perf_counter()


def save(fig: Figure, name: str, dpi: int = 90) -> None:
    """Write a figure to FIGURES and say where."""
    fig.savefig(FIGURES / name, dpi=dpi)
    print(f"figure: {FIGURES / name}")


def runtime() -> str:
    """Seconds since the tutorial started, for its closing summary."""
    return f"{time.perf_counter() - STARTED:.1f} s"
