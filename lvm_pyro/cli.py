"""``lvm-pyro``: the command line.

    lvm-pyro run                          the main job on the embedded digits: a Gaussian
                                          mixture by EM, a VAE, diagnostics, one HTML report
    lvm-pyro fit MODEL --data digits      train a registered model, write runs/<name>/
    lvm-pyro evaluate RUN                 held-out ELBO and importance-sampled log-likelihood
    lvm-pyro sample RUN                   draw new examples from a trained model
    lvm-pyro resume RUN                   continue an interrupted or finished `fit` run
    lvm-pyro models | info                the registered models | versions and device

A run directory holds ``checkpoint.pt`` (training state, ``fit`` runs), ``model.pt`` (the
trained weights), ``config.json``, ``metrics.json``, ``figures/*.png``,
``inference_data.nc`` (ArviZ) and ``report.html`` (self-contained). Errors a user can
cause print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lvm_pyro.data import DigitsData, load_dataset, resolve_device
from lvm_pyro.diagnostics.arviz import to_inference_data
from lvm_pyro.errors import ConfigurationError, LVMError
from lvm_pyro.infer.checkpoint import load_checkpoint, save_checkpoint
from lvm_pyro.infer.em import em
from lvm_pyro.infer.evaluate import elbo, log_likelihood
from lvm_pyro.infer.objectives import ESTIMATORS
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.registry import ModelEntry, available_models, get_model
from lvm_pyro.report import Section, draw, model_figures, save_figures, write_report

FIT_OVERRIDES = ("estimator", "epochs", "steps", "batch_size", "lr")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages the library runs on."""
    import arviz
    import pyro

    import lvm_pyro

    return {
        "lvm_pyro": lvm_pyro.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "arviz": arviz.__version__,
    }


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--option takes key=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


@dataclass
class Run:
    """A trained model with its data, as the subcommands share it."""

    directory: Path
    entry: ModelEntry
    model: object
    data: DigitsData
    config: dict

    def split(self, name: str):
        return self.entry.prepare(getattr(self.data, name))


def _build(config: dict) -> tuple[ModelEntry, DigitsData, object]:
    entry = get_model(config["model"])
    try:
        data = load_dataset(config["data"], labels=config.get("labels"), seed=config["seed"],
                            **entry.data_options)
        model = entry.build(data, **config["options"])
    except TypeError as exc:
        raise ConfigurationError(f"bad --option for model {config['model']!r}: {exc}") from exc
    return entry, data, model


def _open_run(directory: str) -> Run:
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ConfigurationError(f"{str(path)!r} is not a run directory (no config.json): pass runs/<name>")
    config = json.loads((path / "config.json").read_text())
    entry, data, model = _build(config)
    weights = path / "model.pt"
    if weights.is_file():
        model.load_state_dict(load_checkpoint(weights)["state_dict"])
    elif entry.trainer == "em":
        raise ConfigurationError(f"{str(path)!r} holds no trained model (model.pt): run `lvm-pyro fit` again")
    return Run(path, entry, model, data, config)


def _held_out(run: Run, num_samples: int, seed: int) -> dict:
    test = run.split("test")
    metrics = {"test_log_likelihood": None, "test_log_likelihood_se": None, "test_elbo": None}
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
        if resume:
            raise ConfigurationError("EM runs are not resumable (EM is fast): run `lvm-pyro fit` again")
        return em(run.model, train, seed=run.config["seed"], device=args.device,
                  progress=not args.quiet, **settings)
    if "steps" in settings:
        settings.pop("epochs", None)
    return fit(run.model, train, val_data=val, device=args.device, seed=run.config["seed"],
               progress=not args.quiet, checkpoint_dir=run.directory, resume=resume, **settings)


def _finish(run: Run, result, args: argparse.Namespace) -> dict:
    """Weights, metrics, figures, ArviZ file and report of a trained run."""
    module = run.model
    save_checkpoint(run.directory / "model.pt", {"state_dict": module.state_dict()})
    metrics = {"train_objective": _train_objective(result), "wall_time_s": result.wall_time}
    if hasattr(result, "val_elbo"):
        metrics.update(epochs=result.epochs, steps=result.steps, stop_reason=result.stop_reason,
                       val_elbo=result.val_elbo[-1] if result.val_elbo else None)
    else:
        metrics.update(iterations=result.n_iter, converged=result.converged)
    metrics.update(_held_out(run, args.num_samples, run.config["seed"]))
    test = run.split("test")
    figs, notes = model_figures(module, result, test, run.data.test.y, run.data.image_size,
                                seed=run.config["seed"])
    pngs = save_figures(figs, run.directory / "figures")
    idata = to_inference_data(result, test, num_samples=100, seed=run.config["seed"])
    idata.to_netcdf(str(run.directory / "inference_data.nc"))
    (run.directory / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    section = Section(f"{run.config['model']}: {run.entry.description}", metrics, pngs, notes,
                      {**run.config, "result": getattr(result, "config", {})})
    write_report(run.directory / "report.html", f"lvm-pyro run {run.directory.name}", [section],
                 versions(), args.command_line)
    return metrics


def _train_objective(result) -> float:
    return result.elbo if hasattr(result, "elbo") else result.log_likelihood[-1]


def _summary(name: str, metrics: dict) -> str:
    ll = metrics["test_log_likelihood"]
    return (f"{name}: test log-likelihood {ll:.3f} +- {metrics['test_log_likelihood_se']:.3f} nats "
            f"per example (k={metrics['log_likelihood_samples']})")


def _new_run(model_name: str, args: argparse.Namespace, directory: Path, overrides: dict) -> Run:
    if directory.exists() and any(directory.iterdir()):
        raise ConfigurationError(
            f"run directory {str(directory)!r} exists: pass another --name, or `lvm-pyro resume` it")
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model": model_name, "data": str(args.data), "labels": args.labels, "seed": args.seed,
              "options": _parse_options(args.option), "overrides": overrides}
    entry, data, model = _build(config)
    (directory / "config.json").write_text(json.dumps({**config, "versions": versions()}, indent=2))
    return Run(directory, entry, model, data, config)


