"""What a finished run leaves behind: figures, an ArviZ file and a self-contained HTML report.

:func:`model_figures` draws what a model can show (duck-typed on the model contract: a
loss curve for any result; samples, reconstructions and the latent space where the model
has ``sample`` / ``reconstruct`` / ``encode``; component means for a mixture; the PSIS
k-hat of an amortized guide). :func:`write_report` writes one HTML file that a practitioner
reads top to bottom as the run's story: the data and its preprocessing, each model and the
settings it ran with, training, held-out quality, diagnostics and samples; every figure is
embedded as a PNG with a sentence under it saying what it shows and how to read it, and
every number carries its unit, so the file can be mailed or archived on its own.
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

import matplotlib
import torch
from matplotlib.figure import Figure

from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.psis import KHAT_GOOD, KHAT_OK, psis_khat
from lvm_pyro.errors import LVMError

#: the report's chapters, in reading order: (anchor, heading)
STORY = (
    ("data", "Data and preprocessing"),
    ("models", "Models and settings"),
    ("training", "Training"),
    ("quality", "Held-out quality"),
    ("diagnostics", "Diagnostics"),
    ("samples", "Samples"),
)
#: which chapter shows which figure, in the order they appear there
FIGURE_CHAPTER = {
    "loss": "training",
    "khat": "diagnostics",
    "latent": "diagnostics",
    "samples": "samples",
    "reconstructions": "samples",
    "components": "samples",
    "completions": "samples",
    "samples by label": "samples",
}


@dataclass
class Section:
    """One model's part of a report.

    ``name``: the registered name ("vae"); ``description``: what the model is; ``metrics``:
    the run's ``metrics.json``; ``figures``: name -> PNG bytes (names as :func:`model_figures`
    gives them); ``notes``: what the run said along the way, in words; ``config``: the
    resolved configuration (every setting used, defaults filled in); ``data``: the data as
    this model saw it ({"description", "preprocessing", "likelihood", "splits"});
    ``facts``: numbers the figures show (e.g. k-hat counts), for their captions; ``unit``:
    what one example is ("image" or "example"), for "nats per image"; ``point_estimate``:
    whether its ArviZ export holds one point estimate of the global parameters.
    """

    name: str
    description: str = ""
    metrics: Mapping[str, object] = field(default_factory=dict)
    figures: Mapping[str, bytes] = field(default_factory=dict)
    notes: Sequence[str] = ()
    config: Mapping[str, object] = field(default_factory=dict)
    data: Mapping[str, object] = field(default_factory=dict)
    facts: Mapping[str, object] = field(default_factory=dict)
    unit: str = "example"
    point_estimate: bool = False

    def __repr__(self) -> str:
        return f"Section({self.name!r}, figures={list(self.figures)}, metrics={len(self.metrics)})"


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


#: figures are drawn at this resolution and shown at their natural size (no downscaling on a
#: desktop screen), with fonts large enough to read there
REPORT_DPI = 90
_REPORT_STYLE = {
    "font.size": 12,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "figure.titlesize": 12,
}
#: inches per image in the report's image grids: 8x8 digits stay crisp, the grid fits the page
_CELL = 0.6


def figure_png(fig: Figure, dpi: int = REPORT_DPI) -> bytes:
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


def model_figures(
    model,
    result,
    x_test: torch.Tensor,
    y_test: torch.Tensor | None,
    image_shape: Sequence[int] | None,
    *,
    khat_samples: int = 200,
    seed: int = 0,
) -> tuple[dict[str, Figure], list[str], dict[str, object]]:
    """The figures a model supports, a note for each one it could not draw and why, and the
    numbers the figures show (k-hat counts) for their captions.

    The figures carry no long titles: the report's caption under each says what it shows.

    Example:
        >>> figs, notes, facts = model_figures(None, None, torch.zeros(2, 4), None, None)
        >>> figs, notes, facts
        ({}, [], {})
    """
    with matplotlib.rc_context(_REPORT_STYLE):
        return _model_figures(model, result, x_test, y_test, image_shape, khat_samples, seed)


def _model_figures(model, result, x_test, y_test, image_shape, khat_samples, seed):
    figs: dict[str, Figure] = {}
    notes: list[str] = []
    facts: dict[str, object] = {}
    if result is not None:
        figs["loss"] = plots.plot_loss(result, ax=_axes(5.0, 3.2))
    if model is None:
        return figs, notes, facts
    images = image_shape is not None
    if isinstance(x_test, tuple):  # a conditional model p(y | c): data (y, c)
        y, cond = x_test[0][:8], x_test[1][:8]
        if not (images and hasattr(model, "sample")):
            return figs, notes, facts
        torch.manual_seed(seed)
        if cond.dim() == 1:  # class labels: one row of draws per label
            labels = torch.arange(int(x_test[1].max()) + 1, device=cond.device).repeat_interleave(4)
            figs["samples by label"] = plots.plot_samples(
                _cpu(model.sample(labels)), image_shape, ncols=8, size=_CELL
            )
        elif y.shape[1] + cond.shape[1] == math.prod(image_shape):  # completions of top halves
            draws = torch.stack([model.sample(cond) for _ in range(4)], dim=1)
            figs["completions"] = plots.plot_completions(_cpu(cond), _cpu(draws), image_shape, truth=_cpu(y))
        return figs, notes, facts
    if images and hasattr(model, "sample"):
        torch.manual_seed(seed)
        figs["samples"] = plots.plot_samples(_cpu(draw(model, 40)), image_shape, size=_CELL)
    if images and hasattr(model, "reconstruct"):
        originals = x_test[:10]
        figs["reconstructions"] = plots.plot_reconstructions(
            _cpu(originals), _cpu(model.reconstruct(originals)), image_shape, n=len(originals), size=_CELL
        )
    if hasattr(model, "encode"):
        z = model.encode(x_test).mean
        facts["latent_dim"] = int(z.shape[-1])
        figs["latent"] = plots.plot_latent(
            _cpu(z), None if y_test is None else _cpu(y_test), title="", ax=_axes(4.4, 3.6)
        )
    if images and hasattr(model, "loc") and hasattr(model, "weights"):
        order = torch.argsort(model.weights.detach(), descending=True)
        figs["components"] = plots.plot_samples(_cpu(model.loc.detach()[order]), image_shape, size=_CELL)
    if hasattr(model, "guide") and hasattr(model, "encode"):
        try:
            khat = psis_khat(model, x_test[:200], num_samples=khat_samples, seed=seed)
        except LVMError as exc:
            notes.append(f"The k-hat figure is not drawn: {exc}")
        else:
            figs["khat"] = plots.plot_khat(khat, title="", ax=_axes(5.0, 3.2))
            values = torch.as_tensor(khat.khat_per_point)
            facts.update(
                khat_points=len(values),
                khat_samples=khat_samples,
                khat_ok=int((values >= KHAT_GOOD).sum() - (values >= KHAT_OK).sum()),
                khat_bad=int((values >= KHAT_OK).sum()),
            )
    return figs, notes, facts


def _axes(width: float, height: float):
    """Axes of a new figure of the report's size (inches): small enough to be shown unscaled
    beside another on a desktop page and scaled little on a phone."""
    return Figure(figsize=(width, height), layout="constrained").subplots()


def save_figures(figs: Mapping[str, Figure], folder: Path) -> dict[str, bytes]:
    """Write each figure to ``folder/NAME.png`` (atomically); return the PNG bytes by name."""
    folder.mkdir(parents=True, exist_ok=True)
    pngs = {}
    for name, fig in figs.items():
        with matplotlib.rc_context(_REPORT_STYLE):  # tick labels are made when the figure is drawn
            png = figure_png(fig)
        with atomic_output(folder / f"{name}.png") as tmp:
            tmp.write_bytes(png)
        pngs[name] = png
    return pngs


# ------------------------------------------------------------------------------------------
# Words: numbers with units, captions
# ------------------------------------------------------------------------------------------


def _esc(value) -> str:
    return html.escape(str(value))


def _nats(value: float, unit: str, se: float | None = None) -> str:
    text = f"{value:.2f}" + (f" &plusmn; {se:.2f}" if se is not None else "")
    return f"{text} nats per {unit}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _warmup_words(metrics: Mapping) -> str:
    warmup = float(metrics.get("kl_warmup_epochs") or 0.0)
    if warmup <= 0:
        return "There was no KL warm-up: the whole curve is the negative ELBO."
    if metrics.get("ended_in_kl_warmup"):
        return (
            f"The shaded band is the KL warm-up ({warmup:g} epochs, the KL weight beta rising "
            "from 0 to 1); this run ended inside it, so the whole curve is the negative "
            "annealed ELBO, not the negative ELBO."
        )
    return (
        f"The shaded band is the KL warm-up ({warmup:g} epochs): the KL weight beta rises from 0 "
        "to 1, so the curve there is the negative annealed ELBO -(E_q log p(x | z) - beta KL), "
        "which is lower than the negative ELBO and climbs as beta grows; after the band it is "
        "the negative ELBO."
    )


def caption(name: str, section: Section) -> str:
    """What figure ``name`` of ``section`` shows and how to read it, in plain words (HTML)."""
    m, f, unit = section.metrics, section.facts, section.unit
    if name == "loss" and "iterations" in m:
        state = "converged" if m.get("converged") else "stopped without converging"
        return (
            f"Negative mean log-likelihood of the training {unit}s after each EM iteration, in nats "
            f"per {unit}; exact, the mixture's z summed out. EM never increases it; a flat end means "
            f"it has converged (here it {state} after {_count(int(m['iterations']), 'iteration')})."
        )
    if name == "loss":
        return (
            f"Training loss per optimizer step, in nats per {unit}: the negative ELBO of each "
            "training batch (faint) and its moving average (solid); the dots are the negative "
            "ELBO of the validation set after each epoch. Lower is better; a flat end means "
            f"training has settled. {_warmup_words(m)}"
        )
    if name == "khat":
        return (
            f"Pareto k-hat of importance sampling with the guide q(z | x) as proposal, one dot per "
            f"test {unit} ({f.get('khat_samples', '')} draws each). Below 0.5 (green) the guide covers "
            "the posterior well and importance-sampled estimates are reliable; from 0.5 to 0.7 "
            "(orange) they are usable but converge slowly; above 0.7 (red) the guide misses part of "
            f"the posterior and that {unit}'s importance-sampled log-likelihood is unreliable. Here "
            f"{f.get('khat_bad', '?')} of {f.get('khat_points', '?')} are above 0.7 and "
            f"{f.get('khat_ok', '?')} between 0.5 and 0.7."
        )
    if name == "latent":
        dims = f.get("latent_dim", 0)
        where = "their first two principal components" if dims > 2 else "the latent axes"
        return (
            f"The guide's posterior mean E_q[z | x] of each test {unit} ({dims}-dimensional), shown "
            f"on {where} and coloured by the digit's label, which the model never saw. Labels in "
            "separate clusters mean the code captures the class; one mixed cloud means it does not."
        )
    if name == "samples":
        return (
            f"New {unit}s drawn from the trained model: z from the prior, then x from the likelihood "
            f"p(x | z). They should look like the data; pixel noise is expected, since the "
            "likelihood draws each pixel independently given z."
        )
    if name == "reconstructions":
        return (
            f"Upper row of each pair: test {unit}s; lower row: their reconstructions E[x | z] at the "
            "guide's mean z = E_q[z | x] (dark = probability of an ink pixel near 1). Close pairs mean "
            "the code keeps what the image shows."
        )
    if name == "components":
        return (
            "The mixture's component means as images, the largest weight first: each is the "
            "average of the images that component explains, a prototype of one kind of digit."
        )
    if name == "completions":
        return (
            "Each row: the true image, then four completions. The top half (above the red line) "
            "is given; the bottom half is drawn from the model's p(bottom | top). Varied, plausible "
            "bottoms mean the model has learnt the uncertainty, not only an average."
        )
    if name == "samples by label":
        return (
            "Four images drawn from p(image | label) for each label, one label after another: "
            "each group should show the digit it was asked for."
        )
    return f"Figure: {name}."


# ------------------------------------------------------------------------------------------
# The HTML
# ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:60rem;margin:1.5rem auto;
padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.3rem;border-bottom:1px solid #ddd;
margin-top:2rem;padding-bottom:.2rem}h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
nav ul{display:flex;flex-wrap:wrap;gap:.2rem 1.4rem;list-style:none;padding:0;margin:.4rem 0}
table{border-collapse:collapse;margin:.4rem 0}th,td{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f6f6f6;font-weight:600}
.scroll{overflow-x:auto}figure{margin:.6rem 0 1.2rem}img{max-width:100%;height:auto;display:block}
.figs,.side{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,24rem),1fr));gap:0 1.5rem;
align-items:start}
.settings{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,15rem),1fr));gap:.15rem 1.5rem;
margin:.3rem 0 .8rem;padding:0;list-style:none}.settings b{font-weight:600}
figcaption{font-size:.92rem;color:#444;max-width:44rem;margin-top:.3rem}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5rem .8rem;margin:.6rem 0}
.lede{color:#555}code,pre{font-size:.85rem}pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;margin:.4rem 0}dt{font-weight:600}
dd{margin:0}@media (max-width:36rem){dl{grid-template-columns:1fr}dd{margin-left:.8rem}}
"""


