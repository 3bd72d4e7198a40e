"""The run report reads as a story: chapters in order, a caption in words under every figure,
units on every number, the resolved configuration, and no ``None`` where a value belongs."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lvm_pyro import cli
from lvm_pyro.report import STORY, Section, caption, figure_png, model_figures, write_report

CHAPTERS = [heading for _, heading in STORY]


class _Report(HTMLParser):
    """The parts of a report the checks read: h2 headings, figures with their captions, the
    text of table cells and of the whole page, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.figures: list[dict] = []  # {"chapter", "alt", "caption"}
        self.cells: list[tuple[str, str]] = []  # (chapter, text) of every <td>
        self.text: list[str] = []
        self._stack: list[str] = []
        self._buffer: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        if tag == "figure":
            self.figures.append({"chapter": self.h2[-1] if self.h2 else "", "alt": "", "caption": None})
        if tag == "img" and self.figures:
            self.figures[-1]["alt"] = dict(attrs).get("alt", "")
        if tag in ("h2", "figcaption", "td"):
            self._buffer = []

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()
        if self._buffer is None or tag not in ("h2", "figcaption", "td"):
            return
        text = " ".join("".join(self._buffer).split())
        self._buffer = None
        if tag == "h2":
            self.h2.append(text)
        elif tag == "figcaption":
            self.figures[-1]["caption"] = text
        else:
            self.cells.append((self.h2[-1] if self.h2 else "", text))

    def handle_data(self, data):
        if self._stack and self._stack[-1] in ("style", "script"):
            return
        self.text.append(data)
        if self._buffer is not None:
            self._buffer.append(data)


def read_report(path: Path) -> _Report:
    parsed = _Report()
    parsed.feed(path.read_text(encoding="utf-8"))
    return parsed


def check_story(path: Path) -> _Report:
    """Every property a report must have, asserted; returns the parsed report."""
    report = read_report(path)
    numbered = [re.sub(r"^\d+\.\s*", "", h) for h in report.h2]
    assert numbered[: len(CHAPTERS)] == CHAPTERS, report.h2
    assert report.figures, "no figure"
    for fig in report.figures:
        words = (fig["caption"] or "").split()
        assert len(words) >= 12, f"figure {fig['alt']!r} has no caption in words: {fig['caption']!r}"
        assert fig["caption"] != fig["alt"].split(": ")[-1]
    text = " ".join(" ".join(report.text).split())
    assert not re.search(r"\bNone\b", text), text[max(text.find("None") - 200, 0) : text.find("None") + 50]
    # units: every number in the held-out chapter's cells is in nats per image/example
    quality = [t for chapter, t in report.cells if chapter.endswith("Held-out quality")]
    assert quality
    for cell in quality:
        if re.search(r"-?\d+\.\d+", cell):
            assert re.search(r"nats per (image|example)", cell), cell
    # the resolved configuration: settings, not an empty options dict
    assert "options: {}" not in text and "Model options" in text
    return report


def _png(seed: int = 0) -> bytes:
    fig = Figure(figsize=(2, 1.5))
    fig.subplots().plot(np.random.default_rng(seed).normal(size=20))
    return figure_png(fig)


def _sections() -> list[Section]:
    gmm = Section(
        "gmm",
        "Gaussian mixture by EM",
        {
            "preprocessing": "scaled: grey level / 16, in [0, 1]",
            "likelihood": "Gaussian",
            "train_objective": 30.7,
            "iterations": 25,
            "converged": True,
            "test_log_likelihood": 29.99,
            "test_log_likelihood_se": 0.55,
            "log_likelihood_samples": "exact",
        },
        {"components": _png(1), "loss": _png(2), "samples": _png(3)},
        config={
            "trainer": "em",
            "model options": {"n_components": 10, "covariance_type": "diag"},
            "training": {"max_iter": 200, "tol": 1e-4},
        },
        data={
            "description": "digits, scaled",
            "preprocessing": "scaled",
            "likelihood": "Gaussian",
            "splits": {"train": 1197, "val": 300, "test": 300},
        },
        unit="image",
        point_estimate=True,
    )
    vae = Section(
        "vae",
        "variational autoencoder",
        {
            "preprocessing": "binarized at >= 8 of the grey levels 0..16",
            "likelihood": "Bernoulli",
            "train_objective": -22.75,
            "train_objective_is": "ELBO per point",
            "epochs": 20,
            "steps": 360,
            "stop_reason": "completed",
            "kl_warmup_epochs": 5.0,
            "ended_in_kl_warmup": False,
            "val_elbo": -22.7,
            "test_log_likelihood": -22.2,
            "test_log_likelihood_se": 0.25,
            "test_elbo": -22.8,
            "log_likelihood_samples": 50,
            "wall_time_s": 12.5,
        },
        {"samples": _png(4), "khat": _png(5), "latent": _png(6), "loss": _png(7), "reconstructions": _png(8)},
        notes=["Warning: something the run said"],
        config={
            "trainer": "fit",
            "model options": {"latent_dim": 16, "hidden": (256, 256)},
            "training": {"objective": "reparam", "epochs": 20, "kl_warmup": "5 epochs"},
        },
        data={"description": "digits, binarized", "preprocessing": "binarized", "likelihood": "Bernoulli"},
        facts={"khat_points": 200, "khat_bad": 7, "khat_ok": 40, "khat_samples": 200, "latent_dim": 16},
        unit="image",
    )
    return [gmm, vae]


