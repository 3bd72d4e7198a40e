"""Throughput and memory of ``log_likelihood`` against a hand-written importance sampler.

The estimate is log p(x) ~= logmeanexp_k [log p(x, z_k) - log q(z_k | x)], k = 5000
samples per test digit (300 digits), with the digits VAE's encoder as the proposal. Both
estimators process at most ``max_elements`` (sample, example) pairs per pass and combine
passes with a running logsumexp; each measurement runs in its own process so its peak
resident memory (above the memory held before estimating) can be read.

    python benchmarks/evaluation.py            # k = 5000, three chunk sizes
    python benchmarks/evaluation.py --quick    # a smoke run
    python benchmarks/evaluation.py --device cuda   # peak memory: CUDA allocations instead of RSS
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from lvm_pyro.data import load_digits
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.vae import VAE


def _peak_mib(device: torch.device) -> float:
    """Peak memory so far: resident set on CPU, allocated device memory on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def handwritten(vae: VAE, x: torch.Tensor, k: int, max_elements: int) -> torch.Tensor:
    """The same estimator written directly in PyTorch, chunked the same way."""
    loc, scale = vae.encoder_head(vae.encoder_body(x))
    q = torch.distributions.Normal(loc, scale)
    prior = torch.distributions.Normal(torch.zeros_like(loc), 1.0)
    chunk = max(1, max_elements // x.shape[0])
    total = None
    for start in range(0, k, chunk):
        z = q.sample((min(chunk, k - start),))
        log_px = -F.binary_cross_entropy_with_logits(
            vae.decoder.net(z), x.expand(z.shape[0], *x.shape), reduction="none").sum(-1)
        log_w = log_px + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)
        part = log_w.logsumexp(0)
        total = part if total is None else torch.logaddexp(total, part)
    return total - math.log(k)


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = load_digits(binarize=8).test.x.to(device)
    vae = VAE((64,), latent_dim=16).eval().to(device)
    torch.manual_seed(1)
    max_elements = args.max_elements[0]
    _sync(device)
    before = _peak_mib(device)
    start = time.perf_counter()
    if args.worker == "lvm_pyro":
        values = log_likelihood(vae, x, num_samples=args.k, max_elements=max_elements, seed=1,
                                device=device).per_example
    else:
        values = handwritten(vae, x, args.k, max_elements)
    _sync(device)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_extra_mib": max(_peak_mib(device) - before, 0.0),
                      "mean": float(values.double().mean())}))


def measure(which: str, k: int, max_elements: int, threads: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--k", str(k), "--max-elements", str(max_elements),
           "--threads", str(threads), "--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return json.loads(out[-1])


def run(args) -> str:
    n = 300
    lines = [
        f"log_likelihood on the digits test set ({n} examples, VAE latent 16, k={args.k}), "
        f"{args.threads} thread(s), {args.device}, median of {args.rounds} rounds",
        "",
        "| max (sample, example) pairs per pass | lvm_pyro us / sample / example | hand-written | "
        "ratio | lvm_pyro peak extra MiB | hand-written peak extra MiB | mean log p(x), both |",
        "|---|---|---|---|---|---|---|",
    ]
    for max_elements in args.max_elements:
        lib, hand = [], []
        for _ in range(args.rounds):
            lib.append(measure("lvm_pyro", args.k, max_elements, args.threads, args.device))
            hand.append(measure("hand", args.k, max_elements, args.threads, args.device))
        per = 1e6 / (args.k * n)
        t_lib = statistics.median(r["seconds"] for r in lib) * per
        t_hand = statistics.median(r["seconds"] for r in hand) * per
        lines.append(
            f"| {max_elements:,} | {t_lib:.2f} | {t_hand:.2f} | {t_lib / t_hand:.2f}x | "
            f"{max(r['peak_extra_mib'] for r in lib):.0f} | {max(r['peak_extra_mib'] for r in hand):.0f} | "
            f"{lib[0]['mean']:.3f}, {hand[0]['mean']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--max-elements", type=int, nargs="+", default=[2**14, 2**16, 2**18])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=("lvm_pyro", "hand"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "evaluation.md"))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.k, args.rounds, args.max_elements = 200, 1, [2**14]
    table = run(args)
    print(table)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
