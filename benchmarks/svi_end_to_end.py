"""End to end: 300 epochs of the default VAE on the binarized digits, compile time included.

``fit(VAE(), train, val_data=val, epochs=300)`` with every other setting at its default, with
``compile=True`` (the whole step compiled, compile time included) and with ``compile=False``.
The rule of ``compile="auto"`` compiles this run (300 epochs x 9 steps = 2,700 steps >= 2,000,
and x 177k parameters x 128 rows = 6e10 >= 1e10): this benchmark is the evidence for that
threshold. Each run is a fresh process (its
``fit`` wall time is measured: set-up, compiling, training and the per-epoch validation).
Runs alternate default / eager for ``--rounds`` rounds. PyTorch's compile cache is "warm"
(a previous run of the same shapes compiled it: the usual case after the first run on a
machine) unless ``--cold``, which gives every compiled run a fresh, empty cache directory.

    python benchmarks/svi_end_to_end.py                 # warm cache, 2 rounds
    python benchmarks/svi_end_to_end.py --cold --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, torch, pyro
import lvm_pyro
torch.set_num_threads(int(sys.argv[3]))
data = lvm_pyro.load_digits(binarize=8)
torch.manual_seed(0)
vae = lvm_pyro.VAE((64,))
compile = {"auto": "auto", "False": False, "True": True}[sys.argv[2]]
result = lvm_pyro.fit(vae, data.train.x, val_data=data.val.x, epochs=int(sys.argv[1]), progress=False,
                      seed=0, compile=compile)
print(json.dumps({"wall": result.wall_time, "compile": result.compile_time,
                  "compiled": result.config["compiled"], "val_elbo": result.val_elbo[-1],
                  "steps": result.steps}))
"""


def run_once(mode: str, epochs: int, threads: int, cache_dir: str | None) -> dict:
    env = dict(os.environ)
    if cache_dir is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", CHILD, str(epochs), mode, str(threads)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="an empty compile cache for every compiled run")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "svi_end_to_end.md"))
    args = parser.parse_args()
    modes = ("auto", "True", "False")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    if not args.cold:
        run_once("True", 1, args.threads, None)  # fills the compile cache for these shapes
    for _ in range(args.rounds):
        for mode in modes:
            cache = tempfile.mkdtemp(prefix="inductor_cold_") if args.cold and mode == "True" else None
            runs[mode].append(run_once(mode, args.epochs, args.threads, cache))
            print(mode, runs[mode][-1], flush=True)
    eager = statistics.median(r["wall"] for r in runs["False"])
    lines = [
        f"End to end: {args.epochs} epochs of the default VAE on the binarized digits "
        f"({runs['False'][0]['steps']} steps, val_data each epoch), {args.threads} thread(s), "
        f"{'cold' if args.cold else 'warm'} compile cache, median of {args.rounds} runs; load average "
        f"{os.getloadavg()[0]:.1f} at the end",
        "",
        "| settings | fit wall time (s) | of which compiling (s) | compiled | final val ELBO "
        "| / compile=False |",
        "|---|---|---|---|---|---|",
    ]
    for mode in modes:
        wall = statistics.median(r["wall"] for r in runs[mode])
        compiling = statistics.median(r["compile"] for r in runs[mode])
        lines.append(f"| compile={mode!s} | {wall:.1f} | {compiling:.1f} | {runs[mode][0]['compiled']} | "
                     f"{runs[mode][-1]['val_elbo']:.3f} | {wall / eager:.2f}x |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(table + "\n\n")


if __name__ == "__main__":
    main()
