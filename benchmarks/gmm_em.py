"""EM for Gaussian mixtures: lvm_pyro's ``em`` against scikit-learn and Pyro's SVI route.

Every contender fits the same data from the same start (weights, means and precisions given
explicitly) for the same number of iterations with tol=0, and the final log-likelihood of
each fit is evaluated in float64 by the same code. Contenders:

- ``sklearn-numpy``: scikit-learn's GaussianMixture on numpy arrays;
- ``sklearn-array-api``: the same on torch tensors with array-API dispatch
  (SCIPY_ARRAY_API=1, ``sklearn.config_context(array_api_dispatch=True)``), skipped
  cleanly where unavailable;
- ``ours``: ``lvm_pyro.infer.em.em`` (closed-form route: chunked E-step and sufficient
  statistics as matrix products, checked equal to Pyro's enumeration in the tests);
- ``pyro-svi``: Pyro's tutorial route, TraceEnum_ELBO with a point-estimate guide trained by
  Adam, timed until it reaches our final log-likelihood (within 1e-3 per point) or a budget.

Also: one E-step through Pyro's enumeration against the closed form, and EM at scale
(N=2,000,000, D=16, K=32, diag) with the peak memory beyond the data, in a child process.

Usage:
    python benchmarks/gmm_em.py                 # the full run (a few minutes on 2 cores)
    python benchmarks/gmm_em.py --quick         # small sizes (used by the tests)
    python benchmarks/gmm_em.py --device cuda   # ours and array-API scikit-learn on the GPU
    python benchmarks/gmm_em.py --threads 1     # every contender on one thread (a busy machine)
"""

from __future__ import annotations

import os

os.environ.setdefault("SCIPY_ARRAY_API", "1")  # before scipy / scikit-learn are imported

import argparse
import json
import math
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import pyro
import sklearn
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from threadpoolctl import threadpool_limits

from lvm_pyro.data import resolve_device
from lvm_pyro.infer.em import _enum_e_step, _trace_enum, em
from lvm_pyro.models.base import as_program
from lvm_pyro.models.gmm import GaussianMixtureModel

DTYPES = {"float64": torch.float64, "float32": torch.float32}
TARGETS = {"sklearn-numpy": 0.25, "sklearn-array-api": 0.5}


@dataclass
class Problem:
    name: str
    n: int
    d: int
    k: int
    covariance_types: tuple[str, ...]
    svi: bool = False


@dataclass
class Row:
    problem: str
    covariance_type: str
    dtype: str
    n: int
    d: int
    k: int
    iterations: int
    seconds: dict[str, float] = field(default_factory=dict)
    log_likelihood: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def problems(quick: bool) -> list[Problem]:
    if quick:
        return [
            Problem("P1", 2000, 3, 3, ("full", "tied", "diag", "spherical"), svi=True),
            Problem("P2", 5000, 4, 3, ("diag",)),
        ]
    return [
        Problem("P1", 100_000, 8, 16, ("full", "tied", "diag", "spherical"), svi=True),
        Problem("P2", 1_000_000, 16, 32, ("diag",)),
    ]


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """A mixture of k Gaussians with random means (spread 3) and random covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    mixing = rng.normal(scale=0.3, size=(k, d, d)) + np.eye(d)
    z = rng.integers(k, size=n)
    x = np.empty((n, d))
    for start in range(0, n, 1 << 18):
        zz = z[start : start + (1 << 18)]
        noise = rng.normal(size=(len(zz), d))
        x[start : start + len(zz)] = centers[zz] + np.einsum("nij,nj->ni", mixing[zz], noise)
    return x


def make_start(x: np.ndarray, k: int, covariance_type: str, seed: int = 1) -> dict[str, np.ndarray]:
    """Uniform weights, k distinct data points as means, precisions 1 / (feature variance)."""
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    means = x[rng.choice(len(x), k, replace=False)]
    var = x[: min(len(x), 100_000)].var(0)
    precisions = {
        "full": np.broadcast_to(np.diag(1 / var), (k, d, d)).copy(),
        "tied": np.diag(1 / var),
        "diag": np.broadcast_to(1 / var, (k, d)).copy(),
        "spherical": np.full(k, 1 / var.mean()),
    }[covariance_type]
    return {"weights_init": np.full(k, 1.0 / k), "means_init": means, "precisions_init": precisions}


def evaluate(x64: torch.Tensor, covariance_type: str, weights, means, precisions) -> float:
    """Mean log-likelihood of a fitted mixture in float64, the same code for every contender."""
    k, d = len(weights), x64.shape[1]
    gmm = GaussianMixtureModel(k, d, covariance_type, reg_covar=0.0).double()
    as64 = lambda a: torch.as_tensor(np.asarray(a.cpu() if torch.is_tensor(a) else a), dtype=torch.float64)  # noqa: E731
    gmm.set_parameters(
        weights=as64(weights) / as64(weights).sum(), means=as64(means), precisions=as64(precisions)
    )
    return float(gmm.log_prob(x64).mean())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_sklearn_numpy(x, cov, start, iters, dtype):
    xs = x.astype(np.float32 if dtype == torch.float32 else np.float64)
    init = {key: value.astype(xs.dtype) for key, value in start.items()}
    gm = SkGaussianMixture(
        len(start["weights_init"]),
        covariance_type=cov,
        max_iter=iters,
        tol=0,
        init_params="random_from_data",
        random_state=0,
        **init,
    )
    t = time.perf_counter()
    gm.fit(xs)
    return time.perf_counter() - t, (gm.weights_, gm.means_, gm.precisions_)


def array_api_available(device: torch.device) -> str:
    """'' when scikit-learn's array-API dispatch runs on torch tensors here, else why not."""
    try:
        with sklearn.config_context(array_api_dispatch=True):
            x = torch.randn(50, 2, dtype=torch.float64, device=device)
            SkGaussianMixture(2, max_iter=2, init_params="random_from_data").fit(x)
    except Exception as exc:  # any failure means this peer cannot run here
        return f"{type(exc).__name__}: {exc}"
    return ""


