"""Pyro's global param store and the modules ``fit`` and ``em`` train: kept apart, left as found.

With Pyro's default global param store a PyroModule's parameters are stored under names
built from the module's Pyro name (``"AutoNormal.locs.mu"``, or ``"loc"`` for a top-level
model), and a module run inside Pyro adopts whatever tensor the store holds under its names.
Two instances of one class (two ``AutoNormal(model)``, two ``GaussianMixtureModel``) share
those names: in plain Pyro the second starts from the first's fitted values, and training it
overwrites the first.

``fit`` and ``em`` call ``claim_module_params(module)`` before training, inside
:func:`restoring_param_store` (their decorator), or use ``with claim_module_params(module):``.
For the duration of the call:

- store entries under the module's names that are another module's parameters (a module
  trained by ``fit``/``em`` before, live or discarded) or that would replace a parameter the
  module already holds are set aside, so the module trains its own tensors;
- on exit the entries the call added for the module's own parameters are removed and the set
  aside entries put back: the store holds the same names, bound to the same tensors, as
  before the call. Entries the model itself declares with ``pyro.param`` (a plain-callable
  model's parameters) stay in the store, as in plain Pyro.

Neither the module's Pyro name nor its parameter tensors are changed. Read a fitted model's
values from the module itself (``guide.locs.mu``, ``guide.median()``, ``model.state_dict()``),
not from the store by name. Entries under a fresh guide's prefix that no trained module owns
(a param store the user loaded from disk before building an autoguide) are left in place: the
guide starts from them, as in plain Pyro.

Outside this scope (plain Pyro after ``fit``: ``Predictive``, ``poutine.trace``) Pyro's own
rule applies again: two live modules with the same names share the store. There use
``pyro.settings.set(module_local_params=True)`` (each PyroModule keeps its parameters), or
``pyro.clear_param_store()`` between models, or ``with pyro.get_param_store().scope(): ...``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType

import pyro
import torch
from pyro.nn.module import PyroModule

_CLAIMED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()  # modules fit/em trained
#: the scopes opened inside the innermost :func:`restoring_param_store` (None outside one)
_OPEN: ContextVar[list[ModuleParams] | None] = ContextVar("lvm_pyro_param_scopes", default=None)


def _roots(module: torch.nn.Module) -> list[PyroModule]:
    """The outermost PyroModules of a module tree (the module itself, or the PyroModules of
    a (model, guide) ModuleList)."""
    if isinstance(module, PyroModule):
        return [module]
    roots, inner = [], set()
    for m in module.modules():
        if isinstance(m, PyroModule) and id(m) not in inner:
            roots.append(m)
            inner.update(id(s) for s in m.modules())
    return roots


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _held_names(root: PyroModule) -> set[str]:
    """The param-store names of the parameters the PyroModules of the tree hold now (their
    PyroParams and plain nn.Parameters, both synced with the store)."""
    names = set()
    for sub in root.modules():
        if isinstance(sub, PyroModule):
            prefix = sub.__dict__.get("_pyro_name", "")
            names.update(_join(prefix, p.removesuffix("_unconstrained")) for p in sub._parameters)
    return names


def _is_modules(name: str, held: set[str], prefixes: list[str], torch_names: set[str]) -> bool:
    """Is ``name`` a store name the module uses (or will use once a lazy guide is set up)?"""
    return (
        name in held
        or any(name.startswith(p + ".") for p in prefixes)
        or name.replace("$$$", ".") in torch_names  # pyro.module("net", net): "net$$$0.weight"
    )


def _foreign_entries(module: torch.nn.Module) -> list[tuple[str, str]]:
    """(store name, why) of the entries under the module's names that it must not adopt: another
    trained module's parameter, or a replacement for a parameter the module already holds."""
    store = pyro.get_param_store()
    own = {id(p) for p in module.parameters()}
    others = {id(p) for m in list(_CLAIMED) if m is not module for p in m.parameters()} - own
    held, prefixes = set(), []
    for root in _roots(module):
        held |= _held_names(root)
        if root._pyro_name:
            prefixes.append(root._pyro_name)
    torch_names = {n for n, _ in module.named_parameters()}
    foreign = []
    for name, value in store.named_parameters():
        if id(value) in own or not _is_modules(name, held, prefixes, torch_names):
            continue
        if id(value) in others:
            foreign.append((name, "a parameter of another module trained by fit or em"))
        elif name in held or name.replace("$$$", ".") in torch_names:
            foreign.append((name, "a tensor other than the module's own parameter of that name"))
    return foreign


