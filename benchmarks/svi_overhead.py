"""Cost of a training step of ``lvm_pyro.fit`` against a hand-written PyTorch loop.

Same architecture (the library VAE's own modules), optimizer (torch Adam: the default
implementation for the reference, the fused one in ``fit``), batch, data and KL treatment:
"reparam" against a sampled KL, "meanfield" against the analytic KL. Peers in the same run:
the hand-written step (the reference; also with fused Adam), ``fit`` with the compiled loss
(the default), ``fit(jit="inductor")`` (that graph compiled by torch.compile; compile time
excluded), ``fit`` eager (``jit=False``), Pyro's ``SVI`` with ``Trace_ELBO`` /
``JitTrace_ELBO`` and ``pyro.optim.Adam``, and NumPyro's jit-compiled SVI step (optional:
skipped where JAX is not installed; ``numpyro_vae.py``, same threads). Timings alternate
between peers in short blocks and each ratio is the median over rounds of
(peer / hand-written), so a noisy machine moves both sides of a ratio together.

Every peer runs with the glibc malloc settings ``fit`` applies (freed memory kept in the
process, ``lvm_pyro.infer.compiled.retain_freed_memory``): with glibc's defaults each step
of the large VAE faults its freed temporaries back in (1,000-5,000 page faults a step,
depending on the heap layout each peer happens to produce). ``--glibc-default`` measures
without them.

    python benchmarks/svi_overhead.py            # both sizes, 1 thread
    python benchmarks/svi_overhead.py --clock cpu   # CPU time: steadier on a shared machine
    python benchmarks/svi_overhead.py --quick    # a smoke run
    python benchmarks/svi_overhead.py --device cuda
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
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from torch.nn import functional as F

import lvm_pyro
from lvm_pyro.data import load_digits
from lvm_pyro.infer import compiled
from lvm_pyro.infer.callbacks import Callback
from lvm_pyro.infer.objectives import TrainingScale
from lvm_pyro.models.vae import VAE

DEFAULT_PEER = "fit (default: graph if faster)"
INDUCTOR_PEER = "fit (jit='inductor')"
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
    """Time stamps after every step; the per-step cost excludes set-up and compilation."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.stamps: list[float] = []

    def on_step_end(self, state) -> None:
        self.stamps.append(now())

    def per_step(self) -> float:
        s = self.stamps[self.warmup:]
        return (s[-1] - s[0]) / (len(s) - 1)


def make_vae(cfg: dict, device, dtype) -> VAE:
    return VAE((64,), latent_dim=cfg["latent"], hidden=(cfg["hidden"],)).to(device=device, dtype=dtype)


def time_fit(x, cfg, estimator, steps, warmup, jit, device):
    pyro.clear_param_store()
    step_clock = StepClock(warmup)
    torch.manual_seed(0)
    vae = make_vae(cfg, device, x.dtype)
    result = lvm_pyro.fit(vae, x, estimator=estimator, steps=steps, batch_size=cfg["batch"],
                          lr=1e-3, kl_warmup=0, progress=False, seed=0, jit=jit, device=device,
                          callbacks=[step_clock])
    return step_clock.per_step(), result


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


def time_pyro_svi(x, cfg, steps, warmup, jit, device):
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = make_vae(cfg, device, x.dtype)
    scale = TrainingScale(x.shape[0])
    if jit:
        loss = JitTrace_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    else:
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
    env = dict(os.environ)
    if compiled.retain_freed_memory():  # the same glibc settings as this process
        env.update(MALLOC_MMAP_THRESHOLD_=str(compiled.MMAP_THRESHOLD),
                   MALLOC_TRIM_THRESHOLD_=str(compiled.TRIM_THRESHOLD))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()
    return None if not out or out[-1] == "unavailable" else float(out[-1]) / 1e3


def trajectory_gap(x, cfg, estimator, device, jit=True) -> float:
    """Largest relative difference of the per-step losses, compiled vs eager, same seed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile is not used")  # a real inductor run
        _, compiled = time_fit(x, cfg, estimator, 60, 5, jit, device)
    _, eager = time_fit(x, cfg, estimator, 60, 5, False, device)
    assert compiled.config["compiled"] is True, compiled.config.get("compile_fallback")
    a, b = torch.tensor(compiled.losses), torch.tensor(eager.losses)
    return float(((a - b).abs() / b.abs()).max())


def peers(x, cfg, estimator, steps, warmup, device, threads) -> dict:
    """Peer name -> a callable timing one block (seconds per step, or None if unavailable)."""
    table = {
        DEFAULT_PEER: lambda: time_fit(x, cfg, estimator, steps, warmup, True, device)[0],
        INDUCTOR_PEER: lambda: time_fit(x, cfg, estimator, steps, warmup, "inductor", device)[0],
        "fit (eager)": lambda: time_fit(x, cfg, estimator, steps, warmup, False, device)[0],
        "hand-written + fused Adam": lambda: time_handwritten(x, cfg, estimator, steps, warmup, device, True),
    }
    if device.type == "cpu":
        table["NumPyro SVI (jit)"] = lambda: time_numpyro(cfg, estimator, steps, warmup, threads)
    if estimator == "reparam":
        table["Pyro SVI + Trace_ELBO"] = lambda: time_pyro_svi(x, cfg, steps, warmup, False, device)
        table["Pyro SVI + JitTrace_ELBO"] = lambda: time_pyro_svi(x, cfg, steps, warmup, True, device)
    return table


def run(args) -> str:
    global CLOCK
    CLOCK = args.clock
    if args.glibc_default:
        os.environ["LVM_PYRO_RETAIN_FREED_MEMORY"] = "0"
    # fit keeps freed memory in the process (lvm_pyro.infer.compiled.retain_freed_memory);
    # set it up front so every peer, the hand-written reference included, runs with it.
    retained = compiled.retain_freed_memory()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = load_digits(binarize=8).train.x.to(device)
    rows = []
    for size, cfg in CONFIGS.items():
        steps = args.steps if size == "small" else max(args.steps // 2, 20)
        warmup = min(40, steps // 2)  # past set-up, compilation and fit's graph-or-eager trial
        for estimator in ("reparam", "meanfield"):
            timers = peers(x, cfg, estimator, steps, warmup, device, args.threads)
            ratios: dict[str, list[float]] = {name: [] for name in timers}
            hand_ms = []
            for _ in range(args.rounds):
                hand = time_handwritten(x, cfg, estimator, steps, warmup, device)
                hand_ms.append(1e3 * hand)
                for name, timer in timers.items():
                    seconds = timer()
                    if seconds is not None:
                        ratios[name].append(seconds / hand)
            gaps = {peer: trajectory_gap(x, cfg, estimator, device, jit)
                    for peer, jit in ((DEFAULT_PEER, True), (INDUCTOR_PEER, "inductor"))}
            for peer, values in ratios.items():
                if values:
                    rows.append((size, estimator, peer, statistics.median(values),
                                 statistics.median(hand_ms), gaps.get(peer)))
    lines = [
        f"SVI step cost relative to a hand-written PyTorch step ({args.threads} thread(s), {device}, "
        f"median of {args.rounds} rounds, {args.clock} clock; torch {torch.__version__}, "
        f"pyro {pyro.__version__}; glibc malloc "
        f"{'retaining freed memory (every peer)' if retained else 'defaults'})",
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
    parser.add_argument("--glibc-default", action="store_true",
                        help="leave glibc malloc at its defaults (fit then returns freed memory)")
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
