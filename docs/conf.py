"""Sphinx configuration of the lvm_pyro documentation.

Build (from the repository root; fails on any warning or broken cross-reference):

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

What the build generates before Sphinx reads anything (all of it ignored by git):

- ``docs/tutorials/NN_*.ipynb``: every ``tutorials/NN_*.py`` (jupytext percent script) as a
  notebook, executed by myst-nb in smoke mode (``LVM_PYRO_SMOKE=1``, the default here; set
  ``LVM_PYRO_SMOKE=0`` for the full tutorials). When ``LVM_PYRO_NOTEBOOKS`` names a folder of
  notebooks already executed by ``tests/test_tutorials.py`` from the same sources, those are
  rendered as they are and nothing is executed twice (CI does this).
- ``docs/api/index.rst``: the public API (``lvm_pyro.__all__``), grouped by subpackage, with
  autosummary pages generated from the docstrings.
- ``docs/benchmarks/results_*.md``: one page per ``benchmarks/results/*.md``.
- ``docs/_generated/cli_*.txt``: the command line's ``--help`` texts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TUTORIALS = ROOT / "tutorials"
sys.path.insert(0, str(ROOT))

# The notebooks' kernels inherit this environment: smoke mode unless asked otherwise, the
# tutorials' _common.py importable, figures shown inline (no file written), inline backend.
os.environ.setdefault("LVM_PYRO_SMOKE", "1")
os.environ.pop("LVM_PYRO_FIGURES", None)
os.environ.pop("MPLBACKEND", None)
os.environ["PYTHONWARNINGS"] = "ignore:IProgress not found"  # tqdm.auto in a kernel without ipywidgets
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(TUTORIALS), str(ROOT), os.environ.get("PYTHONPATH")])
)

import lvm_pyro  # noqa: E402

project = "lvm_pyro"
author = "the lvm_pyro authors"
copyright = "the lvm_pyro authors, Apache License 2.0"
release = version = lvm_pyro.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_copybutton",
]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme = "furo"
html_title = f"lvm_pyro {release}"
html_theme_options = {"navigation_with_keys": True}
html_show_sourcelink = False

# myst / myst-nb
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "auto"  # each tutorial notebook says "force" or "off" in its metadata
nb_execution_timeout = 1200  # per cell, seconds
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True  # a tutorial writes nothing into docs/
nb_merge_streams = True

# autodoc / autosummary / napoleon
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Offline builds: no intersphinx, so names from other packages are not linked. Every
# lvm_pyro name must resolve (see _resolve_to_public below).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|arviz|az|xarray|matplotlib|sklearn|scipy|tqdm|pandas)(\..*)?"),
    (r"py:.*", r"(collections|typing|os|pathlib|dataclasses|contextlib|enum|argparse|abc|types)\..*"),
    (r"py:.*", r"(Path|PathLike|Tensor|Figure|Axes|Callable|Sequence|Iterable|Iterator|Mapping|Any)"),
    (r"py:.*", r"(optional|callable|array-like|array_like|tensor|default .*|float|int|str|bool)"),
    (r"py:.*", r"(PyroModule|Module|Distribution|InferenceData|DataTree|ndarray|ELBO|Trace)"),
    (r"py:.*", r".*[ /].*"),  # napoleon reads "epochs / steps:" as a type; no Python name has a space
]


# ----------------------------------------------------------------------------- generated pages


def _write_if_changed(path: Path, text: str | bytes) -> None:
    """Rewrite a generated file only when its content changes, so incremental builds stay short."""
    data = text.encode() if isinstance(text, str) else text
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _source_digest(script: Path) -> str:
    """Same digest as tests/test_tutorials.py writes into the notebooks it keeps."""
    digest = hashlib.sha256(script.read_bytes())
    digest.update((TUTORIALS / "_common.py").read_bytes())
    return digest.hexdigest()


def _tutorial_notebooks() -> None:
    import jupytext

    out = DOCS / "tutorials"
    scripts = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
    smoke = os.environ["LVM_PYRO_SMOKE"] not in ("", "0")
    kept = Path(os.environ["LVM_PYRO_NOTEBOOKS"]) if os.environ.get("LVM_PYRO_NOTEBOOKS") else None
    for stale in set(out.glob("[0-9][0-9]_*.ipynb")) - {out / f"{s.stem}.ipynb" for s in scripts}:
        stale.unlink()
    for script in scripts:
        executed = kept / f"{script.stem}.ipynb" if kept else None
        if executed is not None and executed.is_file():
            notebook = jupytext.read(executed)
            if notebook.metadata.get("lvm_pyro") == {"source_sha256": _source_digest(script), "smoke": smoke}:
                notebook.metadata["mystnb"] = {"execution_mode": "off"}  # rendered as the tests ran it
                _write_if_changed(out / executed.name, jupytext.writes(notebook, fmt="ipynb"))
                continue
        notebook = jupytext.read(script)
        notebook.metadata["mystnb"] = {"execution_mode": "force"}  # executed by myst-nb
        _write_if_changed(out / f"{script.stem}.ipynb", jupytext.writes(notebook, fmt="ipynb"))


GROUPS = [
    ("Models", "lvm_pyro.models", "The model/guide pairs; subclass ``LatentVariableModel`` for your own."),
    ("Inference", "lvm_pyro.infer", "Training (``fit``, ``em``, ``mcmc``), callbacks and evaluation."),
    ("Estimators", "lvm_pyro.estimators", "The scikit-learn style facade."),
    ("Diagnostics", "lvm_pyro.diagnostics", "ArviZ export, PSIS, LOO, gradient variance, choosing K."),
    ("Data", "lvm_pyro.data", "Loading and validating data; the embedded digits; synthetic mixtures."),
]


def _api_page() -> None:
    import importlib
    import types

    groups: dict[str, list[str]] = {title: [] for title, _, _ in GROUPS}
    groups["Other"] = []
    modules = []
    for name in sorted(lvm_pyro.__all__, key=str.lower):
        obj = getattr(lvm_pyro, name)
        if isinstance(obj, types.ModuleType):
            modules.append(obj.__name__)
            continue
        home = getattr(obj, "__module__", "") or ""
        title = next((t for t, prefix, _ in GROUPS if home.startswith(prefix)), "Other")
        groups[title].append(name)
    lines = [
        "API reference",
        "=============",
        "",
        "Everything below is importable from the top-level package (``import lvm_pyro``) and",
        "generated from the docstrings. Full signatures, arguments and examples are on each page.",
        "",
        ".. currentmodule:: lvm_pyro",
        "",
    ]
    blurbs = {title: blurb for title, _, blurb in GROUPS}
    for title, names in groups.items():
        if not names:
            continue
        lines += [title, "-" * len(title), "", blurbs.get(title, ""), ""]
        lines += [".. autosummary::", "   :toctree: generated", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in names] + [""]
    lines += ["Modules", "-------", "", ".. autosummary::", "   :toctree: generated", ""]
    for module in sorted(set(modules)):
        importlib.import_module(module)
        lines.append(f"   {module.removeprefix('lvm_pyro.')}")
    _write_if_changed(DOCS / "api" / "index.rst", "\n".join(lines) + "\n")


BENCHMARK_TITLES = {
    "quality": "Model quality on the digits",
    "svi_overhead": "Speed of an SVI step",
    "evaluation": "Speed of the importance-sampled log-likelihood",
    "gmm_em": "Speed of EM for Gaussian mixtures",
}


def _benchmark_pages() -> None:
    out = DOCS / "benchmarks"
    results = sorted((ROOT / "benchmarks" / "results").glob("*.md"))
    for stale in set(out.glob("results_*.md")) - {out / f"results_{r.stem}.md" for r in results}:
        stale.unlink()
    for result in results:
        text = result.read_text()
        title = BENCHMARK_TITLES.get(result.stem, result.stem.replace("_", " ").capitalize())
        if text.startswith("# "):
            title, text = text.split("\n", 1)[0][2:], text.split("\n", 1)[1]
        script = ROOT / "benchmarks" / f"{result.stem}.py"
        how = f"Made by `python benchmarks/{script.name}`" if script.exists() else "Made by the benchmarks"
        page = (
            f"# {title}\n\n{how}; the table as it stands in `benchmarks/results/{result.name}`.\n\n"
            f"{text.strip()}\n"
        )
        _write_if_changed(out / f"results_{result.stem}.md", page)


def _cli_help() -> None:
    from lvm_pyro import cli

    parser = cli.build_parser()
    texts = {"lvm-pyro": parser.format_help()}
    for action in parser._actions:  # argparse exposes the subcommands only through its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                texts[f"lvm-pyro {name}"] = sub.format_help()
    body = "\n".join(f"$ {command} --help\n{text}" for command, text in texts.items())
    _write_if_changed(DOCS / "_generated" / "cli_help.txt", body)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli.main(["models"])
    _write_if_changed(DOCS / "_generated" / "cli_models.txt", "$ lvm-pyro models\n" + buffer.getvalue())


os.environ["COLUMNS"] = "88"  # argparse wraps --help to fit the code box of the page
_tutorial_notebooks()
_api_page()
_benchmark_pages()
_cli_help()


# ----------------------------------------------------------------------------- cross-references


def _lookup(dotted: str):
    """The object a dotted lvm_pyro name refers to, or None when there is none."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _resolve_to_public(app, env, node, contnode):
    """References to lvm_pyro objects that the reference does not document where they are named.

    A type hint names an object where it is defined (``lvm_pyro.infer.svi.FitResult``): the
    link goes to where users import it (``lvm_pyro.FitResult``). A name that exists but has no
    page of its own (a private base class, a module constant, a helper type such as
    ``EMState``) is shown as plain text. A name that does not exist still warns.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    candidates = [target]
    if not target.startswith("lvm_pyro."):
        # a short name, looked up where the documented object is defined
        documented = (
            _lookup(Path(node.get("refdoc", "")).name) if node.get("refdoc", "").startswith("api/") else None
        )
        homes = [node.get("py:module"), getattr(documented, "__module__", None)]
        candidates += [f"{home}.{target}" for home in homes if home]
    for name in candidates:
        if not name.startswith("lvm_pyro.") or _lookup(name) is None:
            continue
        short = name.rsplit(".", 1)[-1]
        if short in lvm_pyro.__all__ and _lookup(f"lvm_pyro.{short}") is _lookup(name):
            found = env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], f"lvm_pyro.{short}", node, contnode
            )
            if found is not None:
                return found
        return contnode
    return None


_LITERAL = re.compile(r"(``.+?``|:[a-z:]+:`[^`]+`|`[^`]+`_?)")


def _plain_text_maths(line: str) -> str:
    """Escape what plain-text maths in a docstring would start as reST markup by accident:
    ``|x|`` (a substitution), a lone ``*`` as in ``(S, *shape)`` (emphasis), ``weights_`` or
    ``x_-i`` (a link target), and a literal followed by a letter (````pyro.param````s).
    Literals and roles are left as written."""
    pieces = _LITERAL.split(line)
    for i in range(0, len(pieces), 2):
        text = pieces[i].replace("|", "\\|")
        text = re.sub(r"(?<=\w)_(?!\w)", r"\\_", text)  # weights_ and x_-i are not link targets
        if text.count("*") % 2 == 1 or re.search(r"\*\s|\s\*(?!\*)|\(\*", text):
            text = re.sub(r"(?<![\\*])\*(?!\*)", r"\\*", text)
        pieces[i] = text
    for i in range(1, len(pieces), 2):
        if i + 1 < len(pieces) and pieces[i].endswith("``") and re.match(r"\w", pieces[i + 1]):
            pieces[i] += "\\ "
    return "".join(pieces)


_GROUPED_ARGS = re.compile(r"^(\s+)(\w+) / (\w+):(.*)$")


def _grouped_args(app, what, name, obj, options, lines):
    """Before napoleon: an argument entry "epochs / steps: ..." becomes "epochs, steps: ...",
    which napoleon reads as two arguments sharing the description."""
    for i, line in enumerate(lines):
        lines[i] = _GROUPED_ARGS.sub(r"\1\2, \3:\4", line)


def _process_docstring(app, what, name, obj, options, lines):
    in_code, indent = False, 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith((">>>", "...")):
            continue
        if in_code and stripped and not line.startswith(" " * (indent + 1)):
            in_code = False
        if in_code:
            continue
        lines[i] = _plain_text_maths(line)
        if stripped.endswith("::") or stripped.startswith(".. code"):
            in_code, indent = True, len(line) - len(line.lstrip())


def _skip_metadata_routing(app, what, name, obj, skip, options):
    """scikit-learn generates ``set_{fit,partial_fit,score,...}_request`` on estimators whose
    methods take ``sample_weight``; their docstrings link scikit-learn's own glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_routing)
    app.connect("missing-reference", _resolve_to_public)
    app.connect("autodoc-process-docstring", _grouped_args, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _process_docstring, priority=600)  # after it
