"""``lvm-pyro``: the command line.

    lvm-pyro run                          the main job on the embedded digits: a Gaussian
                                          mixture by EM, a VAE, diagnostics, one HTML report
    lvm-pyro fit MODEL --data digits      train a registered model, write runs/<name>/
    lvm-pyro evaluate RUN                 held-out ELBO and importance-sampled log-likelihood
    lvm-pyro sample RUN                   draw new examples from a trained model
    lvm-pyro resume RUN                   continue an interrupted or finished `fit` run
    lvm-pyro models | info                the registered models | versions and device

A run directory holds ``checkpoint.pt`` (training state, ``fit`` runs), ``model.pt`` (the
trained weights), ``config.json``, ``metrics.json`` (deterministic for a seed: no timings),
``timing.json``, ``figures/*.png``, ``inference_data.nc`` (ArviZ) and ``report.html``
(self-contained). Every file is written to a temporary file and renamed; a run directory is
created atomically (two commands given the same ``--name`` cannot both get it), locked while a
command writes to it, and removed again when a new run fails before its first checkpoint.

The data is never transformed silently. ``--data digits`` (grey levels 0..16) is binarized at
>= 8 for the models with a Bernoulli likelihood and scaled to [0, 1] for the mixture, as each
model registers; a user's file is used as stored, and the likelihood follows it: data of 0s
and 1s gets a Bernoulli likelihood, anything else the model's likelihood for real data
(Gaussian), unless ``--binarize T`` (x >= T -> 1, refused where it would leave one value) or
``--option likelihood=...`` says otherwise. The console, ``metrics.json`` and the report state
what preprocessing ran. NaN or inf in a file is refused with its row and column.

Errors a user can cause print one line naming the fix and exit with status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import inspect
import json
import math
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch

from lvm_pyro.data import DigitsData, load_dataset, resolve_device
from lvm_pyro.diagnostics import arviz as arviz_adapter
from lvm_pyro.diagnostics.export import to_inference_data
from lvm_pyro.errors import CheckpointError, ConfigurationError, DataError, DiagnosticWarning, LVMError
from lvm_pyro.infer.checkpoint import CHECKPOINT_NAME, RunLock, load_checkpoint, save_checkpoint
from lvm_pyro.infer.em import em
from lvm_pyro.infer.evaluate import elbo, log_likelihood
from lvm_pyro.infer.objectives import OBJECTIVES
from lvm_pyro.infer.svi import fit
from lvm_pyro.infer.trainer import Checkpointing
from lvm_pyro.models.registry import ModelEntry, accepted_options, available_models, get_model, model_options
from lvm_pyro.report import (
    Section,
    atomic_output,
    draw,
    likelihood_kind,
    model_figures,
    remove_stray_outputs,
    save_figures,
    write_report,
)

#: settings of ``fit`` a flag can override (``trainer="fit"`` models only)
FIT_OVERRIDES = ("objective", "epochs", "steps", "batch_size", "lr", "kl_warmup")
#: what ``lvm-pyro resume`` may change: safe for a resumed run
RESUME_OVERRIDES = ("epochs", "steps", "lr")
LOCK_NAME = ".lvm-pyro.lock"
_TMP_DIR_SUFFIX = ".lvm-pyro-new"
_STALE_SECONDS = 60.0
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 1_000_000
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.+\-]*\Z")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the library runs on."""
    import lvm_pyro

    return {
        "lvm_pyro": lvm_pyro.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        **arviz_adapter.versions(),
    }


# ------------------------------------------------------------------------------------------
# Flags: every value checked before anything runs
# ------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``lvm-pyro fit: error: ... (see lvm-pyro fit --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """A flag value that must be a whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: pass a whole number >= 1")
    return value


def seed_value(text: str) -> int:
    """A seed: a whole number in [0, 2**32 - 1] (numpy's and Pyro's range)."""
    value = _int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_SEED}: pass a seed in that range")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """A flag value that must be a finite number > 0 (a learning rate)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not > 0: pass a positive number such as 1e-3")
    return value


