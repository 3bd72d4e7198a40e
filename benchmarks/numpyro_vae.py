"""The NumPyro peer of ``svi_overhead.py``: the same VAE, a jit-compiled SVI step.

Run by ``svi_overhead.py`` in a subprocess, so that XLA's thread pool can be pinned to the
same number of threads before JAX is imported; prints the time of one step in ms.

    python benchmarks/numpyro_vae.py --batch 128 --hidden 256 --latent 8 --steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--latent", type=int, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meanfield", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    try:
        import jax
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from jax.example_libraries import stax
        from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
    except ImportError:
        print("unavailable")
        sys.exit(0)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lvm_pyro.data import load_digits

    x = jnp.asarray(load_digits(binarize=8).train.x.numpy())
    n, b, h, latent = x.shape[0], args.batch, args.hidden, args.latent
    encoder = stax.serial(stax.Dense(h), stax.Relu, stax.FanOut(2),
                          stax.parallel(stax.Dense(latent), stax.serial(stax.Dense(latent), stax.Softplus)))
    decoder = stax.serial(stax.Dense(h), stax.Relu, stax.Dense(64))

    def model(xb):
        dec = numpyro.module("decoder", decoder, (b, latent))
        with numpyro.plate("data", n, subsample_size=b):
            z = numpyro.sample("z", dist.Normal(jnp.zeros((b, latent)), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=xb)

    def guide(xb):
        enc = numpyro.module("encoder", encoder, (b, 64))
        loc, scale = enc(xb)
        with numpyro.plate("data", n, subsample_size=b):
            numpyro.sample("z", dist.Normal(loc, scale + 1e-4).to_event(1))

    loss = TraceMeanField_ELBO() if args.meanfield else Trace_ELBO()
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), loss)
    init_key, run_key = jax.random.split(jax.random.PRNGKey(0))
    state = svi.init(init_key, x[:b])

    @jax.jit
    def step(state, key):
        idx = jax.random.randint(key, (b,), 0, n)
        return svi.update(state, x[idx])

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    stamps = []
    for key in jax.random.split(run_key, args.steps):
        state, value = step(state, key)
        value.block_until_ready()
        stamps.append(clock())
    s = stamps[args.warmup:]
    print(f"{1e3 * (s[-1] - s[0]) / (len(s) - 1):.4f}")


if __name__ == "__main__":
    main()
