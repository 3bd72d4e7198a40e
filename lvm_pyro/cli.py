"""``lvm-pyro``: the command line.

    lvm-pyro info                         versions and the device found
    lvm-pyro models                       the registered models
    lvm-pyro fit MODEL --data digits      train a registered model, write runs/<name>/

Errors a user can cause print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import time
from pathlib import Path

import torch

from lvm_pyro.data import load_dataset, resolve_device
from lvm_pyro.errors import LVMError
from lvm_pyro.infer.evaluate import elbo
from lvm_pyro.infer.objectives import ESTIMATORS
from lvm_pyro.infer.svi import fit
from lvm_pyro.models.registry import available_models, get_model


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
            raise LVMError(f"--option takes key=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _run_dir(out: str, name: str | None, model: str) -> Path:
    return Path(out) / (name or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


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
        print(f"{name:10s} {entry.description} (trained by {entry.trainer})")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    entry = get_model(args.model)
    options = _parse_options(args.option)
    data = load_dataset(args.data, labels=args.labels, seed=args.seed, **entry.data_options)
    model = entry.build(data, **options)
    run = _run_dir(args.out, args.name, args.model)
    if run.exists() and any(run.iterdir()) and not args.resume:
        raise LVMError(f"run directory {str(run)!r} exists: pass another --name, or --resume to continue it")
    train, val, test = (entry.prepare(s) for s in (data.train, data.val, data.test))
    overrides = {
        "estimator": args.estimator,
        "epochs": args.epochs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
    }
    settings = {**entry.fit_options, **{k: v for k, v in overrides.items() if v is not None}}
    if args.steps is not None:
        settings.pop("epochs", None)
    result = fit(model, train, val_data=val, device=args.device, seed=args.seed,
                 progress=not args.quiet, checkpoint_dir=run, resume=args.resume, **settings)
    metrics = {
        "train_elbo": result.elbo,
        "val_elbo": result.val_elbo[-1] if result.val_elbo else None,
        "test_elbo": elbo(model, test, seed=args.seed),
        "epochs": result.epochs,
        "steps": result.steps,
        "wall_time_s": result.wall_time,
        "stop_reason": result.stop_reason,
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    config = {"model": args.model, "data": str(args.data), "options": options,
              "fit": result.config, "versions": versions()}
    (run / "config.json").write_text(json.dumps(config, indent=2, default=str))
    print(f"{args.model}: test ELBO {metrics['test_elbo']:.3f} nats per example "
          f"({result.epochs} epochs, {result.wall_time:.1f} s); run written to {run}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvm-pyro",
        description="Latent-variable models on Pyro: train, evaluate and diagnose.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and the device found").set_defaults(func=cmd_info)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)

    p = sub.add_parser("fit", help="train a registered model and write a run directory")
    p.add_argument("model", help="a registered model name (see `lvm-pyro models`)")
    p.add_argument("--data", default="digits",
                   help="'digits' (embedded, no download) or a .npy/.npz/.csv/IDX file")
    p.add_argument("--labels", default=None, help="a file of labels for --data PATH")
    p.add_argument("--estimator", choices=ESTIMATORS, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default="runs", help="folder that holds run directories")
    p.add_argument("--name", default=None, help="run directory name (default: model-timestamp)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out/--name")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, e.g. --option latent_dim=16 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lvm-pyro``; returns the exit status."""
    args = build_parser().parse_args(argv)
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
