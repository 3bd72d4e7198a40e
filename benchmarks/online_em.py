"""Online EM over a memory-mapped file against batch EM in memory (the diagonal mixture).

The data (N=2,000,000, D=16, K=32, diag, from ``make_mixture``, float32) is written to a
``.npy`` file in a temporary directory. Both contenders start from the same parameters
(k-means on the first batch):

- ``batch``: EM on the whole array in memory (``np.load`` without mmap), run to convergence
  (tol 1e-6 per point, at most --batch-iters iterations); its time per iteration is one
  ``expected_statistics`` over all rows plus one ``m_step_from_statistics`` (what ``em``'s
  closed-form route runs per iteration);
- ``online``: ``OnlineEM`` (Cappe-Moulines steps gamma_t = t^-0.6, statistics averaged after
  the first pass) over batches read from ``np.load(path, mmap_mode="r")``, 3 passes.

Timing alternates: one online pass, then two batch iterations, three times (medians, on the
same load). The log-likelihood of both final fits is evaluated on all rows by the same code.
Memory: a child process runs the 3 online passes over the memmap alone and samples its
anonymous resident memory (``RssAnon``, every 5 ms; memmap pages are file-backed page cache,
reported apart as the VmHWM peak) and tracemalloc's peak (numpy's batch copies).

Targets (issue 13): online within 0.1% of batch EM's per-point log-likelihood after at most
3 passes; peak memory beyond the batch < 0.5 GiB; time per pass <= 1.5 x batch EM's time per
iteration.

Usage:
    python benchmarks/online_em.py                       # the full run
    python benchmarks/online_em.py --n 200000 --batch-iters 50   # smaller
    python benchmarks/online_em.py --markdown benchmarks/results/online_em.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import torch

from lvm_pyro.data import make_mixture
from lvm_pyro.infer.online_em import OnlineEM, _as_rows, _batches
from lvm_pyro.models.gmm import GaussianMixtureModel


def _status(field: str) -> int:
    """A field of /proc/self/status in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class _AnonSampler:
    """Peak of RssAnon sampled every 5 ms in a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.005)

    def __enter__(self):
        self.peak = _status("RssAnon")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def make_data(path: str, n: int, d: int, k: int) -> None:
    """Write the mixture's rows to ``path`` (float32 .npy), in blocks."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    block = 500_000
    for i, s in enumerate(range(0, n, block)):
        m = min(block, n - s)
        # one mixture (seed 0) for every block: same means and covariances, new draws
        mix = make_mixture(m, k, d, seed=0, covariance_type="diag", dtype=torch.float64)
        z = np.random.default_rng(100 + i).choice(k, size=m, p=mix.weights.numpy())
        noise = np.random.default_rng(200 + i).normal(size=(m, d))
        out[s : s + m] = (mix.means.numpy()[z] + noise * np.sqrt(mix.covariances.numpy()[z])).astype(np.float32)
    out.flush()
    del out


def start_model(path: str, k: int, batch_size: int) -> dict:
    first = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[:batch_size]))
    model = GaussianMixtureModel(k, first.shape[1], "diag").to(first.dtype)
    model.initialize_(first, "kmeans", torch.Generator().manual_seed(0))
    return {name: value.clone() for name, value in model.state_dict().items()}


def _model(k: int, d: int, state: dict) -> GaussianMixtureModel:
    model = GaussianMixtureModel(k, d, "diag").to(torch.float32)
    model.load_state_dict(state)
    return model


def online_pass(state: OnlineEM, source, batch_size: int, rng) -> None:
    for batch, _ in _batches(source, batch_size, None, rng):
        state.step(_as_rows(batch, torch.float32, "cpu", source.shape[1], "batch"))


def batch_iteration(model: GaussianMixtureModel, x: torch.Tensor, shift: torch.Tensor) -> float:
    total, stats = model.expected_statistics(x, shift)
    model.m_step_from_statistics(stats)
    return float(total) / len(x)


def mean_log_likelihood(model: GaussianMixtureModel, x: torch.Tensor) -> float:
    return float(model.log_prob(x).sum(dtype=torch.float64)) / len(x)