def _table(rows: Sequence[tuple[str, str]], header: tuple[str, str] | None = None) -> str:
    """A two-column table; cells are HTML already."""
    head = f"<tr><th>{header[0]}</th><th>{header[1]}</th></tr>" if header else ""
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<div class='scroll'><table>{head}{body}</table></div>"


def _value(value) -> str:
    """A configuration value in words: tuples as written on the command line, None as "none"."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}={_value(v)}" for k, v in value.items()) or "(none)"
    return str(value)


def _heading(section: Section) -> str:
    return (
        f"<h3>{_esc(section.name)}: {_esc(section.description)}</h3>"
        if section.description
        else (f"<h3>{_esc(section.name)}</h3>")
    )


def _figure(name: str, png: bytes, section: Section) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = f"{section.name}: {name}"
    return (
        f"<figure><img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_esc(caption(name, section))}</figcaption></figure>"
    )


def _figures(section: Section, chapter: str) -> list[str]:
    """The section's figures of ``chapter`` in story order, side by side where the page is wide."""
    names = [n for n in FIGURE_CHAPTER if FIGURE_CHAPTER[n] == chapter and n in section.figures]
    if not names:
        return []
    return ["<div class='figs'>" + "".join(_figure(n, section.figures[n], section) for n in names) + "</div>"]


