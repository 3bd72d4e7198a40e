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
# # 6. The conditional VAE: completing images and drawing a chosen digit
#
# Many prediction problems have more than one right answer. Given the top half of a
# handwritten digit, the bottom half could belong to a 3, a 5 or a 9. A network trained to
# predict y from x with independent pixel likelihoods can only output the *average* of the
# possible answers: a blur. A conditional latent-variable model keeps the answers apart:
#
#     z | x ~ p(z | x) = N(mu(x), diag sigma(x)^2)        (a learned, x-dependent prior)
#     y | x, z ~ p(y | x, z)                              (the decoder sees both)
#
# so p(y | x) = integral p(z | x) p(y | x, z) dz is a *mixture* of sharp answers, one per
# z. Training uses the conditional ELBO with a recognition network q(z | x, y) that sees
# the answer:
#
#     log p(y | x) >= E_q[log p(y | x, z) + log p(z | x) - log q(z | x, y)].
#
# At test time y is unknown: draw z from p(z | x), decode, repeat for different answers.
# We judge the model the way any conditional density is judged, by the held-out
# log-likelihood log p(y | x), against a baseline network p(y | x) with no latent variable.
#
# Data order: every model of the library scores its *first* data entry, so the
# conditional models take `(y, x)`: the target first, the condition second.
#
# Runtime: about 2.5 minutes in full mode, about 20 s with `LVM_PYRO_SMOKE=1` (2 CPU cores).

# %%
import torch
from _common import SMOKE, runtime, save

from lvm_pyro import EarlyStopping, fit
from lvm_pyro.data import load_digits
from lvm_pyro.diagnostics import plots
from lvm_pyro.infer.evaluate import log_likelihood
from lvm_pyro.models.conditional import ConditionalBaseline, ConditionalVAE, halves

# %% [markdown]
# ## Task 1: complete the bottom half of a digit from its top half
#
# `halves(split)` cuts each binarized 8x8 digit into (bottom 32 pixels, top 32 pixels),
# the (y, x) of this task. Both models get the same networks and training budget, with
# early stopping on the validation set's (conditional) ELBO so neither is judged after
# overfitting.

# %%
digits = load_digits(binarize=8)
train, val, test = halves(digits.train), halves(digits.val), halves(digits.test)
epochs = 8 if SMOKE else 300
common = dict(batch_size=64, lr=1e-3, val_data=val, progress=False, seed=0, epochs=epochs)

torch.manual_seed(0)
cvae = ConditionalVAE((32,), condition_shape=(32,), latent_dim=8, hidden=(256, 256))
cvae_run = fit(cvae, train, kl_warmup=min(50, epochs // 2),
               callbacks=[EarlyStopping(patience=40)], **common)
torch.manual_seed(0)
baseline = ConditionalBaseline((32,), condition_shape=(32,), hidden=(256, 256))
base_run = fit(baseline, train, kl_warmup=0, callbacks=[EarlyStopping(patience=20)], **common)
for name, run in (("CVAE", cvae_run), ("baseline", base_run)):
    print(f"{name:>8}: {run.epochs} epochs ({run.stop_reason}), "
          f"best validation ELBO {max(run.val_elbo):.3f}, {run.wall_time:.1f} s")

# %% [markdown]
# ## Held-out log p(y | x)
#
# For the baseline log p(y | x) is exact (there is no latent variable: its ELBO is its
# log-likelihood). For the CVAE, `log_likelihood` importance-samples
# p(y | x) = E_{q(z | x, y)}[p(y | x, z) p(z | x) / q(z | x, y)] with k samples per
# example, as in tutorial 2.

# %%
k = 100 if SMOKE else 1000
ll_cvae = log_likelihood(cvae, test, num_samples=k, seed=0)
ll_base = log_likelihood(baseline, test, num_samples=1, seed=0)
print(f"test log p(y | x), nats per half-image: CVAE {ll_cvae.mean:.3f} +- {ll_cvae.stderr:.3f}   "
      f"baseline {ll_base.mean:.3f} +- {ll_base.stderr:.3f}")
wins = float((ll_cvae.per_example > ll_base.per_example).float().mean())
print(f"the CVAE assigns the true bottom half a higher probability on {100 * wins:.0f}% of test digits")
if not SMOKE:
    assert ll_cvae.mean > ll_base.mean, "the CVAE should beat the deterministic baseline"

# %% [markdown]
# ## What the completions look like
#
# Each row: the true digit, the baseline's prediction E[y | x], then five CVAE completions,
# each the decoder's pixel probabilities for a different z ~ p(z | x). The red line marks
# where the given top half ends. Where the top half is ambiguous, the CVAE's completions
# disagree with each other (several plausible digits); the baseline averages them.

# %%
n_show, n_draws = 8, 5
tops, bottoms = test[1][:n_show], test[0][:n_show]
torch.manual_seed(0)
draws = torch.stack([cvae.sample(tops, mean=True) for _ in range(n_draws)], dim=1)
panels = torch.cat([baseline.predict(tops)[:, None], draws], dim=1)
fig = plots.plot_completions(tops, panels, (8, 8), truth=bottoms, n=n_show)
fig.axes[1].set_title("baseline", fontsize=8)
fig.axes[2].set_title("CVAE draws", fontsize=8)
save(fig, "06_cvae_completions.png")

# %% [markdown]
# ## Task 2: draw a digit of a chosen class
#
# The condition can be anything with one row per example; here it is the label, and the
# target is the whole image: p(z | label), p(image | z, label), q(z | image, label). Once
# trained, choosing the label and drawing z ~ p(z | label) generates that digit, in
# different styles. Its baseline is a per-class table of pixel probabilities (a network
# fed a one-hot label), i.e. one blurry average image per class.

# %%
labelled = (digits.train.x, digits.train.y)
label_val = (digits.val.x, digits.val.y)
label_test = (digits.test.x, digits.test.y)
torch.manual_seed(0)
label_cvae = ConditionalVAE((64,), n_classes=10, latent_dim=8, hidden=(256, 256))
label_run = fit(label_cvae, labelled, kl_warmup=min(50, epochs // 2),
                callbacks=[EarlyStopping(patience=40)], **{**common, "val_data": label_val})
torch.manual_seed(0)
label_base = ConditionalBaseline((64,), n_classes=10, hidden=(64,))
fit(label_base, labelled, kl_warmup=0, callbacks=[EarlyStopping(patience=20)],
    **{**common, "val_data": label_val})
ll_label = log_likelihood(label_cvae, label_test, num_samples=k, seed=0)
ll_label_base = log_likelihood(label_base, label_test, num_samples=1, seed=0)
print(f"test log p(image | label): CVAE {ll_label.mean:.3f}, per-class baseline {ll_label_base.mean:.3f}")
if not SMOKE:
    assert ll_label.mean > ll_label_base.mean

rows = torch.arange(10).repeat_interleave(8)
torch.manual_seed(1)
images = label_cvae.sample(rows, mean=True)
save(plots.plot_samples(images, (8, 8), ncols=8, title="row d: eight draws of z ~ p(z | label = d)"),
     "06_cvae_by_label.png")

# %%
print("\nKey numbers")
print(f"  completion, test log p(y | x): CVAE {ll_cvae.mean:.2f} (k={k}) vs baseline {ll_base.mean:.2f}; "
      f"CVAE better on {100 * wins:.0f}% of digits")
print(f"  by label, test log p(x | label): CVAE {ll_label.mean:.2f} "
      f"vs per-class baseline {ll_label_base.mean:.2f}")
print(f"  runtime {runtime()}")