def test_the_report_is_a_story_with_captions_units_and_settings(tmp_path):
    path = write_report(
        tmp_path / "r.html",
        "run",
        _sections(),
        {"torch": "2"},
        "lvm-pyro run",
        notes=["The ArviZ file holds one point estimate."],
    )
    report = check_story(path)
    # figures sit in the chapter that tells their part of the story, in story order
    where = {fig["alt"]: fig["chapter"] for fig in report.figures}
    assert where["gmm: loss"].endswith("Training") and where["vae: khat"].endswith("Diagnostics")
    assert where["vae: samples"].endswith("Samples") and where["gmm: components"].endswith("Samples")
    order = [fig["alt"] for fig in report.figures]
    assert order.index("vae: loss") < order.index("vae: khat") < order.index("vae: samples")
    text = " ".join(report.text)
    # a mixture's density and a VAE's probability are side by side only with the warning
    assert "not comparable across models" in text
    assert "not defined for EM" in text
    assert "7 of 200 are above 0.7" in text and "0.5" in text
    assert "n_components" in text and "reparam" in text and "5 epochs" in text


def test_one_model_of_one_kind_gets_no_comparability_warning(tmp_path):
    path = write_report(tmp_path / "r.html", "run", _sections()[1:], {})
    report = check_story(path)
    assert "not comparable" not in " ".join(report.text)


def test_captions_say_what_a_loss_curve_is_during_the_warm_up():
    vae = _sections()[1]
    text = caption("loss", vae)
    assert "annealed" in text and "5 epochs" in text and "nats per image" in text
    vae.metrics = {**vae.metrics, "kl_warmup_epochs": 0.0}
    assert "no KL warm-up" in caption("loss", vae)
    vae.metrics = {**vae.metrics, "kl_warmup_epochs": 50.0, "ended_in_kl_warmup": True}
    assert "ended inside it" in caption("loss", vae)
    khat = caption("khat", vae)
    assert "0.5" in khat and "0.7" in khat


def test_model_figures_say_which_points_have_a_high_k_hat():
    from lvm_pyro.models.vae import VAE

    torch.manual_seed(0)
    vae = VAE((64,), latent_dim=2, hidden=(8,))
    x = (torch.rand(30, 64) > 0.5).float()
    figs, notes, facts = model_figures(vae, None, x, torch.arange(30) % 3, (8, 8), khat_samples=20)
    assert set(figs) == {"samples", "reconstructions", "latent", "khat"} and notes == []
    assert facts["khat_points"] == 30 and 0 <= facts["khat_bad"] <= 30 and facts["latent_dim"] == 2
    # the figures' own titles are short (the caption says the rest) and readable: >= 9 pt
    for fig in figs.values():
        for ax in fig.axes:
            assert len(ax.get_title()) < 60
            assert ax.xaxis.label.get_fontsize() >= 9


def test_the_report_of_a_fit_run_tells_the_story(tmp_path, capsys):
    argv = [
        "fit",
        "vae",
        "--data",
        "digits",
        "--out",
        str(tmp_path),
        "--name",
        "v",
        "--quiet",
        "--epochs",
        "2",
        "--kl-warmup",
        "1",
        "--num-samples",
        "5",
        "--option",
        "hidden=(8,)",
        "--option",
        "latent_dim=2",
    ]
    assert cli.main(argv) == 0
    report = check_story(tmp_path / "v" / "report.html")
    text = " ".join(report.text)
    # the resolved configuration: the options given and the defaults filled in
    assert "latent_dim" in text and "likelihood" in text and "bernoulli" in text and "encoder" in text
    assert "1 epochs" in text or "1 epoch" in text
    err = capsys.readouterr().err
    # the export's point-estimate warning is said once, in words, not dumped raw
    assert err.count("one point estimate") == 1 and "every draw of this InferenceData" not in err
    assert "one point estimate" in text
    metrics = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert None not in metrics.values()


def test_an_em_run_reports_no_test_elbo_none(tmp_path):
    assert (
        cli.main(
            [
                "fit",
                "gmm",
                "--data",
                "digits",
                "--out",
                str(tmp_path),
                "--name",
                "g",
                "--quiet",
                "--option",
                "n_components=3",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert None not in metrics.values() and "test_elbo" not in metrics
    assert metrics["log_likelihood_samples"] == "exact"
    report = check_story(tmp_path / "g" / "report.html")
    text = " ".join(report.text)
    assert "not defined for EM" in text and "n_components" in text and "max_iter" in text


@pytest.mark.parametrize(
    "name",
    ["loss", "khat", "latent", "samples", "reconstructions", "components", "completions", "samples by label"],
)
def test_every_figure_name_has_its_own_caption(name):
    section = _sections()[1]
    text = caption(name, section)
    assert len(text.split()) >= 12 and not text.startswith("Figure:")


def test_sections_print_briefly():
    assert len(repr(_sections()[1])) < 120