def _settings(values: Mapping[str, object]) -> str:
    """Settings as a compact grid of "name: value" items."""
    items = "".join(f"<li><b>{_esc(k)}</b>: {_esc(_value(v))}</li>" for k, v in values.items())
    return f"<ul class='settings'>{items}</ul>"


def _data_chapter(sections: Sequence[Section]) -> list[str]:
    parts = []
    for s in sections:
        d = s.data
        rows = [
            ("data", _esc(d.get("description", s.metrics.get("data", "")))),
            ("preprocessing", _esc(d.get("preprocessing", s.metrics.get("preprocessing", "")))),
            ("likelihood", _esc(d.get("likelihood", s.metrics.get("likelihood", "")))),
        ]
        if d.get("splits"):
            rows.append(("split", _esc(", ".join(f"{n}: {k} {s.unit}s" for n, k in d["splits"].items()))))
        parts.append(_heading(s) + "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>")
    return parts


def _models_chapter(sections: Sequence[Section]) -> list[str]:
    parts = []
    for s in sections:
        parts.append(_heading(s))
        model = s.config.get("model options", {})
        training = s.config.get("training", {})
        if model:
            parts.append(
                "<p>Model options, the defaults filled in (set with "
                "<code>--option KEY=VALUE</code>):</p>" + _settings(model)
            )
        if training:
            parts.append(
                f"<p>Training by <code>{_esc(s.config.get('trainer', ''))}</code>:</p>" + _settings(training)
            )
    return parts


