"""What a finished run leaves behind: figures, an ArviZ file and a self-contained HTML report.

:func:`model_figures` draws what a model can show (duck-typed on the model contract: a
loss curve for any result; samples, reconstructions and the latent space where the model
has ``sample`` / ``reconstruct`` / ``encode``; component means for a mixture; the PSIS
k-hat of an amortized guide). :func:`write_report` writes one HTML file with every figure
embedded as a PNG, the metrics, the configuration and the versions, so the file can be
mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure

from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.arviz import psis_khat
from lvm_pyro.errors import LVMError


@dataclass
class Section:
    """One model's part of a report: a title, metrics, figures (name -> PNG bytes), notes."""

    title: str
    metrics: Mapping[str, object] = field(default_factory=dict)
    figures: Mapping[str, bytes] = field(default_factory=dict)
    notes: Sequence[str] = ()
    config: Mapping[str, object] = field(default_factory=dict)


#: the suffix of the temporary files :func:`atomic_output` writes (``.NAME.XXXX.tmp``)
TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; renamed over ``path`` when the block
    ends without an error, removed otherwise. Readers see the old file or the new one, never
    half of one.

    Example:
        >>> import tempfile, os
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_output(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), sorted(os.listdir(target.parent))
        ('done', ['a.txt'])
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stray_outputs(folder: str | Path) -> list[str]:
    """Delete the temporary files of :func:`atomic_output` that a killed writer left in
    ``folder`` (call it while holding the folder's lock); returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.glob(f".*{TMP_SUFFIX}"):
        if entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def figure_png(fig: Figure, dpi: int = 90) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _cpu(t: torch.Tensor):
    return t.detach().cpu().numpy()


def draw(model, n: int) -> torch.Tensor:
    """n examples x ~ p(x) from ``model.sample(n)`` (a mixture also returns z: dropped here)."""
    out = model.sample(n)
    return out[0] if isinstance(out, tuple) else out


def model_figures(model, result, x_test: torch.Tensor, y_test: torch.Tensor | None,
                  image_shape: Sequence[int] | None, *, khat_samples: int = 200,
                  seed: int = 0) -> tuple[dict[str, Figure], list[str]]:
    """The figures a model supports, and a note for each one it could not draw and why.

    Example:
        >>> figs, notes = model_figures(None, None, torch.zeros(2, 4), None, None)
        >>> figs, notes
        ({}, [])
    """
    figs: dict[str, Figure] = {}
    notes: list[str] = []
    if result is not None:
        figs["loss"] = plots.plot_loss(result)
        _label_loss(figs["loss"], result)
    if model is None:
        return figs, notes
    images = image_shape is not None
    if isinstance(x_test, tuple):  # a conditional model p(y | c): data (y, c)
        y, cond = x_test[0][:8], x_test[1][:8]
        if not (images and hasattr(model, "sample")):
            return figs, notes
        torch.manual_seed(seed)
        if cond.dim() == 1:  # class labels: one row of draws per label
            labels = torch.arange(int(x_test[1].max()) + 1, device=cond.device).repeat_interleave(4)
            figs["samples by label"] = plots.plot_samples(_cpu(model.sample(labels)), image_shape, ncols=8,
                                                          title="y ~ p(y | label), 4 per label")
        elif y.shape[1] + cond.shape[1] == math.prod(image_shape):  # completions of top halves
            draws = torch.stack([model.sample(cond) for _ in range(4)], dim=1)
            figs["completions"] = plots.plot_completions(_cpu(cond), _cpu(draws), image_shape,
                                                         truth=_cpu(y))
        return figs, notes
    if images and hasattr(model, "sample"):
        torch.manual_seed(seed)
        figs["samples"] = plots.plot_samples(_cpu(draw(model, 40)), image_shape, title="samples x ~ p(x)")
    if images and hasattr(model, "reconstruct"):
        originals = x_test[:10]
        figs["reconstructions"] = plots.plot_reconstructions(
            _cpu(originals), _cpu(model.reconstruct(originals)), image_shape, n=len(originals))
    if hasattr(model, "encode"):
        z = model.encode(x_test).mean
        figs["latent"] = plots.plot_latent(_cpu(z), None if y_test is None else _cpu(y_test),
                                           title="posterior means E_q[z | x], test set")
    if images and hasattr(model, "loc") and hasattr(model, "weights"):
        order = torch.argsort(model.weights.detach(), descending=True)
        figs["components"] = plots.plot_samples(_cpu(model.loc.detach()[order]), image_shape,
                                                title="component means, by weight")
    if hasattr(model, "guide") and hasattr(model, "encode"):
        try:
            khat = psis_khat(model, x_test[:200], num_samples=khat_samples, seed=seed)
            figs["khat"] = plots.plot_khat(khat, title="PSIS k-hat of q(z | x) per test point")
        except LVMError as exc:
            notes.append(f"k-hat not drawn: {exc}")
    return figs, notes


def _label_loss(fig: Figure, result) -> None:
    """Say what a loss curve plots: for ``fit``, the KL-annealed objective during the warm-up
    (shaded) and -ELBO after it, validation always -ELBO; for ``em``, the exact -log-likelihood."""
    ax = fig.axes[0]
    if not hasattr(result, "losses"):
        ax.set_title("EM: -mean log-likelihood per point (exact, z summed out)", fontsize=9)
        return
    config = getattr(result, "config", {}) or {}
    warmup = float(config.get("kl_warmup") or 0.0)
    per_epoch = config.get("steps_per_epoch") or 0
    if warmup <= 0 or not per_epoch or not result.losses:
        ax.set_title("training: -ELBO per point (batch estimate); validation: -ELBO", fontsize=9)
        return
    betas = getattr(result, "betas", None)  # the KL weight of each step, where fit records it
    if betas and len(betas) == len(result.losses):
        end = next((i for i, b in enumerate(betas) if b >= 1.0), len(betas))
    else:
        end = min(warmup * per_epoch, len(result.losses))
    ax.axvspan(0, end, color="0.85", alpha=0.6, lw=0, label=f"KL warm-up ({warmup:g} epochs)")
    ax.legend()
    ax.set_ylabel("loss per point")
    annealed = "-(E_q log p(x|z) - beta KL), beta < 1"
    if end >= len(result.losses):
        title = f"training: annealed objective {annealed} throughout:\nthe run ended inside the KL warm-up"
    else:
        title = f"training: annealed objective {annealed} in the shaded warm-up,\nthen -ELBO"
    ax.set_title(f"{title}; validation: -ELBO", fontsize=8)


def save_figures(figs: Mapping[str, Figure], folder: Path) -> dict[str, bytes]:
    """Write each figure to ``folder/NAME.png`` (atomically); return the PNG bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for name, fig in figs.items():
        png = figure_png(fig)
        with atomic_output(folder / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        pngs[name] = png
    return pngs


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Mapping[str, object]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{_format(v)}</td></tr>" for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def write_report(path: str | Path, title: str, sections: Sequence[Section],
                 versions: Mapping[str, str], command: str = "") -> Path:
    """Write a self-contained HTML report (every figure inlined as base64 PNG), atomically.

    Example:
        >>> import tempfile, os
        >>> p = write_report(os.path.join(tempfile.mkdtemp(), "r.html"), "t", [Section("s", {"a": 1})], {})
        >>> "<h2>s</h2>" in p.read_text()
        True
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}th{background:#f4f4f4}figure{display:inline-block;margin:0.5em}"
        "img{max-width:520px}figcaption{font-size:90%;color:#555}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Written {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}"
        + (f" by <code>{html.escape(command)}</code>" if command else "") + ".</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.metrics:
            parts.append(_table(section.metrics))
        for note in section.notes:
            parts.append(f"<p><em>{html.escape(note)}</em></p>")
        for name, png in section.figures.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")
        if section.config:
            config = html.escape(json.dumps(section.config, indent=2, default=str))
            parts.append(f"<details><summary>configuration</summary><pre>{config}</pre></details>")
    parts.append("<h2>Versions</h2>" + _table(versions) + "</body></html>")
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