def run_sklearn_array_api(x, cov, start, iters, dtype, device):
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    init = {key: torch.as_tensor(value, dtype=dtype, device=device) for key, value in start.items()}
    gm = SkGaussianMixture(
        len(start["weights_init"]),
        covariance_type=cov,
        max_iter=iters,
        tol=0,
        init_params="random_from_data",
        random_state=0,
        **init,
    )
    with sklearn.config_context(array_api_dispatch=True):
        sync(device)
        t = time.perf_counter()
        gm.fit(xt)
        sync(device)
        seconds = time.perf_counter() - t
    return seconds, (gm.weights_, gm.means_, gm.precisions_)


def _set_start(start):
    def init(model, x, gen):
        model.set_parameters(
            weights=start["weights_init"], means=start["means_init"], precisions=start["precisions_init"]
        )

    return init


def run_ours(x, cov, start, iters, dtype, device, chunk_size=None):
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    k = len(start["weights_init"])
    model = GaussianMixtureModel(k, x.shape[1], cov).to(device=device, dtype=dtype)
    sync(device)
    t = time.perf_counter()
    em(
        model,
        xt,
        init=_set_start(start),
        max_iter=iters,
        tol=0,
        device=device,
        chunk_size=chunk_size,
        canonical_order=False,
    )
    sync(device)
    seconds = time.perf_counter() - t
    return seconds, (model.weights.detach(), model.loc.detach(), model.precisions().detach())


def run_pyro_svi(x, cov, start, dtype, device, target: float, budget: float):
    """Pyro's GMM-tutorial route: TraceEnum_ELBO, Delta guide, Adam(lr=0.1, betas=(0.8, 0.99)).
    Returns (seconds to reach target or None, best log-likelihood, steps)."""
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    k = len(start["weights_init"])
    model = GaussianMixtureModel(k, x.shape[1], cov).to(device=device, dtype=dtype)
    _set_start(start)(model, xt, None)
    pyro.clear_param_store()
    svi = pyro.infer.SVI(
        model.model,
        model.guide,
        pyro.optim.Adam({"lr": 0.1, "betas": (0.8, 0.99)}),
        pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
    )
    best, steps, t = -math.inf, 0, time.perf_counter()
    with pyro.validation_enabled(False):
        while time.perf_counter() - t < budget:
            ll = -svi.step(xt) / len(xt)  # log-likelihood of the parameters before this step
            steps += 1
            best = max(best, ll)
            if ll >= target:
                return time.perf_counter() - t, best, steps
    return None, best, steps


def e_step_comparison(x, cov, start, dtype, device, repeats: int = 3) -> dict[str, float]:
    """Seconds for one E-step: Pyro's enumeration (em's enum route) and the closed form."""
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    k = len(start["weights_init"])
    model = GaussianMixtureModel(k, x.shape[1], cov).to(device=device, dtype=dtype)
    _set_start(start)(model, xt, None)
    program, shift = as_program(model), xt.mean(0)
    pyro.clear_param_store()  # Pyro would hand this module an earlier model's parameters

    def best_of(fn):
        times = []
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad():
        enum = best_of(lambda: _enum_e_step(_trace_enum(program, xt, 1)))
        closed = best_of(lambda: model.expected_statistics(xt, shift))
    return {"pyro_enum_e_step": enum, "closed_form_e_step_and_stats": closed}


