"""Online EM for a user's chain model (a mixture or HMM written as a Pyro program): the
statistics protocol of :mod:`lvm_pyro.infer.online_em`, spoken by the compiled chain.

``em(model, data, batch_size=B)`` on such a model compiles the model on every minibatch (the
first one certified against Pyro's own contraction, later ones whenever their structure differs
from it), runs the forward-backward E-step on the batch, and hands online EM the expected
sufficient statistics of :mod:`.chain_statistics`; the solve after every step is the same
closed form as batch EM's. Every param on the chain must take the closed form: a param fitted by
gradient steps has no sufficient statistics to average, and such a model is refused with the
params named. The params live in Pyro's param store, as in batch ``em``.
"""

from __future__ import annotations

import torch

from lvm_pyro.errors import ConfigurationError, DataError
from lvm_pyro.infer.em.chain import CompiledChain, NotCompilable
from lvm_pyro.infer.em.chain_statistics import expected_statistics, solve


class OnlineChain:
    """A user's chain model with ``expected_statistics`` / ``m_step_from_statistics``, for
    :class:`lvm_pyro.infer.online_em.OnlineEM`.

    Args:
        program: the user's model (and Delta guide) as an ``as_program`` Program.
        make_route: ``make_route(batch) -> route`` builds em's route on the first batch (the
            compiled chain route when the model is one, else the general route with the reason
            in ``closed_form_refused``).
        gen: the generator of the certification's random parameters.
    """

    missing_values = False  # batches with NaN are refused (use obs_mask with batch em)
    any_event_shape = True  # rows of any shape, (B,) points or (B, T) sequences; every batch the first one's

    def __init__(self, program, make_route, gen: torch.Generator) -> None:
        self.program, self.make_route, self.gen = program, make_route, gen
        self.route = None  # em's chain route, compiled on the current batch
        self.reference = None  # the param values the statistics' pair sums are centred on
        self.event_shape = None

    # ------------------------------------------------------------------ compilation

    def _compile(self, x: torch.Tensor) -> CompiledChain:
        if self.event_shape is None:
            self.event_shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"a minibatch has rows of shape {tuple(x.shape[1:])}, the first had {self.event_shape}: "
                "every row of the data must have one shape"
            )
        if self.route is None:
            route = self.make_route((x,))
            if getattr(route, "e_step_name", None) != "chain":
                why = getattr(route, "closed_form_refused", None) or "it has its own m_step"
                raise ConfigurationError(
                    "em(..., batch_size=) runs online EM, which needs the closed-form M-step of a "
                    f"chain model (a mixture or HMM over exponential-family sites); this model has "
                    f"none ({why}): leave batch_size=None, or train it with fit(..., batch_size=)"
                )
            if route.gradient:
                raise ConfigurationError(
                    f"em(..., batch_size=) needs every param in closed form, but {route.gradient} "
                    "take gradient steps (they have no sufficient statistics to average): leave "
                    "batch_size=None (em with chunk_size= bounds the E-step's memory instead)"
                )
            self.route = route
            return route.c
        c = self.route.c
        if x.shape[0] != c.N or x is not c.data[0]:
            try:
                c = CompiledChain(
                    self.program.model,
                    (x,),
                    nesting=c.nesting,
                    plate=c.plate,
                    gen=self.gen,
                    guide=self.program.guide,
                    certified=c.signature,
                )
            except NotCompilable as exc:
                raise ConfigurationError(
                    f"a minibatch of {len(x)} rows does not compile as the first one did ({exc}): "
                    "online EM needs the model's structure to be the same on every batch"
                ) from exc
            if c.routes != self.route.routes:
                raise ConfigurationError(
                    "a minibatch gives the params other routes than the first one did: online EM "
                    "needs the model's structure to be the same on every batch"
                )
            self.route.c = c
        return c

    # ------------------------------------------------------------------ the protocol

    def initialize_(self, x: torch.Tensor, method: str, gen, chunk_size=None, sample_weight=None) -> None:
        """``init="random"``: random posteriors on the first batch, then an M-step."""
        if method != "random":
            raise ConfigurationError(
                f"init={method!r} needs a model with an initialize_(x, method, generator) method; "
                "use init='current' (the model's parameters as they are) or 'random'"
            )
        self._compile(x)
        self.route.sample_weight = sample_weight
        try:
            self.route.random_start((x,), gen)
        finally:
            self.route.sample_weight = None

    @torch.no_grad()
    def expected_statistics(self, x, shift=None, chunk_size=None, sample_weight=None):
        """sum_n w_n log p(x_n) over the batch, and its expected sufficient statistics."""
        c = self._compile(x)
        values = self.route.values()
        if self.reference is None:
            self.reference = {n: v.clone() for n, v in values.items()}
        total, post = c.e_step(values, sample_weight)
        return total, expected_statistics(c, values, post, self.reference)

    @torch.no_grad()
    def m_step_from_statistics(self, stats) -> None:
        new = solve(self.route.c, stats, self.route.values())
        for n, r in self.route.routes.items():
            if r.startswith("closed_form"):
                self.route._write(n, new[n])

    # ------------------------------------------------------------------ state (averaging)

    def parameters(self):
        return iter(() if self.route is None else self.route.unconstrained.values())

    def state_dict(self) -> dict:
        """The params in their unconstrained space (what parameter averaging averages)."""
        return {n: t.detach().clone() for n, t in self.route.unconstrained.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for n, t in state.items():
            self.route.unconstrained[n].copy_(t)


__all__ = ["OnlineChain"]