def warmup_epochs(text: str) -> float:
    """``--kl-warmup``: epochs of linear KL annealing, a finite number >= 0 (0: none)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative: pass epochs >= 0 (0 switches warm-up off)")
    return value


def binarize_value(text: str) -> float | str:
    """``--binarize``: a threshold (x >= T -> 1, else 0) or ``none`` (no binarization)."""
    if text.strip().lower() == "none":
        return "none"
    try:
        return _float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number nor 'none': pass a threshold T (x >= T becomes 1) or none"
        ) from None


def run_name(text: str) -> str:
    """``--name``: one folder name (no path separators, not hidden)."""
    if not text or text.startswith(".") or any(c in text for c in ("/", os.sep, "\0")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain folder name: pass a name such as vae-1 (--out sets the parent folder)"
        )
    return text


def parse_options(pairs: list[str]) -> dict:
    """``--option key=value`` pairs as a dict: values are Python literals (numbers, quoted
    strings, tuples, True/False/None) or bare words taken as strings (``likelihood=gaussian``).

    Example:
        >>> parse_options(["latent_dim=8", "hidden=(64, 64)", "likelihood=gaussian"])
        {'latent_dim': 8, 'hidden': (64, 64), 'likelihood': 'gaussian'}
    """
    options: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigurationError(f"--option takes key=value, got {pair!r}: e.g. --option latent_dim=8")
        if not key.isidentifier():
            raise ConfigurationError(
                f"--option {pair!r}: {key!r} is not an option name; names are identifiers such as latent_dim"
            )
        if key in options:
            raise ConfigurationError(f"--option {key}= is given twice: pass each option once")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if not _WORD.match(value):
                raise ConfigurationError(
                    f"--option {key}={value}: the value is not a literal; pass a number, a word or "
                    "quoted string, True/False/None or a tuple such as (64, 64) (objects such as "
                    "GMMPrior() cannot be built on the command line: use the Python API)"
                ) from None
            options[key] = value
    return options


# ------------------------------------------------------------------------------------------
# Run directories: atomic creation, one writer, atomic files, nothing left behind on failure
# ------------------------------------------------------------------------------------------


def run_lock(directory: Path) -> RunLock:
    """The lock one command holds on a run while it writes to it: ``DIR/.lvm-pyro.lock``, another
    file than the checkpoint lock ``fit`` holds, so the two never block each other. A second
    command on the same run gets a :class:`CheckpointError` at once; the operating system drops
    the lock when its holder dies (kill -9 included)."""
    return RunLock(directory, name=LOCK_NAME, busy=(
        f"run {str(directory)!r} is in use by another lvm-pyro command (fit, run or resume): wait "
        "for it to finish; two writers would mix their results"
    ))


def _make_parent(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"--out {str(folder)!r} is a file: pass a folder to hold run directories")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"--out {str(folder)!r} cannot be created ({exc.strerror}): pass a writable folder"
        ) from None


def _refuse_existing(directory: Path) -> None:
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigurationError(
            f"run directory {str(directory)!r} exists: pass another --name, or `lvm-pyro resume` it"
        )


def _remove_stale_new_directories(folder: Path) -> None:
    """Remove half-made run directories of commands that died (unlocked and a minute old)."""
    for entry in folder.glob(f".*{_TMP_DIR_SUFFIX}"):
        try:
            if not entry.is_dir() or time.time() - entry.stat().st_mtime < _STALE_SECONDS:
                continue
            lock = run_lock(entry).acquire()
        except (LVMError, OSError):
            continue  # in use, or gone meanwhile
        shutil.rmtree(entry, ignore_errors=True)
        lock.release()


def create_run_directory(directory: Path, config: dict | None = None) -> RunLock:
    """Create ``directory`` atomically and return its lock, held.

    The directory is made under a temporary name, locked, given its ``config.json`` and then
    renamed into place: a rename onto an existing non-empty directory fails, so of two commands
    given the same name exactly one gets it (the other a clear error), and no half-written run
    is ever visible.
    """
    _make_parent(directory.parent)
    _refuse_existing(directory)
    _remove_stale_new_directories(directory.parent)
    try:
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.",
                                    suffix=_TMP_DIR_SUFFIX))
    except OSError as exc:
        raise ConfigurationError(
            f"--out {str(directory.parent)!r} cannot be written ({exc.strerror}): pass a writable folder"
        ) from None
    lock = run_lock(tmp).acquire()
    try:
        if config is not None:
            _write_json(tmp / "config.json", config)
        os.rename(tmp, directory)
    except OSError as exc:
        lock.release()
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise ConfigurationError(
                f"run directory {str(directory)!r} exists: pass another --name, or `lvm-pyro resume` it"
            ) from None
        raise ConfigurationError(
            f"run directory {str(directory)!r} cannot be created ({exc.strerror}): pass a writable --out"
        ) from None
    lock.directory = directory
    return lock


def _has_checkpoint(directory: Path) -> bool:
    return any(directory.rglob(CHECKPOINT_NAME))


@contextmanager
def new_run_directory(directory: Path, config: dict | None = None) -> Iterator[Path]:
    """A freshly created, locked run directory; if the command fails before the run has a
    checkpoint the directory is removed (nothing left behind), else kept for ``resume``."""
    lock = create_run_directory(directory, config)
    try:
        yield directory
    except BaseException:
        if _has_checkpoint(directory):
            print(f"lvm-pyro: the run is kept in {directory}: continue it with "
                  f"`lvm-pyro resume {directory}` (--lr sets a new learning rate)", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        lock.release()


@contextmanager
def locked_run(directory: Path) -> Iterator[Path]:
    """An existing run directory, locked for this command, its stray temporary files removed."""
    lock = run_lock(directory).acquire()
    try:
        remove_stray_outputs(directory)
        remove_stray_outputs(directory / "figures")
        yield directory
    finally:
        lock.release()


def _write_json(path: Path, value: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")


def _read_config(path: Path) -> dict:
    """A run's ``config.json``, checked: a damaged or foreign file is refused with the fix."""
    file = path / "config.json"
    if not path.is_dir() or not file.is_file():
        raise ConfigurationError(f"{str(path)!r} is not a run directory (no config.json): pass runs/<name>")
    damaged = (f"{str(file)!r} is damaged or not an lvm-pyro run configuration ({{}}): the run cannot "
               "be read; start a new one with `lvm-pyro fit`")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigurationError(damaged.format(f"not valid JSON: {exc.msg} at line {exc.lineno}")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(damaged.format(type(exc).__name__)) from None
    if not isinstance(config, dict):
        raise ConfigurationError(damaged.format("not a JSON object"))
    expected = {"model": str, "data": str, "seed": int, "options": dict, "overrides": dict}
    for key, kind in expected.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise ConfigurationError(damaged.format(f"{key!r} missing or not a {kind.__name__}"))
    if not 0 <= config["seed"] <= MAX_SEED:
        raise ConfigurationError(damaged.format(f"seed {config['seed']} out of range"))
    for key in ("auto_options",):
        if not isinstance(config.get(key, {}), dict):
            raise ConfigurationError(damaged.format(f"{key!r} is not a JSON object"))
    return config


# ------------------------------------------------------------------------------------------
# Data, model and preprocessing
# ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A model with its data and configuration, as the subcommands share it."""

    directory: Path
    entry: ModelEntry
    model: object
    data: DigitsData
    config: dict
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Run({str(self.directory)!r}, model={self.config.get('model')!r})"

    def split(self, name: str):
        return self.entry.prepare(getattr(self.data, name))


def _is_digits(spec: str) -> bool:
    return spec.strip().lower() == "digits"


def _data_options(entry: ModelEntry, spec: str, binarize, options: dict) -> dict:
    """How ``load_dataset`` prepares the data for this model: the model's registered options
    apply to the digits; a user's file is used as stored unless ``--binarize`` is given."""
    opts = dict(entry.data_options)
    likelihood = options.get("likelihood")
    if binarize is not None and binarize != "none":
        opts["binarize"] = binarize
    elif binarize == "none" or not _is_digits(spec) or likelihood in ("gaussian", "categorical"):
        opts.pop("binarize", None)
        if likelihood == "categorical":
            opts["scale"] = False  # the digits' 17 grey levels 0..16
    return opts


def _value_range(data: DigitsData) -> tuple[float, float]:
    xs = [s.x for s in (data.train, data.val, data.test) if s.x.numel()]
    return min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)