def _training_chapter(sections: Sequence[Section]) -> list[str]:
    """Each model's training, the models side by side where the page is wide."""
    blocks = []
    for s in sections:
        m = s.metrics
        parts = [_heading(s)]
        final = m.get("train_objective")
        if "iterations" in m:
            done = "converged" if m.get("converged") else "stopped without converging"
            text = f"EM ran {_count(int(m['iterations']), 'iteration')} and {done}."
            if final is not None:
                text += f" The final training log-likelihood is {_nats(float(final), s.unit)}."
        elif "epochs" in m:
            text = (
                f"{_count(int(m['epochs']), 'epoch')} ({_count(int(m.get('steps', 0)), 'step')}); "
                f"stop reason: {_esc(m.get('stop_reason') or 'the planned epochs ran')}."
            )
            if final is not None:
                what = m.get("train_objective_is", "ELBO per point")
                text += f" Final training objective, the {_esc(what)}: {_nats(float(final), s.unit)}."
            if m.get("val_elbo") is not None:
                text += f" Validation ELBO after the last epoch: {_nats(float(m['val_elbo']), s.unit)}."
        else:
            text = "No training record."
        if m.get("wall_time_s") is not None:
            text += f" Wall time {float(m['wall_time_s']):.1f} s."
        parts.append(f"<p>{text}</p>")
        parts.extend(_figures(s, "training"))
        blocks.append("<div>" + "".join(parts) + "</div>")
    return ["<div class='side'>" + "".join(blocks) + "</div>"]