# --------------------------------------------------------------------------- memory at scale


def _read_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def scale_child(n: int, d: int, k: int, dtype_name: str, iters: int, device_name: str) -> dict:
    """Runs in a child process: peak memory beyond the data and time per iteration."""
    dtype, device = DTYPES[dtype_name], resolve_device(device_name)
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(k, d))
    x = torch.empty(n, d, dtype=dtype, device=device)
    for s in range(0, n, 1 << 18):
        m = min(1 << 18, n - s)
        block = centers[rng.integers(k, size=m)] + rng.normal(size=(m, d))
        x[s : s + m] = torch.from_numpy(block).to(dtype)
    start = make_start(x[:100_000].cpu().double().numpy(), k, "diag")
    out = {
        "n": n,
        "d": d,
        "k": k,
        "dtype": dtype_name,
        "iterations": iters,
        "data_bytes": x.numel() * x.element_size(),
    }
    model = GaussianMixtureModel(k, d, "diag").to(device=device, dtype=dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        out["peak_reset"] = _reset_peak()
        before = _read_status("VmRSS")
    t = time.perf_counter()
    em(model, x, init=_set_start(start), max_iter=iters, tol=0, device=device, canonical_order=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _read_status("VmHWM") - before
    out["ours_seconds_per_iteration"] = (time.perf_counter() - t) / iters
    out["ours_peak_beyond_data_bytes"] = peak
    xn = x.cpu().numpy()
    del x
    _reset_peak()
    before = _read_status("VmRSS")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        seconds, _ = run_sklearn_numpy(xn, "diag", start, iters, dtype)
    out["sklearn_numpy_seconds_per_iteration"] = seconds / iters
    out["sklearn_numpy_peak_beyond_data_bytes"] = _read_status("VmHWM") - before
    return out


def run_scale(n, d, k, dtype_name, iters, device_name, threads) -> dict:
    cmd = [sys.executable, __file__, "--_scale-child", json.dumps([n, d, k, dtype_name, iters, device_name])]
    if threads:
        cmd += ["--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def _peer_cells(row: Row, peer: str) -> tuple[str, str]:
    if peer not in row.seconds:
        return "n/a", row.notes.get(peer, "skipped")
    ratio = row.seconds["ours"] / row.seconds[peer]
    mark = "" if peer not in TARGETS else (" ok" if ratio <= TARGETS[peer] else " MISS")
    return f"{row.seconds[peer]:.3f}", f"{ratio:.3f}{mark}"


def ratio_table(rows: list[Row]) -> str:
    head = (
        "| problem | cov | dtype | ours s | sklearn numpy s | ratio | sklearn array-API s | "
        "ratio | pyro SVI s | ll ours | ll sklearn | rel. diff |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        np_s, np_r = _peer_cells(r, "sklearn-numpy")
        api_s, api_r = _peer_cells(r, "sklearn-array-api")
        ll_o, ll_s = r.log_likelihood["ours"], r.log_likelihood["sklearn-numpy"]
        lines.append(
            f"| {r.problem} N={r.n} D={r.d} K={r.k} | {r.covariance_type} | {r.dtype} | "
            f"{r.seconds['ours']:.3f} | {np_s} | {np_r} | {api_s} | {api_r} | "
            f"{r.notes.get('pyro-svi', '')} | {ll_o:.6f} | {ll_s:.6f} | "
            f"{abs(ll_o - ll_s) / abs(ll_s):.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (ours, array-API)")
    parser.add_argument("--iters", type=int, default=10, help="EM iterations (tol=0)")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="best of this many timings, contenders interleaved (at most 2 above N=200,000)",
    )
    parser.add_argument(
        "--svi-budget",
        type=float,
        default=None,
        help="seconds for Pyro's SVI route per problem (default 120; quick 10; 0 skips it)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for torch and for numpy's BLAS, the same for every contender (default: as is)",
    )
    parser.add_argument("--problems", default="P1,P2", help="which problems to run (P1, P2)")
    parser.add_argument("--no-scale", action="store_true", help="skip the N=2,000,000 run")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--_scale-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = threadpool_limits(args.threads) if args.threads else nullcontext()
    if args.threads:
        torch.set_num_threads(args.threads)
    with limits:
        return run(args)


def run(args) -> int:
    if args._scale_child:
        print(json.dumps(scale_child(*json.loads(args._scale_child))))
        return 0

    device = resolve_device(args.device)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    budget = args.svi_budget if args.svi_budget is not None else (10.0 if args.quick else 120.0)
    api_reason = array_api_available(device)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, scikit-learn {sklearn.__version__}, "
        f"device {device}, threads {torch.get_num_threads()}, iterations {args.iters} (tol=0)"
    )
    if api_reason:
        print(f"sklearn-array-api skipped: {api_reason}")
    warnings.simplefilter("ignore", ConvergenceWarning)

    rows, extras = [], {}
    chosen = {name.strip() for name in args.problems.split(",")}
    for prob in (p for p in problems(args.quick) if p.name in chosen):
        x = make_data(prob.n, prob.d, prob.k)
        x64 = torch.from_numpy(x)
        for cov in prob.covariance_types:
            start = make_start(x, prob.k, cov)
            for dname in dtypes:
                dtype = DTYPES[dname]
                row = Row(prob.name, cov, dname, prob.n, prob.d, prob.k, args.iters)
                common = (x, cov, start, args.iters, dtype)
                runs = {
                    "ours": partial(run_ours, *common, device),
                    "sklearn-numpy": partial(run_sklearn_numpy, *common),
                }
                if not api_reason:
                    runs["sklearn-array-api"] = partial(run_sklearn_array_api, *common, device)
                else:
                    row.notes["sklearn-array-api"] = "unavailable"
                # best of the repeats, the contenders interleaved so that each sees the same
                # load on a shared machine (not ours back to back, then the peers')
                repeats = args.repeats if prob.n <= 200_000 else min(args.repeats, 2)
                timings = {name: [] for name in runs}
                for _ in range(repeats):
                    for name, fn in runs.items():
                        timings[name].append(fn())
                for name, done in timings.items():
                    row.seconds[name] = min(t for t, _ in done)
                    row.log_likelihood[name] = evaluate(x64, cov, *done[-1][1])
                if prob.svi and cov == "full" and budget > 0:
                    seconds, reached, steps = run_pyro_svi(
                        x, cov, start, dtype, device, row.log_likelihood["ours"] - 1e-3, budget
                    )
                    if seconds is None:
                        row.notes["pyro-svi"] = (
                            f"> {budget:.0f} ({steps} steps, ll {reached:.4f};"
                            f" ratio < {row.seconds['ours'] / budget:.3f})"
                        )
                    else:
                        row.seconds["pyro-svi"] = seconds
                        row.notes["pyro-svi"] = (
                            f"{seconds:.1f} ({steps} steps; ratio {row.seconds['ours'] / seconds:.3f})"
                        )
                rows.append(row)
                print(
                    f"  {prob.name} {cov:9s} {dname}: ours {row.seconds['ours']:.3f}s, "
                    + ", ".join(f"{k} {v:.3f}s" for k, v in row.seconds.items() if k != "ours"),
                    flush=True,
                )
        if prob.svi:
            start = make_start(x, prob.k, "full")
            extras[f"{prob.name} E-step (full)"] = {
                dname: e_step_comparison(x, "full", start, DTYPES[dname], device) for dname in dtypes
            }

    print()
    print(ratio_table(rows))
    print()
    for name, value in extras.items():
        for dname, times in value.items():
            print(
                f"{name} {dname}: Pyro enumeration E-step {1000 * times['pyro_enum_e_step']:.1f} ms; "
                f"closed-form E-step + statistics {1000 * times['closed_form_e_step_and_stats']:.1f} ms"
            )
    scale = []
    if not args.no_scale:
        n, d, k = (60_000, 8, 8) if args.quick else (2_000_000, 16, 32)
        for dname in dtypes:
            res = run_scale(n, d, k, dname, 3, str(device), args.threads)
            scale.append(res)
            if "error" in res:
                print(f"scale N={n} D={d} K={k} diag {dname}: failed: {res['error']}")
                continue
            gib = 2**30
            print(
                f"scale N={n} D={d} K={k} diag {dname}: data {res['data_bytes'] / gib:.2f} GiB; "
                f"ours {res['ours_seconds_per_iteration']:.2f} s/iteration, peak beyond data "
                f"{res['ours_peak_beyond_data_bytes'] / gib:.3f} GiB; sklearn-numpy "
                f"{res['sklearn_numpy_seconds_per_iteration']:.2f} s/iteration, peak beyond data "
                f"{res['sklearn_numpy_peak_beyond_data_bytes'] / gib:.3f} GiB; ratio "
                f"{res['ours_seconds_per_iteration'] / res['sklearn_numpy_seconds_per_iteration']:.3f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows], "e_step": extras, "scale": scale}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