class ModuleParams:
    """What :func:`claim_module_params` returns: the module's scope, opened when it is made
    (foreign store entries set aside) and closed by ``__exit__`` (the store put back as it was).
    See the module docstring."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module = module
        self._before: set[str] | None = None
        self._aside: dict = {"params": {}, "constraints": {}}
        if module is None:
            return
        store = pyro.get_param_store()
        aside = {name for name, _ in _foreign_entries(module)}
        if aside:
            state = store.get_state()
            self._aside = {
                "params": {n: state["params"][n] for n in aside},
                "constraints": {n: state["constraints"][n] for n in aside},
            }
            for name in aside:
                del store[name]
        self._before = set(store.keys())
        _CLAIMED.add(module)
        opened = _OPEN.get()
        if opened is not None:
            opened.append(self)

    @property
    def set_aside(self) -> list[str]:
        """The store names set aside for the duration of the scope."""
        return sorted(self._aside["params"])

    def __enter__(self) -> ModuleParams:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Put the store back as it was when the scope opened (idempotent)."""
        if self.module is None or self._before is None:
            return
        store = pyro.get_param_store()
        own = {id(p) for p in self.module.parameters()}
        for name, value in list(store.named_parameters()):
            if name not in self._before and id(value) in own:
                del store[name]
        # an entry set aside comes back unless the call bound its name to a tensor of its own
        store.set_state(
            {
                "params": {n: p for n, p in self._aside["params"].items() if n not in store},
                "constraints": {n: c for n, c in self._aside["constraints"].items() if n not in store},
            }
        )
        self._before = None
        self._aside = {"params": {}, "constraints": {}}


@contextmanager
def restoring_param_store() -> Iterator[None]:
    """Close, on leaving, every :func:`claim_module_params` scope opened inside: the context
    (or decorator, ``@restoring_param_store()``) that ``fit`` and ``em`` run in, so that their
    plain ``claim_module_params(program.module)`` call leaves Pyro's param store as it was.

    Example:
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro.distributions as dist
        >>> guide = AutoNormal(lambda: pyro.sample("mu", dist.Normal(0.0, 1.0)))
        >>> with restoring_param_store():
        ...     _ = claim_module_params(guide)
        ...     _ = guide()
        ...     sorted(pyro.get_param_store().keys())
        ['AutoNormal.locs.mu', 'AutoNormal.scales.mu']
        >>> list(pyro.get_param_store().keys())
        []
    """
    opened: list[ModuleParams] = []
    token = _OPEN.set(opened)
    try:
        yield
    finally:
        _OPEN.reset(token)
        for scope in reversed(opened):
            scope.close()


def claim_module_params(module: torch.nn.Module | None) -> ModuleParams:
    """Keep ``module``'s parameters its own while ``fit``/``em`` train it, and leave Pyro's
    param store as it was: ``with claim_module_params(module): <train>`` (see the module
    docstring).

    On the call, store entries under the module's names that belong to another module (or
    would replace a parameter the module holds) are set aside; on leaving the ``with`` block
    the entries the block added for the module's own parameters are removed and those set
    aside put back. The module's Pyro name and its parameter tensors are never changed.
    Inside :func:`restoring_param_store` (which ``fit`` and ``em`` wear as a decorator) a plain
    call's scope is closed when that context ends. Called without either, the entries set
    aside stay out of the store.

    Example:
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> first, second = AutoNormal(model), AutoNormal(model)
        >>> with claim_module_params(first):
        ...     _ = first()
        >>> with claim_module_params(second):
        ...     _ = second()
        >>> first._pyro_name, second._pyro_name, list(pyro.get_param_store().keys())
        ('AutoNormal', 'AutoNormal', [])
        >>> first.locs.mu is second.locs.mu
        False
    """
    return ModuleParams(module)