def likelihood_kind(section: Section) -> str:
    """Whether the section's log-likelihood is a "density" (continuous data) or a "probability"
    (binary or discrete data): the two are not comparable."""
    likelihood = str(section.data.get("likelihood", section.metrics.get("likelihood", ""))).lower()
    preprocessing = str(section.metrics.get("preprocessing", "")).lower()
    if "bernoulli" in likelihood or "categorical" in likelihood or "binar" in preprocessing:
        return "probability"
    return "density"


def _quality_chapter(sections: Sequence[Section]) -> list[str]:
    parts = []
    kinds = {likelihood_kind(s) for s in sections}
    if len(sections) > 1 and len(kinds) > 1:
        dens = ", ".join(s.name for s in sections if likelihood_kind(s) == "density")
        probs = ", ".join(s.name for s in sections if likelihood_kind(s) == "probability")
        parts.append(
            "<p class='note'><strong>These numbers are not comparable across models.</strong> "
            f"{_esc(dens)} is scored by a log-<em>density</em> of continuous pixel values (it can be "
            "positive and depends on the pixels' scale), "
            f"{_esc(probs)} by a log-<em>probability</em> of binary pixels (never above 0). They are "
            "different data and different units of measure: compare each model only with models of "
            "the same data and likelihood.</p>"
        )
    for s in sections:
        m, unit = s.metrics, s.unit
        parts.append(_heading(s))
        rows = []
        if m.get("test_log_likelihood") is not None:
            k = m.get("log_likelihood_samples")
            how = (
                "exact, z summed out"
                if k == "exact"
                else f"importance-sampled with {k} draws per {unit}, &plusmn; one standard error"
            )
            what = "log-density" if likelihood_kind(s) == "density" else "log-probability"
            rows.append(
                (
                    f"test log-likelihood ({what})",
                    f"{_nats(float(m['test_log_likelihood']), unit, m.get('test_log_likelihood_se'))} "
                    f"({how})",
                )
            )
        if m.get("test_elbo") is not None:
            rows.append(
                (
                    "test ELBO",
                    f"{_nats(float(m['test_elbo']), unit)} (a lower bound on the "
                    "log-likelihood; the gap is the guide's mean KL to the posterior)",
                )
            )
        elif "iterations" in m:
            rows.append(
                (
                    "test ELBO",
                    "not defined for EM: its posterior p(z | x) is exact, so the bound "
                    "equals the test log-likelihood above",
                )
            )
        parts.append(_table(rows) if rows else "<p>No held-out measure was computed for this model.</p>")
    parts.append("<p>Higher is better for every number here.</p>")
    return parts


