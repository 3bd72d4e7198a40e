"""Online EM on a user's Pyro mixture read from a memory-mapped file, against batch ``em`` on it
in memory: the compiled chain route (emission tables, closed-form M-step) both ways.

The model is written as a user writes one (``pyro.param`` weights, locs and scales, a data plate,
an enumerated ``z``, ``Normal(locs[z], scales[z]).to_event(1)``); nothing in it is
library-specific. The data (N=2,000,000, D=16, K=32 by default, float32, the rows of
``benchmarks/online_em.py``) is written to a ``.npy`` file in a temporary directory. Both
contenders start from the same parameters (k-means on the first batch, as
``benchmarks/online_em.py`` starts its mixture):

- ``batch``: ``em(model, x, tol=1e-6)`` on the whole array in memory, to convergence (at most
  --batch-iters); its time per iteration is (time of that run - time of a 1-iteration run) /
  (iterations - 1), so the one-off compilation is left out;
- ``online``: ``em(model, "data.npy", batch_size=B, max_iter=3)``: Cappe-Moulines steps over
  batches read from the memmap, statistics averaged after the first pass; its time per pass is
  the whole run (compilations included) / 3.

The per-point log-likelihood of both fits is evaluated on all rows by the same code. Memory: a
child process runs the online fit alone and reports its peak resident memory (VmHWM) less its
resident memory before the fit (after a warm-up fit on 4,096 rows, so that lazy imports count
as the process's, and with the peak reset).

Targets (as issue 13's for the library's own mixture): online within 0.1% of batch EM's
per-point log-likelihood after 3 passes; time per pass <= 1.5 x batch EM's time per iteration;
peak memory beyond the batch < 0.5 GiB.

Usage:
    python benchmarks/online_em_user.py                          # the full run
    python benchmarks/online_em_user.py --n 200000 --batch-size 20000   # smaller
    python benchmarks/online_em_user.py --markdown benchmarks/results/online_em_user.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from lvm_pyro.infer.em import em
from lvm_pyro.models.gmm import GaussianMixtureModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from online_em import _reset_hwm, make_data


def make_model(start: dict):
    """A user's diagonal Gaussian mixture, its parameters initialized at ``start``."""

    def mixture(x):
        w = pyro.param("weights", start["weights"].to(x.dtype), constraint=constraints.simplex)
        locs = pyro.param("locs", start["locs"].to(x.dtype))
        scales = pyro.param("scales", start["scales"].to(x.dtype), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)

    return mixture


def starting_point(path: str, k: int, batch_size: int) -> dict:
    """k-means on the first batch (as benchmarks/online_em.py starts the library's mixture)."""
    first = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[:batch_size])).double()
    gmm = GaussianMixtureModel(k, first.shape[1], "diag").double()
    gmm.initialize_(first, "kmeans", torch.Generator().manual_seed(0))
    return dict(
        weights=gmm.weights.detach().clone(),
        locs=gmm.loc.detach().clone(),
        scales=gmm.covariances().detach().sqrt().clone(),
    )


def fitted() -> dict:
    return {n: pyro.param(n).detach().double().clone() for n in ("weights", "locs", "scales")}


def mean_log_likelihood(params: dict, x: torch.Tensor, block: int = 65536) -> float:
    """sum_n log sum_k w_k prod_d N(x_nd | mu_kd, s_kd) / N, in float64, block by block."""
    total = 0.0
    log_w, locs, scales = params["weights"].log(), params["locs"], params["scales"]
    for rows in x.split(block):
        rows = rows.double()
        lp = dist.Normal(locs, scales).log_prob(rows[:, None, :]).sum(-1) + log_w
        total += float(lp.logsumexp(-1).sum())
    return total / len(x)


