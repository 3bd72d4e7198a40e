# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Black-box versus amortized variational inference: the amortization gap
#
# For a trained decoder p_theta(x | z), every data point x_i has its own posterior
# p(z | x_i), and so its own best Gaussian approximation. There are two ways to get it:
#
# - **Black-box (per-point) VI**: give each point its own parameters lambda_i = (m_i, s_i)
#   of q_i(z) = N(m_i, diag s_i^2) and climb ELBO(x_i; lambda_i) by stochastic gradients.
#   "Black box" because it needs nothing from the model but the ability to evaluate
#   log p(x, z) and sample q. It is as good as the Gaussian family allows, but every new x
#   needs its own optimization, and the parameters grow with the data.
# - **Amortized VI**: learn one function x -> lambda(x), the encoder, that predicts those
#   parameters for any x in a single forward pass. The cost of inference is paid once,
#   during training, and "amortized" over all future queries.
#
# The price of amortization is that one network must serve all points at once, so for a
# given x its prediction can fall short of that point's own optimum. Cremer et al. (2018)
# split the distance from the ELBO to log p(x) into two parts:
#
#     log p(x) - ELBO(x; encoder)
#         = [log p(x) - max_lambda ELBO(x; lambda)]        approximation gap: the family
#         + [max_lambda ELBO(x; lambda) - ELBO(x; encoder)] amortization gap: the encoder
#
# Both are >= 0. This tutorial measures them for a VAE on the digits, on training and on
# held-out images.
#
# Runtime: about 1 minute in full mode, about 20 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import time

import numpy as np
import torch
from _common import SMOKE, runtime, save
from matplotlib.figure import Figure

from lvm_pyro import elbo, fit
from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics import plots
from lvm_pyro.diagnostics.amortization import amortization_gap
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.blackbox import BlackBoxVI
from lvm_pyro.models.vae import VAE


def timed(fn, *args) -> float:
    tic = time.perf_counter()
    fn(*args)
    return time.perf_counter() - tic


# %% [markdown]
# ## An amortized model to start from
#
# A VAE as in tutorial 3 (smaller budget): its encoder *is* the amortized inference.

# %%
digits = load_digits(binarize=8)
epochs = 10 if SMOKE else 150
torch.manual_seed(0)
vae = VAE((64,), latent_dim=16, hidden=(256, 256))
trained = fit(vae, digits.train.x, epochs=epochs, batch_size=64, lr=1e-3, kl_warmup=epochs // 3,
              progress=False, seed=0)
print(f"VAE trained for {epochs} epochs in {trained.wall_time:.1f} s, training ELBO {trained.elbo:.3f}")

# %% [markdown]
# ## Black-box VI from scratch, on the same decoder
#
# `BlackBoxVI(vae, n)` holds a frozen copy of the VAE's prior and decoder and one Gaussian
# per data point (the data come with their row index, `with_index`, so a minibatch finds
# its own parameters). Starting every q_i at the prior, we let `fit` optimize them and
# watch the ELBO climb towards, and past, the encoder's.

# %%
n = 60 if SMOKE else 200
x_test = digits.test.x[:n]
amortized_elbo = elbo(vae, x_test, num_particles=100, seed=0)
local = BlackBoxVI(vae, n)
bbvi_steps = 150 if SMOKE else 600
tic = time.perf_counter()
bbvi = fit(local, local.with_index(x_test), steps=bbvi_steps, lr=0.02, num_particles=4, batch_size=n,
           kl_warmup=0, progress=False, seed=0)
bbvi_seconds = time.perf_counter() - tic
bbvi_curve = -np.array(bbvi.losses)
encoder_seconds = min(timed(vae.encode, x_test) for _ in range(5))
caught_up = np.flatnonzero(bbvi_curve >= amortized_elbo)
print(f"encoder: one forward pass for {n} images, {1e3 * encoder_seconds:.2f} ms, ELBO {amortized_elbo:.3f}")
print(f"black-box VI: {bbvi_steps} steps, {bbvi_seconds:.1f} s, final ELBO "
      f"{elbo(local, local.with_index(x_test), num_particles=100, seed=0):.3f}; it passed the encoder "
      f"after {int(caught_up[0]) + 1 if len(caught_up) else 'no'} steps")