def _build_model(entry: ModelEntry, data: DigitsData, options: dict, seed: int):
    """``entry.build(data, **options)`` with every random number seeded first."""
    accepted = accepted_options(entry)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "(none)"
            raise ConfigurationError(
                f"bad --option for model {entry.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {valid}"
            )
    pyro.set_rng_seed(seed)
    try:
        return entry.build(data, **options)
    except TypeError as exc:
        if not options:
            raise  # no option given: a TypeError here is a defect, not a user error
        raise ConfigurationError(
            f"bad --option for model {entry.name!r}: {exc}; see the model's docstring for its options"
        ) from None


def _check_support(entry: ModelEntry, model, data: DigitsData, spec: str, kind: str) -> None:
    support = getattr(model, "data_support", "real")
    lo, hi = _value_range(data)
    where = f"--data {spec} holds {kind} values in [{lo:g}, {hi:g}]"
    if support == "binary" and kind != "binary":
        raise ConfigurationError(
            f"model {entry.name!r} has a Bernoulli likelihood, which needs data of 0s and 1s, but {where}: "
            f"pass --binarize T with {lo:g} < T <= {hi:g}, or --option likelihood=gaussian"
        )
    if support == "count" and kind == "real":
        raise ConfigurationError(
            f"model {entry.name!r} has a categorical likelihood, which needs integer levels 0, 1, ..., but "
            f"{where}: use --option likelihood=gaussian"
        )
    if support == "unit_interval" and (lo < 0 or hi > 1):
        raise ConfigurationError(f"model {entry.name!r} needs values in [0, 1] but {where}: rescale them")
    if support == "positive" and lo <= 0:
        raise ConfigurationError(f"model {entry.name!r} needs positive values but {where}: transform them")


def _likelihood_of(model) -> str | None:
    """The name of a model's likelihood (``"bernoulli"``, ...) where it has one by name."""
    for owner in (model, getattr(model, "decoder", None)):
        likelihood = getattr(owner, "likelihood", None)
        if isinstance(likelihood, str):
            return likelihood
    return None


def _likelihood_note(model, kind: str, auto: bool) -> str:
    likelihood = _likelihood_of(model)
    if not isinstance(likelihood, str) and isinstance(getattr(model, "covariance_type", None), str):
        return f"Gaussian per mixture component ({model.covariance_type} covariance), on {kind} data"
    if not isinstance(likelihood, str):
        return f"the model's own ({type(model).__name__}) on {kind} data"
    names = {"bernoulli": "Bernoulli", "gaussian": "Gaussian", "categorical": "categorical"}
    text = names.get(likelihood, likelihood)
    return f"{text}" + (f" (chosen because the data are {kind}-valued, not 0/1)" if auto else "")


