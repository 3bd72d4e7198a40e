"""Objective name -> Pyro objective, plus the effect handlers the training loop needs.

=============  =====================================================================
``reparam``    Trace_ELBO: pathwise (reparameterized) gradients where the guide allows.
``meanfield``  TraceMeanField_ELBO: as ``reparam`` with analytic KL(q || p) where known.
``score``      TraceGraph_ELBO with every guide site forced to score-function
               (REINFORCE) gradients, even reparameterizable ones, and a baseline.
``iwae``       importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x), per
               data point, K = num_particles; VIMCO baselines for discrete sites.
``enum``       TraceEnum_ELBO: discrete sites marked for enumeration are summed out.
=============  =====================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro
import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import (
    ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import Messenger

from lvm_pyro.checks import check_count
from lvm_pyro.errors import ConfigurationError, ModelContractError
from lvm_pyro.infer.logdensity import to_points
from lvm_pyro.models.base import DATA_PLATE

OBJECTIVES = ("reparam", "meanfield", "score", "iwae", "enum")
#: the former name of ``OBJECTIVES`` (kept as an alias)
ESTIMATORS = OBJECTIVES
SCORE_BASELINES = ("decaying", "neural", "none")


class TrainingScale(Messenger):
    """Scale sample sites for minibatch training and KL warm-up.

    A site inside the plate named ``plate`` whose declared size is B gets its log-density
    multiplied by num_data / B, so a minibatch ELBO is an unbiased estimate of the full-data
    ELBO (a plate already declared with size=num_data and a subsample is left alone). Latent
    (unobserved, non-enumerated) sites are further multiplied by ``beta`` (a float, or a 0-d
    tensor so a compiled loss can take it as an input), the KL warm-up factor:
    ELBO_beta = E_q[log p(x | z)] - beta * KL(q(z | x) || p(z)). Sites outside the plate
    are multiplied by ``global_scale`` (1 / world size in data-parallel training, where every
    rank would otherwise count them once).

    Example:
        >>> with TrainingScale(num_data=1000, beta=0.5):
        ...     pass
    """

    def __init__(
        self,
        num_data: float,
        beta: float | torch.Tensor = 1.0,
        plate: str = DATA_PLATE,
        global_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_data = num_data
        self.beta = beta
        self.plate = plate
        self.global_scale = global_scale
        self.saw_plate = False

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate:
                self.saw_plate = True
                if frame.size != self.num_data:
                    msg["scale"] = msg["scale"] * (self.num_data / frame.size)
                break
        else:
            if self.global_scale != 1.0:
                msg["scale"] = msg["scale"] * self.global_scale
        annealed = torch.is_tensor(self.beta) or self.beta != 1.0
        if annealed and not msg["is_observed"] and not msg["infer"].get("enumerate"):
            msg["scale"] = msg["scale"] * self.beta


class ForceScoreFunction(Messenger):
    """Make every latent sample site of a guide use score-function gradients.

    grad E_q[f(z)] = E_q[f(z) grad log q(z)] (REINFORCE), with a baseline b subtracted from
    the downstream cost f to reduce variance: a decaying average of past costs by default,
    or a small network of the data (``nn_baseline``), trained to regress the cost.

    Example:
        >>> import pyro.distributions as dist
        >>> with pyro.poutine.trace() as tr, ForceScoreFunction():
        ...     _ = pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> tr.trace.nodes["z"]["fn"].has_rsample
        False
    """

    def __init__(
        self,
        baseline: str = "decaying",
        beta: float = 0.9,
        nn_baseline: torch.nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.baseline = baseline
        self.beta = beta
        self.nn_baseline = nn_baseline
        self.baseline_input: torch.Tensor | None = None

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["infer"].get("enumerate"):
            return
        if msg["fn"].has_rsample:
            _sample_without_reparameterization(msg["fn"])
        if "baseline" in msg["infer"] or self.baseline == "none":
            return
        if self.baseline == "neural":
            options = {"nn_baseline": self.nn_baseline, "nn_baseline_input": self.baseline_input}
        else:
            options = {"use_decaying_avg_baseline": True, "baseline_beta": self.beta}
        msg["infer"] = {**msg["infer"], "baseline": options}


def _sample_without_reparameterization(fn) -> None:
    """Switch a distribution (and the base of a wrapper such as Independent) to .sample()."""
    base = getattr(fn, "base_dist", None)
    if base is not None:
        _sample_without_reparameterization(base)
    else:
        fn.has_rsample_(False)


class NeuralBaseline(torch.nn.Module):
    """b(x): a small network predicting the downstream cost of each data point.

    Example:
        >>> NeuralBaseline(4)(torch.zeros(3, 4)).shape
        torch.Size([3])
    """

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1)).squeeze(-1)


class ImportanceWeightedELBO(ELBO):
    """The importance-weighted bound (IWAE) with K = num_particles samples per data point.

    L_K(x) = log (1/K) sum_k w_k,  w_k = p(x, z_k) / q(z_k | x),  z_k ~ q(z | x).
    ELBO = L_1 <= L_K <= L_{K+1} <= log p(x). Each data point (the plate named ``plate``) gets
    its own K samples; the minibatch sum is scaled by num_data / batch size. Reparameterized
    sites give pathwise gradients; other sites get score-function gradients with the VIMCO
    leave-one-out baseline (Mnih & Rezende, 2016). KL warm-up scaling is ignored here.

    Example:
        >>> ImportanceWeightedELBO(num_particles=5).num_particles
        5
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: float = float("inf"),
                 plate: str = DATA_PLATE) -> None:
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.plate = plate

    def _get_trace(self, model, guide, args, kwargs):
        return pyro.infer.enum.get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )

    def _per_point(self, site: dict, term: torch.Tensor) -> tuple[torch.Tensor, float | torch.Tensor]:
        """Sum ``term`` over every dim but the particle dim and the data-plate dim."""
        frame = next((f for f in site["cond_indep_stack"] if f.name == self.plate), None)
        if frame is None:
            raise iwae_site_error(site["name"], self.plate)
        # Pyro adds the particle dim (left of the plates) only for K > 1
        vectorized = self.num_particles > 1
        term = to_points(term, self.max_plate_nesting, particles=vectorized, data_dim=frame.dim)
        if not vectorized:
            term = term.unsqueeze(0)
        return term, site["scale"]

    def _bound_and_surrogate(self, model, guide, args, kwargs):
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        log_w = 0.0
        log_q_score = 0.0
        data_scale = 1.0
        for _name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            term, scale = self._per_point(site, site["unscaled_log_prob"])
            log_w = log_w + term
            if site["is_observed"]:  # a tensor scale stays a tensor (no float taken: capturable)
                data_scale = scale.max() if torch.is_tensor(scale) else float(scale)
        for _name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            _, score_term, _ = site["score_parts"]
            log_q, _ = self._per_point(site, site["unscaled_log_prob"])
            log_w = log_w - log_q
            if not isinstance(score_term, (int, float)):
                log_q_score = log_q_score + log_q
        k = self.num_particles
        log_w = log_w.expand(k, log_w.shape[-1])  # a model whose weights ignore the particles
        bound = torch.logsumexp(log_w, dim=0) - math.log(k)
        surrogate = bound
        if torch.is_tensor(log_q_score):
            surrogate = surrogate + (self._vimco_signal(log_w, bound) * log_q_score).sum(0)
        return data_scale * bound.sum(), data_scale * surrogate.sum()

    @staticmethod
    def _vimco_signal(log_w: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        """L - L_{-k}: the bound minus the bound with w_k replaced by the others' geometric mean."""
        log_w = log_w.detach()
        k = log_w.shape[0]
        if k == 1:
            return bound.detach().expand_as(log_w)
        others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)
        eye = torch.eye(k, dtype=torch.bool, device=log_w.device)
        replaced = torch.where(eye[:, :, None], others_mean[None], log_w[None])
        loo = torch.logsumexp(replaced, dim=1) - math.log(k)
        return bound.detach()[None] - loo

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            bound, _ = self._bound_and_surrogate(model, guide, args, kwargs)
        return -float(bound)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        bound, surrogate = self._bound_and_surrogate(model, guide, args, kwargs)
        return -(surrogate + (bound - surrogate).detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.detach().item()


def iwae_site_error(name: str, plate: str) -> ModelContractError:
    """The refusal of a site outside the data plate by the per-point importance-weighted bound."""
    return ModelContractError(
        f"estimator 'iwae' weights each data point on its own, but sample site {name!r} is "
        f"outside the {plate!r} plate: put it inside pyro.plate({plate!r}, len(x)), or use "
        "objective='reparam' for models with global latent variables"
    )


@dataclass
class Objective:
    """A named gradient estimator: the Pyro ELBO plus the guide handler it needs.

    ``loss_and_grads`` returns the loss (negative ELBO, summed over the data the scale
    covers) and leaves gradients in ``.grad`` of every parameter it touched.
    """

    name: str
    elbo: ELBO
    guide_handler: ForceScoreFunction | None = None
    extra_modules: list[torch.nn.Module] = field(default_factory=list)

    def wrap_guide(self, guide):
        return self.guide_handler(guide) if self.guide_handler is not None else guide

    def loss_and_grads(self, model, guide, *args) -> float:
        if self.guide_handler is not None and self.guide_handler.baseline == "neural":
            self.guide_handler.baseline_input = args[0]
        return self.elbo.loss_and_grads(model, self.wrap_guide(guide), *args)

    def loss(self, model, guide, *args) -> float:
        return self.elbo.loss(model, self.wrap_guide(guide), *args)

    def differentiable_loss(self, model, guide, *args) -> torch.Tensor:
        """The loss as a tensor to differentiate (every objective but "score").

        Its value is the negative ELBO and its gradient the estimator's; unlike Pyro's own
        ``differentiable_loss`` it never takes a Python float from a tensor, so it can be
        captured once as a graph (``lvm_pyro.infer.compile``) and replayed on new data.
        """
        if self.guide_handler is not None and self.guide_handler.baseline == "neural":
            self.guide_handler.baseline_input = args[0]
        guide = self.wrap_guide(guide)
        if isinstance(self.elbo, TraceGraph_ELBO):  # value -ELBO, gradient of the surrogate (baselines)
            elbo, surrogate = self.elbo._loss_and_surrogate_loss(model, guide, args, {})
            return surrogate + (-elbo - surrogate).detach()
        if not isinstance(self.elbo, (Trace_ELBO, TraceMeanField_ELBO)):
            return self.elbo.differentiable_loss(model, guide, *args)
        mean_field = isinstance(self.elbo, TraceMeanField_ELBO)
        loss = 0.0
        for model_trace, guide_trace in self.elbo._get_traces(model, guide, args, {}):
            if mean_field:
                surrogate = -_mean_field_elbo(model_trace, guide_trace)  # value == surrogate
            else:
                surrogate = -_surrogate_elbo(model_trace, guide_trace)
                value = _log_prob_total(guide_trace) - _log_prob_total(model_trace)
                surrogate = surrogate + (value - surrogate).detach()
            loss = loss + surrogate / self.elbo.num_particles
        return loss


def _surrogate_elbo(model_trace, guide_trace) -> torch.Tensor:
    """Trace_ELBO's surrogate ELBO of one particle: log p - entropy terms + score-function terms."""
    surrogate = _log_prob_total(model_trace)
    log_r = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        _, score_function_term, entropy_term = site["score_parts"]
        if not is_identically_zero(entropy_term):
            surrogate = surrogate - entropy_term.sum()
        if not is_identically_zero(score_function_term):
            if log_r is None:
                log_r = _compute_log_r(model_trace, guide_trace)
            surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
    return surrogate


def _mean_field_elbo(model_trace, guide_trace) -> torch.Tensor:
    """TraceMeanField_ELBO's ELBO of one particle: analytic KL(q || p) where known, else sampled."""
    elbo = 0.0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo = elbo + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        try:
            kl_qp = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            elbo = elbo + model_site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
            continue
        kl_qp = scale_and_mask(kl_qp, scale=guide_site["scale"], mask=guide_site["mask"])
        if torch.is_tensor(kl_qp):
            elbo = elbo - kl_qp.sum()
        else:
            elbo = elbo - kl_qp * torch.Size(guide_site["fn"].batch_shape).numel()
    for name, guide_site in guide_trace.nodes.items():  # auxiliary guide sites
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            elbo = elbo - guide_site["score_parts"].entropy_term.sum()
    return elbo


def _log_prob_total(trace) -> torch.Tensor:
    return sum(site["log_prob_sum"] for site in trace.nodes.values() if site["type"] == "sample")


def make_objective(
    objective: str = "reparam",
    *,
    num_particles: int | None = None,
    max_plate_nesting: int | None = None,
    vectorize_particles: bool | None = None,
    score_baseline: str = "decaying",
    baseline_features: int | None = None,
) -> Objective:
    """Build the objective named ``objective`` (see the module table).

    ``num_particles`` is the number of samples per step: K for "iwae" (default 5 there; K = 1
    is the ELBO itself), 1 by default for the others.
    ``vectorize_particles`` draws them in one vectorized pass (default: on for "iwae" and for
    num_particles > 1; the model must then broadcast over a leading batch dim).
    ``score_baseline`` ("decaying", "neural" or "none") applies to "score"; "neural" needs
    ``baseline_features``, the flattened size of one example.

    Example:
        >>> make_objective("meanfield").elbo.__class__.__name__
        'TraceMeanField_ELBO'
    """
    if objective not in OBJECTIVES:
        raise ConfigurationError(
            f"unknown objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}"
        )
    if num_particles is None:
        num_particles = 5 if objective == "iwae" else 1
    num_particles = check_count(num_particles, "num_particles")
    mpn = float("inf") if max_plate_nesting is None else max_plate_nesting
    if objective == "iwae":
        return Objective("iwae", ImportanceWeightedELBO(num_particles=num_particles, max_plate_nesting=mpn))
    vectorize = num_particles > 1 if vectorize_particles is None else vectorize_particles
    kwargs = dict(
        num_particles=num_particles, max_plate_nesting=mpn, vectorize_particles=vectorize
    )
    if objective == "reparam":
        return Objective("reparam", Trace_ELBO(**kwargs))
    if objective == "meanfield":
        return Objective("meanfield", TraceMeanField_ELBO(**kwargs))
    if objective == "enum":
        return Objective("enum", TraceEnum_ELBO(**kwargs))
    if score_baseline not in SCORE_BASELINES:
        raise ConfigurationError(
            f"unknown score_baseline {score_baseline!r}; valid: {', '.join(SCORE_BASELINES)}"
        )
    extra: list[torch.nn.Module] = []
    net = None
    if score_baseline == "neural":
        if baseline_features is None:
            raise ConfigurationError("score_baseline='neural' needs baseline_features (features per example)")
        if vectorize and num_particles > 1:
            raise ConfigurationError(
                "score_baseline='neural' predicts one cost per data point: use "
                "vectorize_particles=False with num_particles > 1"
            )
        net = NeuralBaseline(baseline_features)
        extra.append(net)
    handler = ForceScoreFunction(baseline=score_baseline, nn_baseline=net)
    return Objective("score", TraceGraph_ELBO(**kwargs), handler, extra)
