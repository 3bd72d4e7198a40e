"""Bad arguments to ``fit`` and bad checkpoints / resumptions: every one refused with an
lvm_pyro error naming the fix (or, for a legitimate run the user must be told about, a
warning), never a traceback from inside torch or Pyro, never a silent accept."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from harness import Case, run_case
from pyro.nn import PyroParam, pyro_method
from torch.utils.data import DataLoader, TensorDataset

import lvm_pyro
from lvm_pyro import errors
from lvm_pyro.infer.callbacks import Convergence, EarlyStopping, KLWarmup, KLWarmupWarning, LRScheduler
from lvm_pyro.infer.checkpoint import FORMAT, RunLock, load_checkpoint, save_checkpoint
from lvm_pyro.infer.compile import Compilation
from lvm_pyro.infer.trainer import Checkpointing
from lvm_pyro.models.base import LatentVariableModel


class LocalGaussian(LatentVariableModel):
    """z_i ~ N(0, I), x_i | z_i ~ N(w z_i, I), amortized linear guide: a tiny model to refuse things with."""

    def __init__(self, dim: int = 2, learn_w: bool = False) -> None:
        super().__init__()
        self.input_shape = (dim,)
        self.a = torch.nn.Parameter(torch.zeros(dim))
        self.log_s = torch.nn.Parameter(torch.zeros(dim))
        self.w = PyroParam(torch.ones(dim)) if learn_w else None

    @pyro_method
    def model(self, x):
        w = self.w if self.w is not None else x.new_ones(x.shape[-1])
        with self.data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w * z, 1.0).to_event(1), obs=x)

    @pyro_method
    def guide(self, x):
        with self.data_plate(x):
            pyro.sample("z", dist.Normal(self.a * x, self.log_s.exp()).to_event(1))


X = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
CE, KE = errors.ConfigurationError, errors.CheckpointError
_ROOT: list[Path] = []
_COUNT = itertools.count()


@pytest.fixture(autouse=True, scope="module")
def _root(tmp_path_factory):
    _ROOT.append(tmp_path_factory.mktemp("bad_fit"))
    yield
    _ROOT.clear()


def _fresh() -> Path:
    d = _ROOT[0] / f"d{next(_COUNT)}"
    d.mkdir()
    return d


def _fit(data=X, model=None, **kw):
    kw = {"steps": 1, "batch_size": 4, "progress": False, "seed": 0, "compile": False, **kw}
    return lvm_pyro.fit(model if model is not None else LocalGaussian(2), data, **kw)


def _bad(**kw):
    return lambda: _fit(**kw)


def _run(**kw) -> Path:
    """A run directory holding the checkpoint of a finished one-epoch run."""
    d = _fresh()
    _fit(checkpoint_dir=d, epochs=1, steps=None, **kw)
    return d


def _resume(**change):
    def call():
        d = _run()
        kw = dict(change)
        model = kw.pop("model", None)
        _fit(checkpoint_dir=d, resume=True, epochs=2, steps=None, model=model() if model else None, **kw)
    return call


def _with_file(content: bytes | None = None, state=None):
    """Resume from a directory whose checkpoint.pt holds ``content`` (or ``state`` saved by torch)."""
    def call():
        d = _fresh()
        if state is not None:
            torch.save(state() if callable(state) else state, d / "checkpoint.pt")
        else:
            (d / "checkpoint.pt").write_bytes(content)
        _fit(checkpoint_dir=d, resume=True)
    return call


def _truncated():
    d = _run()
    raw = (d / "checkpoint.pt").read_bytes()
    (d / "checkpoint.pt").write_bytes(raw[: len(raw) // 2])
    _fit(checkpoint_dir=d, resume=True, epochs=2, steps=None)


def _incomplete():
    d = _fresh()
    save_checkpoint(d / "checkpoint.pt", {"params": {}, "config": {}})
    _fit(checkpoint_dir=d, resume=True)


def _locked():
    d = _fresh()
    with RunLock(d):
        _fit(checkpoint_dir=d)


def _existing_without_resume():
    d = _run()
    _fit(checkpoint_dir=d)


def _dir_is_a_file():
    f = _fresh() / "a-file"
    f.write_text("x")
    _fit(checkpoint_dir=f)


def _load_a_folder():
    load_checkpoint(_fresh())


class _Pickled:
    pass


def _nan_model(x):
    loc = pyro.param("loc", torch.zeros(()))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc + math.nan, 1.0), obs=x)


def _matmul_model(x):
    w = pyro.param("w", torch.zeros(3, 4))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal((x @ w).sum(-1), 1.0), obs=x[:, 0])


def _no_guide(x):
    pass


class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.zeros(2)}


def _bad_factory(params):
    return None


def _short_warmup_run():
    _fit(epochs=1, steps=None, kl_warmup=5)


NOT_OURS = r"^(?!.*weights_only=False).*not a checkpoint lvm_pyro wrote.*unsafe"

CASES = [
    # learning rate
    Case("lr-negative", _bad(lr=-1.0), CE, r"lr=-1\.0: pass a finite number > 0"),
    Case("lr-zero", _bad(lr=0), CE, r"lr=0.*> 0"),
    Case("lr-nan", _bad(lr=math.nan), CE, r"lr=nan"),
    Case("lr-inf", _bad(lr=math.inf), CE, r"lr=inf"),
    Case("lr-string", _bad(lr="0.01"), CE, r"lr='0\.01'.*lr=1e-3"),
    Case("lr-none", _bad(lr=None), CE, r"lr=None"),
    Case("lr-bool", _bad(lr=True), CE, r"lr=True"),
    Case("lr-tensor-list", _bad(lr=[0.01]), CE, r"lr=\[0\.01\]"),
    # seeds
    Case("seed-negative", _bad(seed=-1), CE, r"seed=-1: pass an integer >= 0"),
    Case("seed-float", _bad(seed=1.5), CE, r"seed=1\.5"),
    Case("seed-string", _bad(seed="0"), CE, r"seed='0'"),
    Case("seed-huge", _bad(seed=2**40), CE, r"seed=1099511627776: pass an integer in \[0, 2\*\*32 - 1\]"),
    Case("seed-bool", _bad(seed=True), CE, r"seed=True"),
    # gradient clipping
    Case("clip-negative", _bad(clip_norm=-1), CE, r"clip_norm=-1: pass a finite number > 0.*None for no"),
    Case("clip-zero", _bad(clip_norm=0.0), CE, r"clip_norm=0\.0"),
    Case("clip-nan", _bad(clip_norm=math.nan), CE, r"clip_norm=nan"),
    Case("clip-inf", _bad(clip_norm=math.inf), CE, r"clip_norm=inf"),
    Case("clip-string", _bad(clip_norm="10"), CE, r"clip_norm='10'"),
    # KL warm-up
    Case("warmup-negative", _bad(kl_warmup=-5), CE, r"kl_warmup=-5: pass a finite number >= 0.*\"auto\""),
    Case("warmup-nan", _bad(kl_warmup=math.nan), CE, r"kl_warmup=nan"),
    Case("warmup-inf", _bad(kl_warmup=math.inf), CE, r"kl_warmup=inf"),
    Case("warmup-word", _bad(kl_warmup="fast"), CE, r"kl_warmup='fast'"),
    Case("warmup-bool", _bad(kl_warmup=True), CE, r"kl_warmup=True"),
    Case("warmup-conflicts-with-callback", _bad(kl_warmup=50, callbacks=[KLWarmup(5)]), CE,
         r"kl_warmup=50(\.0)? and the callback KLWarmup\(epochs=5\) disagree: pass one of them"),
    Case("warmup-two-callbacks", _bad(callbacks=[KLWarmup(5), KLWarmup(2)]), CE, r"at most one KLWarmup"),
    Case("warmup-callback-with-iwae", _bad(objective="iwae", callbacks=[KLWarmup(5)]), CE,
         r"KLWarmup callback cannot be used with objective 'iwae'"),
    Case("warmup-callback-zero", lambda: KLWarmup(0), CE, r"epochs > 0"),
    Case("warmup-callback-nan", lambda: KLWarmup(math.nan), CE, r"epochs > 0 \(a finite number\), got nan"),
    Case("warmup-callback-start", lambda: KLWarmup(5, start=2.0), CE, r"0 <= start <= 1, got 2\.0"),
    Case("short-run-inside-warmup", _short_warmup_run, KLWarmupWarning,
         r"1 epochs into a 5-epoch KL warm-up.*annealed objective.*4 more epochs.*kl_warmup=0"),
    # lengths and sizes
    Case("epochs-zero", _bad(epochs=0, steps=None), CE, r"epochs=0: pass an integer >= 1"),
    Case("epochs-negative", _bad(epochs=-3, steps=None), CE, r"epochs=-3"),
    Case("epochs-float", _bad(epochs=2.5, steps=None), CE, r"epochs=2\.5"),
    Case("epochs-string", _bad(epochs="10", steps=None), CE, r"epochs='10'"),
    Case("epochs-bool", _bad(epochs=True, steps=None), CE, r"epochs=True"),
    Case("steps-zero", _bad(steps=0), CE, r"steps=0"),
    Case("steps-float", _bad(steps=1.5), CE, r"steps=1\.5"),
    Case("epochs-and-steps", _bad(epochs=2, steps=3), CE, r"pass epochs or steps, not both"),
    Case("batch-zero", _bad(batch_size=0), CE, r"batch_size=0"),
    Case("batch-negative", _bad(batch_size=-4), CE, r"batch_size=-4"),
    Case("batch-float", _bad(batch_size=2.5), CE, r"batch_size=2\.5"),
    Case("checkpoint-every-zero", _bad(checkpoint_every=0), CE, r"checkpoint_every=0"),
    Case("checkpoint-every-string", _bad(checkpoint_every="1"), CE, r"checkpoint_every='1'"),
    Case("particles-zero", _bad(num_particles=0), CE, r"num_particles=0"),
    Case("particles-float", _bad(num_particles=2.0), CE, r"num_particles=2\.0"),
    Case("particles-bool", _bad(num_particles=True), CE, r"num_particles=True"),
    # optimizer, estimator and options
    Case("optimizer-unknown", _bad(optimizer="lbfgs2"), CE, r"unknown optimizer 'lbfgs2'; valid: adam"),
    Case("optimizer-not-an-optimizer-class", _bad(optimizer=torch.nn.Linear), CE,
         r"optimizer=Linear is not a torch.optim.Optimizer subclass"),
    Case("optimizer-number", _bad(optimizer=42), CE, r"optimizer must be a name.*got 42"),
    Case("optimizer-factory-returns-none", _bad(optimizer=_bad_factory), CE,
         r"factory returned NoneType, not a torch.optim.Optimizer"),
    Case("optimizer-needs-a-closure", _bad(optimizer=torch.optim.LBFGS), CE,
         r"optimizer LBFGS needs a closure.*use 'adam'"),
    Case("optimizer-factory-of-lbfgs", _bad(optimizer=lambda ps: torch.optim.LBFGS(ps)), CE,
         r"optimizer LBFGS needs a closure"),
    Case("optimizer-factory-no-argument", _bad(optimizer=lambda: torch.optim.SGD), CE,
         r"factory must take one argument, the list of parameters"),
    Case("estimator-unknown", _bad(estimator="vimco"), CE,
         r"unknown (estimator|objective) 'vimco'.*reparam, meanfield"),
    Case("estimator-none", _bad(estimator=None), CE, r"unknown (estimator|objective) None"),
    Case("estimator-case", _bad(estimator="REPARAM"), CE, r"unknown (estimator|objective) 'REPARAM'"),
    Case("score-baseline-unknown", _bad(score_baseline="mean"), CE, r"unknown score_baseline 'mean'"),
    Case("vectorize-string", _bad(vectorize_particles="yes"), CE, r"vectorize_particles='yes'"),
    Case("plate-number", _bad(data_plate=5), CE, r"data_plate=5: pass the name.*as a string"),
    Case("plate-empty", _bad(data_plate=""), CE, r"data_plate=''"),
    Case("plate-none", _bad(data_plate=None), CE, r"data_plate=None"),
    Case("jit-string", _bad(jit="yes", compile="auto"), CE, r"jit='yes': pass 'auto'"),
    Case("jit-int", _bad(jit=1, compile="auto"), CE, r"jit=1"),
    Case("jit-none", _bad(jit=None, compile="auto"), CE, r"jit=None"),
    Case("progress-string", _bad(progress="no"), CE, r"progress='no': pass True or False"),
    # the current names and configuration objects
    Case("objective-unknown", _bad(objective="vimco"), CE,
         r"unknown objective 'vimco'; valid objectives: reparam"),
    Case("objective-none", _bad(objective=None), CE, r"unknown objective None"),
    Case("objective-and-estimator", _bad(objective="iwae", estimator="reparam"), CE,
         r"pass objective= or its former name estimator=, not both"),
    Case("compile-string", _bad(compile="yes"), CE, r"compile='yes': pass 'auto'.*Compilation"),
    Case("compile-none", _bad(compile=None), CE, r"compile=None"),
    Case("compile-and-jit", _bad(compile=True, jit=False), CE, r"pass compile= or its former name jit="),
    Case("compilation-mode", lambda: Compilation(mode="all"), CE,
         r"Compilation\(mode='all'\): pass one of step"),
    Case("checkpoint-number", _bad(checkpoint=123), CE, r"checkpoint=123: pass a folder path"),
    Case("checkpoint-empty", _bad(checkpoint=""), CE, r"checkpoint=''"),
    Case("checkpointing-every-zero", _bad(checkpoint=Checkpointing("unused", every=0)), CE,
         r"Checkpointing every=0"),
    Case("checkpointing-resume-string", _bad(checkpoint=Checkpointing("unused", resume="yes")), CE,
         r"Checkpointing\(resume='yes'\): pass True or False"),
    Case("checkpoint-and-checkpoint-dir", _bad(checkpoint="a", checkpoint_dir="b"), CE,
         r"pass checkpoint= or the former checkpoint_dir="),
    Case("distributed-string", _bad(distributed="yes"), CE, r"distributed='yes': pass True or False"),
    Case("unknown-keyword", _bad(epoch=3), CE, r"unexpected keyword argument 'epoch'"),
    Case("resume-string", _bad(resume="yes", checkpoint_dir="unused"), CE, r"resume='yes'"),
    Case("device-unknown", _bad(device="tpu"), CE, r"unknown device 'tpu'"),
    # callbacks
    Case("callback-not-in-a-list", _bad(callbacks=EarlyStopping()), CE, r"callbacks takes a list"),
    Case("callback-class-not-instance", _bad(callbacks=[EarlyStopping]), CE,
         r"callbacks\[0\] is .*not a Callback.*pass an instance"),
    Case("callback-string-in-list", _bad(callbacks=["early"]), CE, r"callbacks\[0\] is 'early'"),
    Case("callbacks-a-string", _bad(callbacks="early"), CE, r"callbacks='early': pass a list"),
    Case("callback-plain-function", _bad(callbacks=[print]), CE,
         r"subclass lvm_pyro.infer.callbacks.Callback"),
    Case("early-stopping-patience-zero", lambda: EarlyStopping(patience=0), CE, r"patience=0"),
    Case("early-stopping-patience-float", lambda: EarlyStopping(patience=2.5), CE, r"patience=2\.5"),
    Case("early-stopping-min-delta", lambda: EarlyStopping(min_delta=-1.0), CE, r"min_delta >= 0"),
    Case("convergence-rtol", lambda: Convergence(rtol=-1e-3), CE, r"rtol > 0"),
    Case("convergence-window", lambda: Convergence(window=0), CE, r"window=0"),
    Case("lr-scheduler-not-callable", lambda: LRScheduler("step"), CE,
         r"needs a factory optimizer -> scheduler"),
    Case("lr-scheduler-interval", lambda: LRScheduler(lambda o: None, interval="batch"), CE,
         r"interval must be 'epoch' or 'step'"),
    # data, model and guide as fit receives them
    Case("data-none", _bad(data=None), errors.DataTypeError, r"data is a NoneType; pass a torch.Tensor"),
    Case("data-dict", _bad(data={"x": X}), errors.DataTypeError, r"data is a dict"),
    Case("val-data-other-features", _bad(val_data=torch.randn(4, 3)), errors.DataError,
         r"val_data has examples of shape \(3,\) but the model expects \(2,\)"),
    Case("condition-other-length", _bad(data=(X, torch.randn(5))), errors.DataError,
         r"condition 1 has 5 rows but the data has 8"),
    Case("empty-dataloader", _bad(data=DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=2)),
         errors.DataError, r"DataLoader that yields no batches"),
    Case("dataloader-of-dicts", _bad(data=DataLoader(_Dicts(), batch_size=2)), errors.DataTypeError,
         r"batches are dict, not tensors.*TensorDataset"),
    Case("model-none", lambda: lvm_pyro.fit(None, X, steps=1, progress=False), CE, r"a model needs a guide"),
    Case("guide-not-callable", lambda: lvm_pyro.fit(lambda x: None, X, guide=42, steps=1, progress=False),
         CE, r"a model needs a guide"),
    Case("plate-not-in-model", _bad(data_plate="rows"), errors.ModelContractError,
         r"observations inside pyro.plate\('rows', len\(x\)\)"),
    Case("model-nan-parameter",
         lambda: lvm_pyro.fit((_nan_model, _no_guide), X[:, 0], steps=1, progress=False),
         errors.ModelContractError, r"fail when run once on a batch.*ValueError.*valid \(finite"),
    Case("model-shape-mismatch", lambda: lvm_pyro.fit((_matmul_model, _no_guide), X, steps=1, progress=False),
         errors.ModelContractError, r"fail when run once.*RuntimeError: mat1 and mat2 shapes"),
    # checkpoint directories
    Case("checkpoint-dir-number", _bad(checkpoint_dir=123), CE, r"checkpoint_dir=123: pass a folder path"),
    Case("checkpoint-dir-empty", _bad(checkpoint_dir=""), CE, r"checkpoint_dir=''"),
    Case("checkpoint-dir-is-a-file", _dir_is_a_file, KE, r"cannot be written.*writable checkpoint_dir"),
    Case("resume-without-dir", _bad(resume=True), CE, r"resume=True needs checkpoint_dir"),
    Case("resume-empty-dir", lambda: _fit(checkpoint_dir=_fresh(), resume=True), KE,
         r"no checkpoint at.*drop resume=True"),
    Case("load-a-folder", _load_a_folder, KE, r"no checkpoint at"),
    Case("overwrite-another-run", _existing_without_resume, KE,
         r"already holds the checkpoint of a run: pass resume=True.*new \(or empty\) checkpoint_dir"),
    Case("second-writer", _locked, KE, r"another process is writing to .*wait for it.*new checkpoint_dir"),
    # bad checkpoint files
    Case("checkpoint-pickled-objects", _with_file(state=lambda: {"format": FORMAT, "evil": _Pickled()}),
         KE, NOT_OURS),
    Case("checkpoint-foreign-dict", _with_file(state={"weights": torch.ones(2)}), KE,
         r"not a checkpoint lvm_pyro wrote \(no lvm_pyro.checkpoint/2 header\)"),
    Case("checkpoint-foreign-tensor", _with_file(state=torch.ones(3)), KE,
         r"not a checkpoint lvm_pyro wrote"),
    Case("checkpoint-garbage", _with_file(b"garbage bytes"), KE, r"not a readable checkpoint"),
    Case("checkpoint-empty-file", _with_file(b""), KE, r"not a readable checkpoint"),
    Case("checkpoint-truncated", _truncated, KE, r"not a readable checkpoint.*truncated"),
    Case("checkpoint-older-format", _with_file(state={"format": "lvm_pyro.checkpoint/1", "params": {}}), KE,
         r"another version of lvm_pyro \(lvm_pyro.checkpoint/1.*cannot be resumed exactly"),
    Case("checkpoint-incomplete", _incomplete, KE, r"is incomplete \(no module.*cannot be resumed"),
    # resuming with what may not change
    Case("resume-other-model-shape", _resume(model=lambda: LocalGaussian(3), data=torch.randn(8, 3)), KE,
         r"(?s)may not change.*model parameters differ.*\[2\] in the checkpoint, \[3\] now"),
    Case("resume-other-optimizer", _resume(optimizer="sgd"), KE,
         r"optimizer='torch.optim.adam.Adam' in the checkpoint, optimizer='torch.optim.sgd.SGD' now"),
    Case("resume-other-optimizer-class", _resume(optimizer=torch.optim.RMSprop), KE, r"RMSprop' now"),
    Case("resume-other-estimator", _resume(estimator="meanfield"), KE,
         r"estimator='reparam' in the checkpoint, estimator='meanfield' now"),
    Case("resume-other-particles", _resume(num_particles=2), KE, r"num_particles=1 in the checkpoint"),
    Case("resume-other-batch-size", _resume(batch_size=8), KE,
         r"batch_size=4 in the checkpoint, batch_size=8"),
    Case("resume-other-data-size", _resume(data=X[:6]), KE, r"num_data=8 in the checkpoint, num_data=6 now"),
    Case("resume-other-dtype", _resume(data=X.double()), KE, r"torch.float32.*in the checkpoint.*float64"),
    Case("resume-other-plate", _resume(data_plate="rows", batch_size=8), KE,
         r"(?s)data_plate='data' in the checkpoint, data_plate='rows' now"),
    Case("resume-other-warmup", _resume(kl_warmup=4), KE,
         r"kl_warmup=0.0 in the checkpoint, kl_warmup=4.0 now"),
    Case("resume-other-model-class", _resume(model=lambda: LocalGaussian(2, learn_w=True)), KE,
         r"model parameters differ: module.w_unconstrained: absent in the checkpoint, \[2\] now"),
    Case("resume-other-data-numpy-ints", _resume(data=np.ones((8, 3), dtype=np.int64)), errors.DataError,
         r"shape \(3,\) but the model expects \(2,\)"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_fit_input(case):
    run_case(case)