def cmd_fit(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in FIT_OVERRIDES if getattr(args, k) is not None}
    directory = Path(args.out) / (args.name or f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    run = _new_run(args.model, args, directory, overrides)
    result = _train(run, args)
    metrics = _finish(run, result, args)
    print(f"{_summary(args.model, metrics)}; run written to {directory}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run = _open_run(args.run)
    extra = {k: getattr(args, k) for k in ("epochs", "steps") if getattr(args, k) is not None}
    run.config["overrides"] = {**run.config.get("overrides", {}), **extra}
    result = _train(run, args, resume=True)
    (run.directory / "config.json").write_text(json.dumps({**run.config, "versions": versions()}, indent=2))
    metrics = _finish(run, result, args)
    print(f"{_summary(run.config['model'], metrics)}; run {run.directory} updated")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = _open_run(args.run)
    metrics = _held_out(run, args.num_samples, run.config["seed"])
    for key, value in metrics.items():
        print(f"{key:26s} {value if not isinstance(value, float) else f'{value:.4f}'}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    run = _open_run(args.run)
    if not hasattr(run.model, "sample") or isinstance(run.split("test"), tuple):
        raise ConfigurationError(f"model {run.config['model']!r} has no unconditional sample(n)")
    torch.manual_seed(args.seed)
    draws = draw(run.model, args.n).detach().cpu()
    out = Path(args.output or run.directory / "samples.npy")
    np.save(out, draws.numpy())
    if run.data.image_size is not None:
        from lvm_pyro.diagnostics.plots import plot_samples

        plot_samples(draws.numpy(), run.data.image_size).savefig(out.with_suffix(".png"), dpi=90)
    print(f"{args.n} samples written to {out}" + (f" and {out.with_suffix('.png')}"
                                                   if run.data.image_size is not None else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole story: a Gaussian mixture by EM and a VAE on the data, one report."""
    root = Path(args.out) / (args.name or f"story-{time.strftime('%Y%m%d-%H%M%S')}")
    sections = []
    quick = {"epochs": 20} if args.quick else {}
    for model_name in ("gmm", "vae"):
        run = _new_run(model_name, args, root / model_name, quick if model_name == "vae" else {})
        result = _train(run, args)
        metrics = _finish(run, result, args)
        print(_summary(model_name, metrics))
        pngs = {p.stem: p.read_bytes() for p in sorted((run.directory / "figures").glob("*.png"))}
        sections.append(Section(f"{model_name}: {run.entry.description}", metrics, pngs, (), run.config))
    report = write_report(root / "report.html", "lvm-pyro: latent-variable models on the digits", sections,
                          versions(), args.command_line)
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


def cmd_models(args: argparse.Namespace) -> int:
    for name, entry in available_models().items():
        print(f"{name:14s} {entry.description} (trained by {entry.trainer})")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded, no download) or a .npy/.npz/.csv/IDX file")
    p.add_argument("--labels", default=None, help="a file of labels for --data PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="folder that holds run directories")
    p.add_argument("--name", default=None, help="run directory name (default: model-timestamp)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. --option latent_dim=16 (repeatable)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="importance samples per example for the test log-likelihood")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvm-pyro",
        description="Latent-variable models on Pyro: train, evaluate and diagnose.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the main job: mixture by EM + VAE on the data, with a report")
    _add_run_options(p)
    _add_common(p)
    p.add_argument("--quick", action="store_true", help="a short VAE run (20 epochs), for a smoke test")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("fit", help="train a registered model and write a run directory")
    p.add_argument("model", help="a registered model name (see `lvm-pyro models`)")
    _add_run_options(p)
    _add_common(p)
    p.add_argument("--estimator", choices=ESTIMATORS, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("resume", help="continue a `fit` run from its checkpoint")
    p.add_argument("run", help="a run directory, e.g. runs/vae-20260101-120000")
    p.add_argument("--epochs", type=int, default=None, help="train until this many epochs in all")
    p.add_argument("--steps", type=int, default=None, help="train until this many steps in all")
    _add_common(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("evaluate", help="held-out ELBO and log-likelihood of a run")
    p.add_argument("run")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="draw examples from a run's model (.npy, and .png for images)")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="a .npy path (default: RUN/samples.npy)")
    p.set_defaults(func=cmd_sample)

    sub.add_parser("info", help="versions and the device found").set_defaults(func=cmd_info)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lvm-pyro``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "lvm-pyro " + shlex.join(argv)
    try:
        return args.func(args)
    except LVMError as exc:
        print(f"lvm-pyro: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lvm-pyro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
