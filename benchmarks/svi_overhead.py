"""Cost of a training step of ``lvm_pyro.fit`` against a hand-written PyTorch loop.

Same architecture (the library VAE's own modules), optimizer (torch Adam: the default
implementation for the reference, the fused one in ``fit``), batch, data and KL treatment:
"reparam" against a sampled KL (``--meanfield``: also "meanfield" against the analytic KL).
Peers in the same run: the hand-written step (the reference; also with fused Adam), ``fit``
with its defaults on a long run (``compile="auto"`` then captures the whole step:
``lvm_pyro.infer.compile``; compile time excluded here, reported separately), ``fit`` with
``compile="grad"`` (loss and gradients in the graph, the optimizer eager), ``fit(compile=False)``
(eager), Pyro's ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``, and NumPyro's jit-compiled
SVI step (optional: skipped where JAX is not installed; ``numpyro_vae.py``, same threads).
Timings alternate between peers in short blocks and each ratio is the median over rounds of
(peer / hand-written), so a noisy machine moves both sides of a ratio together.

Every ``fit`` peer plans ``PLANNED_STEPS`` steps (so the default rule compiles: a long run)
and a callback stops it after the timed block.

    python benchmarks/svi_overhead.py            # both sizes, 1 thread
    python benchmarks/svi_overhead.py --clock cpu   # CPU time: steadier on a shared machine
    python benchmarks/svi_overhead.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from torch.nn import functional as F

import lvm_pyro
from lvm_pyro.data import load_digits
from lvm_pyro.infer.callbacks import Callback
from lvm_pyro.infer.objectives import TrainingScale
from lvm_pyro.models.vae import VAE

DEFAULT_PEER = "fit (default, long run: whole step compiled)"
GRAD_PEER = "fit (compile='grad')"
EAGER_PEER = "fit (compile=False)"
#: steps every fit peer plans (the default rule compiles such a run); a callback stops it early
PLANNED_STEPS = 100_000
#: The step clock: wall time by default; ``--clock cpu`` (process CPU time, page-fault service
#: included) is steadier on a machine shared with other jobs.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = "wall"


def now() -> float:
    return CLOCKS[CLOCK]()
CONFIGS = {
    "small": dict(batch=128, hidden=256, latent=8),
    "large": dict(batch=1024, hidden=1024, latent=32),
}


class StepClock(Callback):
    """Time stamps after every step; the per-step cost excludes set-up and compilation. Stops
    the run after ``stop_after`` steps."""

    def __init__(self, warmup: int, stop_after: int) -> None:
        self.warmup = warmup
        self.stop_after = stop_after
        self.stamps: list[float] = []

    def on_step_end(self, state) -> None:
        self.stamps.append(now())
        if len(self.stamps) >= self.stop_after:
            state.stop = True

    def per_step(self) -> float:
        s = self.stamps[self.warmup:]
        return (s[-1] - s[0]) / (len(s) - 1)


def make_vae(cfg: dict, device, dtype) -> VAE:
    return VAE((64,), latent_dim=cfg["latent"], hidden=(cfg["hidden"],)).to(device=device, dtype=dtype)


def time_fit(x, cfg, estimator, steps, warmup, compile, device):
    pyro.clear_param_store()
    step_clock = StepClock(warmup, steps)
    torch.manual_seed(0)
    vae = make_vae(cfg, device, x.dtype)
    result = lvm_pyro.fit(vae, x, objective=estimator, steps=PLANNED_STEPS, batch_size=cfg["batch"],
                          lr=1e-3, kl_warmup=0, progress=False, seed=0, compile=compile, device=device,
                          callbacks=[step_clock])
    COMPILE_TIMES.setdefault((cfg["batch"], cfg["hidden"], str(compile)), []).append(result.compile_time)
    return step_clock.per_step(), result


COMPILE_TIMES: dict[tuple, list[float]] = {}


def time_handwritten(x, cfg, estimator, steps, warmup, device, fused=False):
    torch.manual_seed(0)
    vae = make_vae(cfg, device, x.dtype)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3, fused=fused)
    n, b = x.shape[0], cfg["batch"]
    g = torch.Generator().manual_seed(0)
    stamps = []
    done = 0
    while done < steps:
        order = torch.randperm(n, generator=g).to(device)
        for i in range(n // b):
            xb = x[order[i * b:(i + 1) * b]]
            loc, scale = vae.encoder_head(vae.encoder_body(xb))
            z = loc + scale * torch.randn_like(loc)
            rec = -F.binary_cross_entropy_with_logits(vae.decoder.net(z), xb, reduction="none").sum(-1)
            if estimator == "meanfield":
                kl = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1)
            else:
                kl = (dist.Normal(loc, scale).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).sum(-1)
            loss = -(rec - kl).sum() * (n / b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            stamps.append(now())
            done += 1
            if done >= steps:
                break
    s = stamps[warmup:]
    return (s[-1] - s[0]) / (len(s) - 1)


def time_pyro_svi(x, cfg, steps, warmup, device):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = make_vae(cfg, device, x.dtype)
    scale = TrainingScale(x.shape[0])
    loss = Trace_ELBO(max_plate_nesting=1)
    svi = SVI(scale(vae.model), scale(vae.guide), pyro.optim.Adam({"lr": 1e-3}), loss)
    n, b = x.shape[0], cfg["batch"]
    stamps = []
    with pyro.validation_enabled(False):
        for _ in range(steps):
            idx = torch.randint(0, n, (b,), device=device)
            svi.step(x[idx])
            stamps.append(now())
    s = stamps[warmup:]
    return (s[-1] - s[0]) / (len(s) - 1)


def time_numpyro(cfg, estimator, steps, warmup, threads) -> float | None:
    """ms per jit-compiled NumPyro SVI step (subprocess, threads pinned); None without JAX."""
    cmd = [sys.executable, str(Path(__file__).parent / "numpyro_vae.py"), "--batch", str(cfg["batch"]),
           "--hidden", str(cfg["hidden"]), "--latent", str(cfg["latent"]), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(threads), "--clock", CLOCK]
    if estimator == "meanfield":
        cmd.append("--meanfield")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return None if not out or out[-1] == "unavailable" else float(out[-1]) / 1e3


def trajectory_gap(x, cfg, estimator, device, compile) -> float:
    """Largest relative difference of the per-step losses, compiled vs eager, same seed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the compiled step is not used")  # a real compiled run
        _, compiled = time_fit(x, cfg, estimator, 60, 5, compile, device)
    _, eager = time_fit(x, cfg, estimator, 60, 5, False, device)
    assert compiled.config["compiled"] is True, compiled.config.get("compile_fallback")
    a, b = torch.tensor(compiled.losses), torch.tensor(eager.losses)
    return float(((a - b).abs() / b.abs()).max())