def _diagnostics_chapter(sections: Sequence[Section], notes: Sequence[str]) -> list[str]:
    parts = [f"<p class='note'>{_esc(n)}</p>" for n in notes]
    for s in sections:
        figures = _figures(s, "diagnostics")
        if not figures and not s.notes:
            continue
        parts.append(_heading(s))
        parts.extend(f"<p class='note'>{_esc(n)}</p>" for n in s.notes)
        parts.extend(figures)
    return parts or ["<p>Nothing to report.</p>"]


def _samples_chapter(sections: Sequence[Section]) -> list[str]:
    parts = []
    for s in sections:
        figures = _figures(s, "samples")
        if figures:
            parts.append(_heading(s))
            parts.extend(figures)
    return parts or ["<p>No model of this run draws examples.</p>"]


def write_report(
    path: str | Path,
    title: str,
    sections: Sequence[Section],
    versions: Mapping[str, str],
    command: str = "",
    *,
    notes: Sequence[str] = (),
    full_config: Mapping[str, object] | None = None,
) -> Path:
    """Write the run's story as one self-contained HTML file (every figure inlined as a PNG),
    atomically: data and preprocessing, models and settings, training, held-out quality,
    diagnostics (with ``notes`` that concern every model) and samples, then the versions and
    each model's full configuration.

    Example:
        >>> import tempfile, os
        >>> s = Section("m", "a model", {"test_log_likelihood": -1.5, "log_likelihood_samples": "exact"})
        >>> p = write_report(os.path.join(tempfile.mkdtemp(), "r.html"), "t", [s], {})
        >>> "-1.50 nats per example" in p.read_text()
        True
    """
    chapters = {
        "data": _data_chapter(sections),
        "models": _models_chapter(sections),
        "training": _training_chapter(sections),
        "quality": _quality_chapter(sections),
        "diagnostics": _diagnostics_chapter(sections, notes),
        "samples": _samples_chapter(sections),
    }
    models = "; ".join(f"<strong>{_esc(s.name)}</strong>: {_esc(s.description)}" for s in sections)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        f"<p class='lede'>Written {_esc(time.strftime('%Y-%m-%d %H:%M:%S'))}"
        + (f" by <code>{_esc(command)}</code>" if command else "")
        + f". {models}.</p>",
        "<nav><ul>"
        + "".join(f"<li>{i}. <a href='#{a}'>{h}</a></li>" for i, (a, h) in enumerate(STORY, 1))
        + "<li><a href='#versions'>Versions and full configuration</a></li></ul></nav>",
    ]
    for number, (anchor, heading) in enumerate(STORY, 1):
        parts.append(f"<section id='{anchor}'><h2>{number}. {heading}</h2>")
        parts.extend(chapters[anchor])
        parts.append("</section>")
    parts.append("<section id='versions'><h2>Versions and full configuration</h2>")
    parts.append(_table([(_esc(k), _esc(v)) for k, v in versions.items()]))
    for s in sections:
        config = full_config.get(s.name) if full_config else None
        config = _esc(json.dumps(config if config is not None else s.config, indent=2, default=str))
        parts.append(
            f"<details><summary>{_esc(s.name)}: every setting, as stored</summary>"
            f"<pre>{config}</pre></details>"
        )
    parts.append("</section></body></html>")
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