# %% [markdown]
# Per-point optimization starting from scratch needs a hundred or more gradient steps to match
# what the encoder produces in a millisecond, but it then keeps going: the encoder's
# answer is not the best Gaussian for these images.
#
# ## The gap, measured
#
# `amortization_gap(vae, x)` does the careful version: it starts every q_i *at* the
# encoder's q(z | x_i) (so it can only improve), optimizes all of them, and compares ELBOs
# estimated with many samples. With log p(x) from importance sampling (k = 1000) we get
# all three terms of the decomposition, on training images and on held-out test images.

# %%
gap_steps = 150 if SMOKE else 1000
k = 100 if SMOKE else 1000
rows = {}
for split, x in (("train", digits.train.x[:n]), ("test", x_test)):
    gap = amortization_gap(vae, x, steps=gap_steps, lr=0.02, num_particles=100, seed=0)
    log_px = log_likelihood(vae, x, num_samples=k, seed=0).mean
    rows[split] = dict(log_px=log_px, local=gap.elbo_local, amortized=gap.elbo_amortized,
                       amortization=gap.gap, approximation=log_px - gap.elbo_local)
print(f"{'':>6} {'log p(x)':>9} {'ELBO local':>11} {'ELBO encoder':>13} "
      f"{'approx. gap':>12} {'amort. gap':>11}")
for split, r in rows.items():
    print(f"{split:>6} {r['log_px']:9.3f} {r['local']:11.3f} {r['amortized']:13.3f} "
          f"{r['approximation']:12.3f} {r['amortization']:11.3f}")
    assert r["amortization"] > -0.05, "optimizing each q_i from the encoder's start cannot lose ELBO"
    assert r["approximation"] > -0.05, "no Gaussian q beats log p(x)"

# %% [markdown]
# Reading the table:
#
# - the **approximation gap** is what a diagonal Gaussian cannot do even with its best
#   parameters (the posterior of a VAE is not exactly Gaussian);
# - the **amortization gap** is what the encoder leaves on the table. It is larger on test
#   images: the encoder was fitted on the training set and generalizes imperfectly, while
#   per-point optimization does not care whether a point was seen before.
#
# Amortization is still the right default for a VAE: training needs a posterior for every
# minibatch at every step, and the encoder provides it for free. But when an accurate
# posterior or likelihood for a few specific points matters, refining the encoder's guess
# per point (exactly what `amortization_gap` does) is cheap and worth it.

# %%
fig = Figure(figsize=(10, 4), layout="constrained")
ax_curve, ax_bars = fig.subplots(1, 2)
plots.plot_loss(train=-bbvi_curve, ax=ax_curve)
for line in ax_curve.get_lines():
    if line.get_label() == "train":
        line.set_label("black-box VI (a q_i per image)")
ax_curve.axhline(-amortized_elbo, color="C3", ls="--", label="encoder (one forward pass)")
ax_curve.set_ylim(-amortized_elbo - 3, -amortized_elbo + 15)
ax_curve.set_xlabel("black-box VI step (per-point Gaussians, from the prior)")
ax_curve.set_title(f"-ELBO of {n} test digits", fontsize=10)
ax_curve.legend()
splits = list(rows)
approx = [rows[s]["approximation"] for s in splits]
amort = [rows[s]["amortization"] for s in splits]
ax_bars.bar(splits, approx, color="C0", label="approximation gap (Gaussian family)")
ax_bars.bar(splits, amort, bottom=approx, color="C1", label="amortization gap (encoder)")
ax_bars.set_ylabel("log p(x) - ELBO(encoder), nats per image")
ax_bars.set_title("where the ELBO loses to log p(x)", fontsize=10)
ax_bars.set_ylim(0, 1.35 * max(a + b for a, b in zip(approx, amort)))
ax_bars.legend(fontsize=8)
save(fig, "04_amortization_gap.png")

# %%
print("\nKey numbers")
for split, r in rows.items():
    print(f"  {split}: log p(x) {r['log_px']:.2f}, approximation gap {r['approximation']:.3f}, "
          f"amortization gap {r['amortization']:.3f} nats")
print(f"  black-box VI from the prior: {bbvi_steps} steps ({bbvi_seconds:.1f} s) vs the encoder's "
      f"{1e3 * encoder_seconds:.1f} ms")
print(f"  runtime {runtime()}")