def memory_child(path: str, k: int, batch_size: int, passes: int, state_file: str) -> dict:
    """Runs alone in a child process: the online passes over the memmap, memory sampled."""
    init = torch.load(state_file, weights_only=True)
    source = np.load(path, mmap_mode="r")
    model = _model(k, source.shape[1], init)
    rng = np.random.default_rng(0)
    steps = -(-len(source) // batch_size)
    online = OnlineEM(model, kappa=0.6, average_after=steps, n_total=float(len(source)))
    _reset_hwm()
    rss_before, anon_before = _status("VmRSS"), _status("RssAnon")
    tracemalloc.start()
    with _AnonSampler() as anon:
        for _ in range(passes):
            online_pass(online, source, batch_size, rng)
        online.finalize()
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "anon_peak_beyond_start": anon.peak - anon_before,
        "rss_hwm_beyond_start": _status("VmHWM") - rss_before,
        "tracemalloc_peak": traced_peak,
        "batch_bytes": batch_size * source.shape[1] * 4,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=131072)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--batch-iters", type=int, default=100, help="at most this many batch EM iterations")
    parser.add_argument("--markdown", default=None, help="write the result table here")
    parser.add_argument("--_memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._memory_child:
        print(json.dumps(memory_child(*json.loads(args._memory_child))))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mixture.npy")
        t = time.perf_counter()
        make_data(path, args.n, args.d, args.k)
        print(f"data: {path} ({args.n} x {args.d} float32), written in {time.perf_counter() - t:.1f} s")
        init = start_model(path, args.k, args.batch_size)
        state_file = os.path.join(tmp, "start.pt")
        torch.save(init, state_file)

        child = subprocess.run(
            [sys.executable, __file__, "--_memory-child",
             json.dumps([path, args.k, args.batch_size, args.passes, state_file])],
            capture_output=True, text=True, check=False,
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1]) if child.returncode == 0 else {
            "error": child.stderr.strip().splitlines()[-1]}
        print("memory:", memory)

        x = torch.from_numpy(np.load(path))  # batch EM: all rows in memory
        source = np.load(path, mmap_mode="r")
        shift = x.mean(0)
        batch_model, online_model = _model(args.k, args.d, init), _model(args.k, args.d, init)
        steps = -(-args.n // args.batch_size)
        online = OnlineEM(online_model, kappa=0.6, average_after=steps, n_total=float(args.n))
        rng = np.random.default_rng(0)
        pass_times, iter_times, batch_ll = [], [], []
        for _ in range(args.passes):  # alternate: one online pass, two batch iterations
            t = time.perf_counter()
            online_pass(online, source, args.batch_size, rng)
            pass_times.append(time.perf_counter() - t)
            for _ in range(2):
                t = time.perf_counter()
                batch_ll.append(batch_iteration(batch_model, x, shift))
                iter_times.append(time.perf_counter() - t)
        online.finalize()
        while len(batch_ll) < args.batch_iters and (len(batch_ll) < 2 or batch_ll[-1] - batch_ll[-2] > 1e-6):
            batch_ll.append(batch_iteration(batch_model, x, shift))
        ll_batch, ll_online = mean_log_likelihood(batch_model, x), mean_log_likelihood(online_model, x)

    rel = abs(ll_online - ll_batch) / abs(ll_batch)
    pass_s, iter_s = statistics.median(pass_times), statistics.median(iter_times)
    ratio = pass_s / iter_s
    gib = 2.0**30
    peak = memory.get("anon_peak_beyond_start", float("nan"))
    rows = [
        ("per-point log-likelihood, batch EM", f"{ll_batch:.6f} ({len(batch_ll)} iterations, converged: "
         f"{len(batch_ll) < args.batch_iters})"),
        (f"per-point log-likelihood, online EM after {args.passes} passes", f"{ll_online:.6f}"),
        ("relative difference (target <= 1e-3)", f"{rel:.2e} {'ok' if rel <= 1e-3 else 'MISSED'}"),
        ("time per online pass (median)", f"{pass_s:.3f} s ({', '.join(f'{t:.2f}' for t in pass_times)})"),
        ("time per batch EM iteration (median)", f"{iter_s:.3f} s ({', '.join(f'{t:.2f}' for t in iter_times)})"),
        ("ratio pass / iteration (target <= 1.5)", f"{ratio:.2f} {'ok' if ratio <= 1.5 else 'MISSED'}"),
        ("peak anonymous memory beyond the start, online (target < 0.5 GiB)",
         f"{peak / gib:.3f} GiB {'ok' if peak < 0.5 * gib else 'MISSED'} (batch of rows: "
         f"{memory.get('batch_bytes', 0) / 2**20:.1f} MiB)"),
        ("  resident peak incl. memmap page cache (file-backed, reclaimable)",
         f"{memory.get('rss_hwm_beyond_start', float('nan')) / gib:.3f} GiB"),
        ("  tracemalloc peak (numpy / Python allocations)", f"{memory.get('tracemalloc_peak', 0) / 2**20:.1f} MiB"),
        ("data file", f"{args.n * args.d * 4 / gib:.3f} GiB"),
    ]
    header = (
        f"Command: `python benchmarks/online_em.py` (N={args.n}, D={args.d}, K={args.k}, diag, float32, "
        f"batch_size={args.batch_size}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n\n"
    )
    table = header + "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