def run_online(path: str, start: dict, batch_size: int, passes: int) -> tuple[float, dict, list]:
    pyro.clear_param_store()
    t = time.perf_counter()
    result = em(
        make_model(start), path, batch_size=batch_size, max_iter=passes, tol=0.0, seed=0, device="cpu"
    )
    elapsed = time.perf_counter() - t
    assert (result.e_step, result.m_step) == ("chain", "online"), (result.e_step, result.m_step)
    return elapsed, fitted(), result.log_likelihood


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(path: str, start_file: str, batch_size: int, passes: int) -> dict:
    """The online fit's peak resident memory beyond the process's before it: after a warm-up fit
    on the first rows (lazy imports are the process's, not the fit's), the peak reset."""
    start = torch.load(start_file)
    warm = os.path.join(os.path.dirname(path), "warm.npy")
    run_online(warm, start, 1024, 1)
    _reset_hwm()
    before = _status("VmRSS")
    run_online(path, start, batch_size, passes)
    return {"before": before, "peak": _status("VmHWM")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=131072)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--_memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    if args._memory_child:
        print(
            json.dumps(
                memory_child(args._memory_child[0], args._memory_child[1], args.batch_size, args.passes)
            )
        )
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npy")
        make_data(path, args.n, args.d, args.k)  # the rows of benchmarks/online_em.py
        start = starting_point(path, args.k, args.batch_size)
        start_file = os.path.join(tmp, "start.pt")
        torch.save(start, start_file)

        # warm-up on a few rows: the lazy imports of the first compile are nobody's cost
        warm = os.path.join(tmp, "warm.npy")
        np.save(warm, np.load(path, mmap_mode="r")[:4096])
        run_online(warm, start, 1024, 1)
        pyro.clear_param_store()
        em(make_model(start), torch.from_numpy(np.load(warm)), max_iter=2, device="cpu")

        online_s, online_params, pass_lls = run_online(path, start, args.batch_size, args.passes)

        x = torch.from_numpy(np.load(path))
        pyro.clear_param_store()
        t = time.perf_counter()
        em(make_model(start), x, max_iter=1, tol=0.0, device="cpu")
        one = time.perf_counter() - t
        pyro.clear_param_store()
        t = time.perf_counter()
        batch = em(make_model(start), x, max_iter=args.batch_iters, tol=1e-6, device="cpu")
        full = time.perf_counter() - t
        assert batch.e_step == "chain", batch.e_step
        batch_params = fitted()
        per_iteration = (full - one) / max(batch.n_iter - 1, 1)

        ll_batch = mean_log_likelihood(batch_params, x)
        ll_online = mean_log_likelihood(online_params, x)
        gap = (ll_batch - ll_online) / abs(ll_batch)
        del x
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--n",
                str(args.n),
                "--batch-size",
                str(args.batch_size),
                "--passes",
                str(args.passes),
                "--threads",
                str(args.threads),
                "--_memory-child",
                path,
                start_file,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1])

    per_pass = online_s / args.passes
    beyond = (memory["peak"] - memory["before"]) / 2**30
    batch_bytes = args.batch_size * args.d * 4 / 2**30
    rows = [
        (
            "per-point log-likelihood",
            f"batch {ll_batch:.6f} ({batch.n_iter} it), online {ll_online:.6f}",
            f"gap {100 * gap:.4f}%",
            "<= 0.1%",
            abs(gap) <= 1e-3,
        ),
        (
            "time",
            f"batch {per_iteration:.2f} s/iteration, online {per_pass:.2f} s/pass",
            f"{per_pass / per_iteration:.2f}x",
            "<= 1.5x",
            per_pass <= 1.5 * per_iteration,
        ),
        (
            "peak memory of the online fit beyond its start",
            f"{beyond:.2f} GiB (a batch: {batch_bytes:.3f} GiB)",
            f"{beyond:.2f} GiB",
            "< 0.5 GiB",
            beyond < 0.5,
        ),
    ]
    lines = [
        "| measure | figures | result | target | met |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} | {'yes' if ok else 'NO'} |" for a, b, c, d, ok in rows),
    ]
    command = " ".join(["python benchmarks/online_em_user.py", *(argv if argv is not None else sys.argv[1:])])
    header = (
        f"Command: `{command}`"
        f" ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); N={args.n}, D={args.d}, K={args.k}, "
        f"batch {args.batch_size}, {args.passes} passes, torch {torch.__version__}, "
        f"{args.threads} thread(s), "
        f"load average {os.getloadavg()[0]:.2f}. Online passes' running log-likelihood: "
        + ", ".join(f"{v:.5f}" for v in pass_lls)
    )
    text = "\n".join(
        ["# Online EM on a user's Pyro mixture (memory-mapped) against batch em", "", header, "", *lines, ""]
    )
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