def prepare_run(config: dict) -> tuple[ModelEntry, DigitsData, object, dict]:
    """Load the data and build the seeded model a run configuration describes.

    A fresh configuration (no ``"auto_options"`` yet) gets the likelihood chosen from the data
    (a Bernoulli model on data other than 0/1 is given ``likelihood="gaussian"``) and the
    statement of the preprocessing; a stored one is rebuilt exactly as it was.
    """
    entry = get_model(config["model"])
    options = dict(config["options"])
    spec = config["data"]
    if "binarize" in config:
        data_options = _data_options(entry, spec, config["binarize"], options)
    else:  # a run written before --binarize existed was prepared by the model's data options alone
        data_options = dict(entry.data_options)
    data = load_dataset(spec, labels=config.get("labels"), seed=config["seed"], **data_options)
    for name in ("val", "test"):
        if len(getattr(data, name).x) == 0:
            n = sum(len(s.x) for s in (data.train, data.val, data.test))
            raise DataError(
                f"--data {spec} has {n} examples, too few to split into train, validation and test "
                "(2/3, 1/6, 1/6): pass at least 6 examples"
            )
    for name in ("train", "val", "test"):  # a model's own requirement of the data (labels, ...)
        entry.prepare(getattr(data, name))
    kind = data.values
    stored = "auto_options" in config
    auto = dict(config.get("auto_options", {}))
    model = _build_model(entry, data, {**options, **auto}, config["seed"])
    chosen = "likelihood" in options or stored
    if not chosen and _likelihood_of(model) == "bernoulli" and kind != "binary":
        auto["likelihood"] = "gaussian"
        model = _build_model(entry, data, {**options, **auto}, config["seed"])
    _check_support(entry, model, data, spec, kind)
    preprocessing = data.preprocessing
    if preprocessing == "none":
        lo, hi = _value_range(data)
        preprocessing = f"none: {kind}-valued data used as stored, values in [{lo:g}, {hi:g}]"
    config = {**config, "auto_options": auto, "preprocessing": preprocessing,
              "likelihood": _likelihood_note(model, kind, "likelihood" in auto)}
    return entry, data, model, config


def _open_run(path: Path, *, trained: bool) -> Run:
    """The run in ``path``, rebuilt from its config; ``trained``: its weights must be there."""
    config = _read_config(path)
    entry, data, model, config = prepare_run(config)
    weights = path / "model.pt"
    if weights.is_file():
        state = load_checkpoint(weights).get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"{str(weights)!r} holds no state_dict: run `lvm-pyro fit` again")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{str(weights)!r} does not fit the model config.json describes ({first}): the run is "
                "damaged; run `lvm-pyro fit` again"
            ) from None
    elif trained:
        fix = "`lvm-pyro fit` again" if entry.trainer == "em" else f"`lvm-pyro resume {path}` to finish it"
        raise ConfigurationError(f"{str(path)!r} holds no trained model (model.pt): run {fix}")
    return Run(path, entry, model, data, config)


# ------------------------------------------------------------------------------------------
# Training, metrics and outputs
# ------------------------------------------------------------------------------------------


def _held_out(run: Run, num_samples: int, seed: int) -> dict:
    test = run.split("test")
    metrics: dict = {}
    if run.entry.trainer == "em" and hasattr(run.model, "log_prob"):  # exact: z summed out
        values = run.model.log_prob(test).double()
        metrics["test_log_likelihood"] = float(values.mean())
        metrics["test_log_likelihood_se"] = float(values.std() / len(values) ** 0.5)
        metrics["log_likelihood_samples"] = "exact"
        return metrics
    ll = log_likelihood(run.model, test, num_samples=num_samples, seed=seed)
    metrics["test_log_likelihood"], metrics["test_log_likelihood_se"] = ll.mean, ll.stderr
    metrics["log_likelihood_samples"] = num_samples
    if run.entry.trainer == "fit":
        metrics["test_elbo"] = elbo(run.model, test, seed=seed)
    return metrics


def _train(run: Run, args: argparse.Namespace, resume: bool = False):
    settings = dict(run.entry.fit_options)
    settings.update(run.config.get("overrides", {}))
    train, val = run.split("train"), run.split("val")
    if run.entry.trainer == "em":
        return em(run.model, train, seed=run.config["seed"], device=args.device,
                  progress=not args.quiet, **settings)
    if "steps" in settings:
        settings.pop("epochs", None)
    return fit(run.model, train, val_data=val, device=args.device, seed=run.config["seed"],
               progress=not args.quiet, checkpoint=Checkpointing(run.directory, resume=resume),
               **_fit_keywords(settings))


def _fit_keywords(settings: dict) -> dict:
    """``settings`` with the objective under the name ``fit`` takes: ``objective`` (the
    current name; the registry and the command line use it) or ``estimator`` (its old name,
    still in the ``config.json`` of runs written before the rename)."""
    name = "objective" if "objective" in inspect.signature(fit).parameters else "estimator"
    settings = dict(settings)
    for key in ("objective", "estimator"):
        if key in settings and key != name:
            settings[name] = settings.pop(key)
    return settings


def _objective_kind(result) -> tuple[str, bool]:
    """What the training objective is, and whether the run ended inside the KL warm-up."""
    if not hasattr(result, "val_elbo"):
        return "mean log-likelihood per point (EM, exact)", False
    warmup = float(result.config.get("kl_warmup") or 0.0)
    betas = getattr(result, "betas", None)  # the KL weight of each step, where fit records it
    if betas:
        last = float(betas[-1])
    elif warmup > 0:
        last = min(1.0, result.steps / max(result.config.get("steps_per_epoch") or 1, 1) / warmup)
    else:
        last = 1.0
    if warmup > 0 and last < 1:
        return (f"annealed ELBO per point (KL weight {last:.2g} < 1 at the last step: the run ended inside "
                f"the {warmup:g}-epoch KL warm-up)"), True
    if warmup > 0:
        return f"ELBO per point (after a {warmup:g}-epoch KL warm-up)", False
    return "ELBO per point", False


#: what the command line says, once, in place of the export's warning that its draws share one
#: point estimate of the globals
POINT_ESTIMATE_NOTE = (
    "The ArviZ file inference_data.nc of {who} holds one point estimate of the global parameters "
    "({what}), not draws from a posterior over them: its az.summary shows no spread, and "
    "LOO computed from it is only the in-sample log-likelihood. Compare models by their held-out "
    "log-likelihood (section 4 of the report), not by LOO."
)