def peers(x, cfg, estimator, steps, warmup, device, threads) -> dict:
    """Peer name -> a callable timing one block (seconds per step, or None if unavailable)."""
    table = {
        DEFAULT_PEER: lambda: time_fit(x, cfg, estimator, steps, warmup, "auto", device)[0],
        GRAD_PEER: lambda: time_fit(x, cfg, estimator, steps, warmup, "grad", device)[0],
        EAGER_PEER: lambda: time_fit(x, cfg, estimator, steps, warmup, False, device)[0],
        "hand-written + fused Adam": lambda: time_handwritten(x, cfg, estimator, steps, warmup, device, True),
    }
    if device.type == "cpu":
        table["NumPyro SVI (jit)"] = lambda: time_numpyro(cfg, estimator, steps, warmup, threads)
    if estimator == "reparam":
        table["Pyro SVI + Trace_ELBO"] = lambda: time_pyro_svi(x, cfg, steps, warmup, device)
    return table


def run(args) -> str:
    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = load_digits(binarize=8).train.x.to(device)
    rows = []
    for size, cfg in CONFIGS.items():
        if size not in args.sizes.split(","):
            continue
        steps = args.steps if size == "small" else max(args.steps // 2, 20)
        warmup = min(40, steps // 2)  # past set-up, compilation and fit's graph-or-eager trial
        for estimator in ("reparam", "meanfield") if args.meanfield else ("reparam",):
            timers = peers(x, cfg, estimator, steps, warmup, device, args.threads)
            ratios: dict[str, list[float]] = {name: [] for name in timers}
            hand_ms = []
            for _ in range(args.rounds):
                hand = time_handwritten(x, cfg, estimator, steps, warmup, device)
                hand_ms.append(1e3 * hand)
                for name, timer in timers.items():
                    if args.peers and not any(p in name for p in args.peers.split(",")):
                        continue
                    seconds = timer()
                    if seconds is not None:
                        ratios[name].append(seconds / hand)
                print(f"round: {size} {estimator} hand {1e3 * hand:.2f} ms; "
                      + "; ".join(f"{k} {v[-1]:.2f}x" for k, v in ratios.items() if v), flush=True)
            gaps = {} if args.no_gap else {
                peer: trajectory_gap(x, cfg, estimator, device, mode)
                for peer, mode in ((DEFAULT_PEER, "auto"), (GRAD_PEER, "grad")) if ratios.get(peer)}
            for peer, values in ratios.items():
                if values:
                    rows.append((size, estimator, peer, statistics.median(values),
                                 statistics.median(hand_ms), gaps.get(peer)))
    lines = [
        f"SVI step cost relative to a hand-written PyTorch step ({args.threads} thread(s), {device}, "
        f"median of {args.rounds} rounds, {args.clock} clock; torch {torch.__version__}, "
        f"pyro {pyro.__version__}; load average {os.getloadavg()[0]:.1f} at the end)",
        "",
        "| VAE | KL | peer | time / hand-written | hand-written ms/step | compiled vs eager loss gap |",
        "|---|---|---|---|---|---|",
    ]
    for size, est, peer, ratio, hand, gap in rows:
        cfg = CONFIGS[size]
        name = f"{size} (B={cfg['batch']}, H={cfg['hidden']}, L={cfg['latent']})"
        kl = "analytic (meanfield)" if est == "meanfield" else "sampled (reparam)"
        lines.append(f"| {name} | {kl} | {peer} | {ratio:.2f}x | {hand:.2f} | "
                     f"{'' if gap is None else f'{gap:.1e}'} |")
    lines += ["", "Compile time per fit call (s; recording + compiling + verifying, PyTorch's on-disk "
              "cache warm after the first call of a shape):", ""]
    for (batch, hidden, mode), times in COMPILE_TIMES.items():
        if mode != "False":
            lines.append(f"- B={batch}, H={hidden}, compile={mode}: first {times[0]:.1f}, "
                         f"median {statistics.median(times):.1f} over {len(times)} calls")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=240, help="steps per timing block (small VAE)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps and rounds")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (steadier on a shared machine)")
    parser.add_argument("--meanfield", action="store_true", help="also time the analytic-KL objective")
    parser.add_argument("--sizes", default="small,large", help="comma-separated: small, large")
    parser.add_argument("--peers", default="", help="comma-separated substrings of the peers to time "
                        "(default: all)")
    parser.add_argument("--no-gap", action="store_true", help="skip the compiled-vs-eager loss gap")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "svi_overhead.md"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 40, 1
    table = run(args)
    print(table)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