def _export(result, test, seed: int) -> tuple[object, bool, list[str]]:
    """The run's InferenceData; whether its draws share one point estimate of the globals (said
    once in words by the caller instead of the export's warning); and other warnings' texts."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DiagnosticWarning)
        idata = to_inference_data(result, test, num_samples=100, seed=seed)
    point_estimate, others = False, []
    for w in caught:
        if issubclass(w.category, DiagnosticWarning) and "one point estimate" in str(w.message):
            point_estimate = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            others.append(str(w.message))
    return idata, point_estimate, others


def _resolved_config(run: Run, result) -> dict:
    """The settings the run used, defaults filled in: the model's options and the trainer's."""
    given = {**run.config.get("options", {}), **run.config.get("auto_options", {})}
    options = model_options(run.entry)
    if options is None:  # build forwards **options to a class it does not name: the model's own
        options = model_options(dataclasses.replace(run.entry, options=type(run.model)))
    model = dict(given) if options is None else {
        k: given.get(k, v) for k, v in options.items() if k in given or v is not inspect.Parameter.empty
    }
    model = {k: (v.__name__ if isinstance(v, type) else v) for k, v in model.items()}
    used = dict(getattr(result, "config", {}) or {})
    if run.entry.trainer == "em":
        keys = ("max_iter", "tol", "n_init", "init", "e_step", "m_step", "seed", "device", "dtype")
        training = {k: used[k] for k in keys if k in used}
    else:
        used.setdefault("objective", used.get("estimator"))
        training = {"objective": used.get("objective"), "epochs": getattr(result, "epochs", None),
                    "steps": getattr(result, "steps", None)}
        keys = ("batch_size", "optimizer", "lr", "clip_norm", "num_particles", "kl_warmup", "seed",
                "device", "dtype")
        training.update((k, used[k]) for k in keys if k in used)
        if "kl_warmup" in training:
            training["kl_warmup"] = f"{float(training['kl_warmup'] or 0):g} epochs"
    return {"trainer": run.entry.trainer, "model options": model,
            "training": {k: v for k, v in training.items() if v is not None}}


def _unit(data: DigitsData) -> str:
    return "image" if data.image_size is not None else "example"


def _finish(run: Run, result, args: argparse.Namespace) -> tuple[dict, Section]:
    """Weights, metrics, figures, ArviZ file and report of a trained run, each written atomically;
    returns the metrics and the run's part of a report."""
    module = run.model
    save_checkpoint(run.directory / "model.pt", {"state_dict": module.state_dict()})
    kind, in_warmup = _objective_kind(result)
    metrics = {"preprocessing": run.config["preprocessing"], "likelihood": run.config["likelihood"],
               "train_objective": _train_objective(result), "train_objective_is": kind}
    if hasattr(result, "val_elbo"):
        metrics.update(epochs=result.epochs, steps=result.steps, stop_reason=result.stop_reason,
                       kl_warmup_epochs=float(result.config.get("kl_warmup") or 0.0),
                       ended_in_kl_warmup=in_warmup)
        if result.val_elbo:
            metrics["val_elbo"] = result.val_elbo[-1]
    else:
        metrics.update(iterations=result.n_iter, converged=result.converged)
    metrics.update(_held_out(run, args.num_samples, run.config["seed"]))
    notes = []
    if in_warmup:
        note = (f"The run ended inside the KL warm-up, so the training curve and train_objective are the "
                f"annealed objective, not the ELBO: continue it past {result.config['kl_warmup']:g} epochs "
                f"(`lvm-pyro resume {run.directory} --epochs N`), or fit with a shorter --kl-warmup.")
        notes.append(note)
        print(f"lvm-pyro: note: {note}", file=sys.stderr)
    notes.extend(f"Warning: {w}" for w in run.notes)
    test = run.split("test")
    figs, fig_notes, facts = model_figures(module, result, test, run.data.test.y, run.data.image_size,
                                           seed=run.config["seed"])
    pngs = save_figures(figs, run.directory / "figures")
    idata, point_estimate, export_warnings = _export(result, test, run.config["seed"])
    notes.extend([*fig_notes, *(f"Warning: {w}" for w in export_warnings)])
    with atomic_output(run.directory / "inference_data.nc") as tmp:
        arviz_adapter.to_netcdf(idata, tmp)
    _write_json(run.directory / "metrics.json", metrics)
    _write_json(run.directory / "timing.json", {"wall_time_s": result.wall_time,
                                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    splits = {name: len(getattr(run.data, name).x) for name in ("train", "val", "test")}
    data = {"description": run.data.description, "preprocessing": run.config["preprocessing"],
            "likelihood": run.config["likelihood"], "splits": splits}
    section = Section(run.config["model"], run.entry.description,
                      {**metrics, "wall_time_s": result.wall_time}, pngs, notes,
                      _resolved_config(run, result), data, facts, _unit(run.data), point_estimate)
    shared = []
    if point_estimate:
        shared.append(_point_estimate_note([section]))
        if not getattr(args, "in_story", False):
            print(f"lvm-pyro: note: {shared[-1]}", file=sys.stderr)
    write_report(run.directory / "report.html", f"lvm-pyro run {run.directory.name}", [section],
                 versions(), args.command_line, notes=shared,
                 full_config={section.name: {**run.config, "result": getattr(result, "config", {})}})
    return metrics, section


def _point_estimate_note(sections: list[Section]) -> str:
    kinds = {"em": "EM's maximum-likelihood parameters", "fit": "the trained network weights"}
    what = " or ".join(kinds[k] for k in sorted({s.config.get("trainer", "fit") for s in sections}))
    return POINT_ESTIMATE_NOTE.format(who=" and ".join(s.name for s in sections), what=what)


def _train_objective(result) -> float:
    return result.elbo if hasattr(result, "elbo") else result.log_likelihood[-1]


def _summary(name: str, metrics: dict) -> str:
    ll = metrics["test_log_likelihood"]
    return (f"{name}: test log-likelihood {ll:.3f} +- {metrics['test_log_likelihood_se']:.3f} nats "
            f"per example (k={metrics['log_likelihood_samples']})")


def _fit_overrides(entry: ModelEntry, args: argparse.Namespace, names=FIT_OVERRIDES) -> dict:
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if entry.trainer == "em" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigurationError(
            f"model {entry.name!r} is trained by EM, which takes no {flags}: drop it (EM runs to "
            f"convergence, at most {entry.fit_options.get('max_iter', 'its default')} iterations)"
        )
    if given.get("epochs") is not None and given.get("steps") is not None:
        raise ConfigurationError("pass --epochs or --steps, not both")
    return given


def _check_common(args: argparse.Namespace) -> None:
    resolve_device(args.device)


def _new_config(model_name: str, args: argparse.Namespace, overrides: dict) -> dict:
    data = str(args.data)
    if not _is_digits(data) and Path(data).expanduser().exists():
        data = str(Path(data).expanduser().resolve())  # resume and evaluate work from any folder
    labels = None if args.labels is None else str(Path(args.labels).expanduser().resolve())
    return {"model": model_name, "data": data, "labels": labels, "seed": args.seed,
            "binarize": args.binarize, "options": parse_options(args.option), "overrides": overrides}


def _say_data(name: str, run_config: dict, data: DigitsData) -> None:
    print(f"{name}: data {data.description}; preprocessing: {run_config['preprocessing']}; "
          f"likelihood: {run_config['likelihood']}")


def _fit_new(model_name: str, args: argparse.Namespace, directory: Path,
             overrides: dict) -> tuple[dict, Section]:
    """Prepare, create the run directory, train and write everything; returns the metrics and
    the run's part of a report."""
    entry = get_model(model_name)
    overrides = {**overrides, **_fit_overrides(entry, args)}
    config = _new_config(model_name, args, overrides)
    _refuse_existing(directory)
    entry, data, model, config = prepare_run(config)
    _say_data(model_name, config, data)
    with new_run_directory(directory, {**config, "versions": versions()}):
        run = Run(directory, entry, model, data, config)
        with _captured_warnings() as run.notes:
            result = _train(run, args)
            return _finish(run, result, args)


def _objective_alias(args: argparse.Namespace) -> None:
    """``--estimator`` is the old spelling of ``--objective``: accepted with a warning."""
    old = getattr(args, "estimator_alias", None)
    if old is None:
        return
    if args.objective not in (None, old):
        raise ConfigurationError(
            f"--estimator is the old name of --objective: pass --objective {args.objective} alone")
    print("lvm-pyro: warning: --estimator is deprecated; it is called --objective now", file=sys.stderr)
    args.objective = old


def cmd_fit(args: argparse.Namespace) -> int:
    _check_common(args)
    _objective_alias(args)
    directory = Path(args.out) / (args.name or f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    metrics, _ = _fit_new(args.model, args, directory, {})
    print(f"{_summary(args.model, metrics)}; run written to {directory}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    _check_common(args)
    path = Path(args.run)
    config = _read_config(path)
    entry = get_model(config["model"])
    if entry.trainer == "em":
        raise ConfigurationError("EM runs are not resumable (EM is fast): run `lvm-pyro fit` again")
    extra = _fit_overrides(entry, args, RESUME_OVERRIDES)
    if not (path / CHECKPOINT_NAME).is_file():
        raise CheckpointError(f"{str(path)!r} holds no {CHECKPOINT_NAME} (it stopped before its first "
                              "checkpoint): it cannot be resumed; delete the folder and `lvm-pyro fit` again")
    with locked_run(path):
        run = _open_run(path, trained=False)
        overrides = dict(run.config.get("overrides", {}))
        if "epochs" in extra:
            overrides.pop("steps", None)
        if "steps" in extra:
            overrides.pop("epochs", None)
        run.config["overrides"] = {**overrides, **extra}
        with _captured_warnings() as run.notes:
            result = _train(run, args, resume=True)
            _write_json(path / "config.json", {**run.config, "versions": versions()})
            metrics, _ = _finish(run, result, args)
    print(f"{_summary(run.config['model'], metrics)}; run {run.directory} updated")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_common(args)
    run = _open_run(Path(args.run), trained=True)
    metrics = _held_out(run, args.num_samples, run.config["seed"])
    for key, value in metrics.items():
        print(f"{key:26s} {value if not isinstance(value, float) else f'{value:.4f}'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    if out is not None:
        if out.suffix != ".npy":
            raise ConfigurationError(f"--output {str(out)!r}: pass a path ending in .npy")
        if not out.parent.is_dir():
            raise ConfigurationError(f"--output {str(out)!r}: folder {str(out.parent)!r} does not exist")
    run = _open_run(Path(args.run), trained=True)
    if not hasattr(run.model, "sample") or isinstance(run.split("test"), tuple):
        raise ConfigurationError(f"model {run.config['model']!r} has no unconditional sample(n)")
    torch.manual_seed(args.seed)
    draws = draw(run.model, args.n).detach().cpu()
    out = out or run.directory / "samples.npy"
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, draws.numpy())
    if run.data.image_size is not None:
        from lvm_pyro.diagnostics.plots import plot_samples

        with atomic_output(out.with_suffix(".png")) as tmp:
            plot_samples(draws.numpy(), run.data.image_size).savefig(tmp, dpi=90, format="png")
    print(f"{args.n} samples written to {out}" + (f" and {out.with_suffix('.png')}"
                                                   if run.data.image_size is not None else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole story: a Gaussian mixture by EM and a VAE on the data, one report."""
    _check_common(args)
    root = Path(args.out) / (args.name or f"story-{time.strftime('%Y%m%d-%H%M%S')}")
    sections = []
    # a quick run is short: a short KL warm-up lets it end on the ELBO, not the annealed objective
    quick = {"epochs": 20, "kl_warmup": 5.0} if args.quick else {}
    with new_run_directory(root):
        for model_name in ("gmm", "vae"):
            sub = argparse.Namespace(**vars(args), in_story=True)
            if model_name == "gmm":  # --option, --binarize and --kl-warmup are the VAE's
                sub.kl_warmup, sub.option, sub.binarize = None, [], None
            metrics, section = _fit_new(model_name, sub, root / model_name,
                                        quick if model_name == "vae" else {})
            print(_summary(model_name, metrics))
            sections.append(section)
        kinds = {s.name: likelihood_kind(s) for s in sections}
        if len(set(kinds.values())) > 1:
            print("note: these test log-likelihoods are not comparable: "
                  + ", ".join(f"{name}'s is a log-{kind}" for name, kind in kinds.items())
                  + " (continuous pixels vs binary pixels; see the report's section 4)")
        shared = [s for s in sections if s.point_estimate]
        notes = [_point_estimate_note(shared)] if shared else []
        for note in notes:
            print(f"lvm-pyro: note: {note}", file=sys.stderr)
        full = {s.name: json.loads((root / s.name / "config.json").read_text()) for s in sections}
        report = write_report(root / "report.html", "lvm-pyro: latent-variable models on the digits",
                              sections, versions(), args.command_line, notes=notes, full_config=full)
    print(f"report written to {report}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    for key, value in versions().items():
        print(f"{key:10s} {value}")
    dev = resolve_device("auto")
    extra = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(f"{'device':10s} {dev}{extra}")
    print(f"{'threads':10s} {torch.get_num_threads()}")
    return 0


def _literal(value) -> str:
    """A default as the command line would take it back (``--option key=VALUE``)."""
    if isinstance(value, type):
        return value.__name__
    return repr(value)


def describe_options(entry: ModelEntry) -> list[str]:
    """Lines for ``lvm-pyro models``: the model's ``--option`` names with their defaults, and
    its training defaults (the registered ones, then the trainer's own).

    Example:
        >>> from lvm_pyro.models.registry import ModelEntry
        >>> entry = ModelEntry("demo", lambda data, scale=1.0: None, "a demo", fit_options={"epochs": 2})
        >>> describe_options(entry)
        ['options: scale=1.0', 'training (fit): epochs=2, lr=0.001, objective=reparam, kl_warmup=auto']
    """
    options = model_options(entry)
    if options is None:
        lines = ["options: those of the model class (see its docstring)"]
    else:
        shown = [f"{k}={_literal(v)}" if v is not inspect.Parameter.empty else f"{k} (required)"
                 for k, v in options.items() if not isinstance(v, type)]
        api_only = [k for k, v in options.items() if isinstance(v, type)]
        lines = ["options: " + (", ".join(shown) or "(none)")
                 + (f"; {', '.join(api_only)}: Python API only" if api_only else "")]
    trainer = em if entry.trainer == "em" else fit
    defaults = dict(entry.fit_options)
    if entry.trainer == "fit":
        for key, value in (("lr", 1e-3), ("objective", "reparam"), ("kl_warmup", "auto")):
            defaults.setdefault(key, _signature_default(trainer, key, value))
        if defaults["kl_warmup"] == "auto":  # fit's "auto": the model class's default_kl_warmup epochs
            defaults["kl_warmup"] = getattr(entry.options, "default_kl_warmup", "auto")
    else:
        for key in ("max_iter", "tol", "n_init"):
            defaults.setdefault(key, _signature_default(trainer, key, None))
    training = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in defaults.items() if v is not None)
    lines.append(f"training ({entry.trainer}): {training}")
    return lines


def _signature_default(fn, name: str, fallback):
    parameter = inspect.signature(fn).parameters.get(name)
    if parameter is None and name == "objective":
        parameter = inspect.signature(fn).parameters.get("estimator")
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return fallback
    return parameter.default


def cmd_models(args: argparse.Namespace) -> int:
    for name, entry in available_models().items():
        print(f"{name}: {entry.description}")
        for line in describe_options(entry):
            print(f"    {line}")
    print("Set a model option with --option KEY=VALUE, a training setting with its flag "
          "(see `lvm-pyro fit --help`).")
    return 0


# ------------------------------------------------------------------------------------------
# The parser and the entry point
# ------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Help with each flag's default appended where it has one and its help does not say it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or isinstance(default, bool)
                or default == [] or "default" in text or not action.option_strings):
            return text
        return f"{text} (default: {default})"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded, no download) or a .npy/.npz/.csv/IDX file")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="a file of labels for --data FILE (default: none; the digits bring theirs)")
    p.add_argument("--binarize", type=binarize_value, default=None, metavar="T",
                   help="x >= T becomes 1, else 0 (for a Bernoulli likelihood); 'none' keeps the values "
                        "(default: 8 of 0..16 for the digits with a Bernoulli model, none for a file)")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seeds the split, the model's initialization and training (0..2**32-1)")
    p.add_argument("--out", default="runs", metavar="FOLDER", help="folder that holds run directories")
    p.add_argument("--name", type=run_name, default=None,
                   help="run directory name (default: MODEL-YYYYmmdd-HHMMSS)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. --option latent_dim=16; repeatable (default: the model's; "
                        "`lvm-pyro models` lists each model's options)")
    p.add_argument("--kl-warmup", type=warmup_epochs, default=None, metavar="EPOCHS",
                   help="epochs of linear KL annealing, 0 for none (default: the model's, 100 for VAEs)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--num-samples", type=positive_int, default=1000, metavar="K",
                   help="importance samples per example for the test log-likelihood")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")


def _add_objective(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="the training objective and its gradient estimator: reparam (Trace_ELBO), "
                        "meanfield (analytic KL), score (REINFORCE), iwae (importance-weighted bound), "
                        "enum (discrete sites summed out) (default: the model's, reparam for the VAEs)")
    p.add_argument("--estimator", dest="estimator_alias", choices=OBJECTIVES, default=None,
                   help=argparse.SUPPRESS)  # the old name of --objective: warns


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lvm-pyro",
        description="Latent-variable models on Pyro: train, evaluate and diagnose.",
        formatter_class=_HelpFormatter,
        epilog="`lvm-pyro COMMAND --help` lists a command's flags with their defaults.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=kwargs.pop("description", help),
                              formatter_class=_HelpFormatter, **kwargs)

    p = command("run", "the main job: mixture by EM + VAE on the data, with a report",
                description="A Gaussian mixture by EM and a VAE on the data, one HTML report "
                            "(OUT/NAME/report.html). --option, --binarize and --kl-warmup apply to the VAE.")
    _add_run_options(p)
    _add_common(p)
    p.add_argument("--quick", action="store_true",
                   help="a short VAE run (20 epochs, 5 of KL warm-up), for a smoke test "
                        "(default: the VAE's 300 epochs)")
    p.set_defaults(func=cmd_run)

    p = command("fit", "train a registered model and write a run directory",
                description="Train a registered model (see `lvm-pyro models`) and write OUT/NAME/: "
                            "weights, metrics.json, figures, inference_data.nc and report.html. Flags "
                            "left out take the model's defaults, which `lvm-pyro models` lists.")
    p.add_argument("model", help="a registered model name (see `lvm-pyro models`)")
    _add_run_options(p)
    _add_common(p)
    _add_objective(p)
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training data (default: the model's, 300 for the VAEs)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="optimizer steps, instead of --epochs (default: by epochs)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="examples per optimizer step (default: the model's, 64 for the VAEs)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam's learning rate, > 0 (default: the model's, else 1e-3)")
    p.set_defaults(func=cmd_fit)

    p = command("resume", "continue a `fit` run from its checkpoint",
                description="Continue a `fit` run from its checkpoint, bit for bit as if never stopped; "
                            "only the flags below may change.")
    p.add_argument("run", help="a run directory, e.g. runs/vae-20260101-120000")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="train until this many epochs in all (default: the run's)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="train until this many steps in all (default: the run's)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="a new learning rate from here on, e.g. lower after a divergence "
                        "(default: the run's)")
    _add_common(p)
    p.set_defaults(func=cmd_resume)

    p = command("evaluate", "held-out ELBO and log-likelihood of a run",
                description="Held-out ELBO and importance-sampled log-likelihood of a run's test split, "
                            "in nats per example.")
    p.add_argument("run", help="a run directory written by `lvm-pyro fit`")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = command("sample", "draw examples from a run's model (.npy, and .png for images)")
    p.add_argument("run", help="a run directory written by `lvm-pyro fit`")
    p.add_argument("--n", type=positive_int, default=64, help="how many examples to draw")
    p.add_argument("--seed", type=seed_value, default=0, help="seeds the draws (0..2**32-1)")
    p.add_argument("--output", default=None, metavar="PATH.npy",
                   help="where to write the draws (default: RUN/samples.npy)")
    p.set_defaults(func=cmd_sample)

    command("info", "versions and the device found").set_defaults(func=cmd_info)
    command("models", "list the registered models, their options and training defaults").set_defaults(
        func=cmd_models)
    return parser


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Warnings raised inside (deprecations excepted) printed as one line each, and collected
    for the report."""
    caught: list[str] = []
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            return
        text = " ".join(str(message).split())
        if text not in caught:
            caught.append(text)
            print(f"lvm-pyro: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = one_line
        try:
            yield caught
        finally:
            warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lvm-pyro``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "lvm-pyro " + shlex.join(argv)
    try:
        return args.func(args)
    except LVMError as exc:
        print(f"lvm-pyro: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvm-pyro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
