"""Which model owns which entry of Pyro's global param store.

With Pyro's default global param store a PyroModule's parameters are stored under names
built from the module's Pyro name (``"AutoNormal.locs.mu"``, or ``"loc"`` for a top-level
model), and a module reads back whatever the store holds under its names whenever it runs.
Two live instances with the same names would therefore share their parameters: the second
``AutoNormal(model)`` would start from the first one's fitted values, and training it would
silently overwrite the first.

``fit`` and ``em`` call :func:`claim_module_params` before training. It keeps a registry of
the modules they trained (weakly referenced, so it never keeps a model alive) and:

- gives a module whose names are held by *another live trained module* a fresh prefix
  (``"AutoNormal_2"``, ``"GaussianMixtureModel_2"``...), so both keep their own values; read
  a model's parameters from the module itself (``guide.locs.mu``, ``guide.median()``) rather
  than from the store by name;
- drops store entries under the module's own parameter names that belong to no live trained
  module (left over from an earlier, discarded instance), so the module's own values win.

Entries that no trained module owns under a fresh guide's prefix (for example a param store
the user loaded from disk before building an autoguide) are left alone: the guide starts
from them, as in plain Pyro.
"""

from __future__ import annotations

import gc
import itertools
import weakref

import pyro
import torch
from pyro.nn.module import PyroModule

_OWNERS: dict[str, weakref.ref] = {}  # a param-store name or a module prefix -> its trained root module


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


def _pyro_names(root: PyroModule) -> set[str]:
    """The param-store names of the parameters the PyroModules of the tree hold now (their
    PyroParams and plain nn.Parameters, both synced with the store)."""
    names = set()
    for sub in root.modules():
        if isinstance(sub, PyroModule):
            prefix = sub.__dict__.get("_pyro_name", "")
            names.update(_join(prefix, p.removesuffix("_unconstrained")) for p in sub._parameters)
    return names


def _owner(key: str) -> PyroModule | None:
    ref = _OWNERS.get(key)
    return ref() if ref is not None else None


def _rename(root: PyroModule, prefix: str) -> None:
    root._pyro_name = prefix
    for key, child in root.named_children():
        if isinstance(child, PyroModule):
            _rename(child, _join(prefix, key))


def _fresh_prefix(root: PyroModule) -> str:
    base = root._pyro_name or type(root).__name__
    store_keys = list(pyro.get_param_store().keys())
    for k in itertools.count(2):
        candidate = f"{base}_{k}"
        taken = _owner(candidate) is not None or any(n.startswith(candidate + ".") for n in store_keys)
        if not taken:
            return candidate
    raise AssertionError("unreachable")


def _held_by_another(root: PyroModule) -> bool:
    prefix = root._pyro_name
    keys = set(_pyro_names(root))
    if prefix:
        keys.add(prefix)
        keys.update(n for n in pyro.get_param_store().keys() if n.startswith(prefix + "."))
    return any((owner := _owner(k)) is not None and owner is not root for k in keys)


def _unshare(root: PyroModule) -> None:
    """Give the module its own copy of any tensor another live trained module holds (a guide
    set up outside ``fit`` reads the other's tensors from the store)."""
    others = {id(o): o for o in (ref() for ref in _OWNERS.values()) if o is not None and o is not root}
    held = {id(p) for o in others.values() for p in o.parameters()}
    for sub in root.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and id(p) in held:
                sub._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)


def claim_module_params(module: torch.nn.Module | None) -> None:
    """Make the param-store names of ``module`` its own before training (see the module
    docstring).

    Example:
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("mu", dist.Normal(0.0, 1.0))
        >>> first, second = AutoNormal(model), AutoNormal(model)
        >>> claim_module_params(first); claim_module_params(second)
        >>> first._pyro_name, second._pyro_name
        ('AutoNormal', 'AutoNormal_2')
    """
    if module is None:
        return
    store = pyro.get_param_store()
    ids = {id(p) for p in module.parameters()}
    for root in _roots(module):
        if _held_by_another(root):
            # a module that is garbage but not yet collected (a reference cycle) still looks
            # alive: collect before deciding that its names are taken
            gc.collect()
            if _held_by_another(root):
                _unshare(root)
                _rename(root, _fresh_prefix(root))
        for name in _pyro_names(root):
            if name in store and id(store._params[name]) not in ids and _owner(name) in (None, root):
                del store[name]  # left by a discarded instance: this module's values win
            _OWNERS[name] = weakref.ref(root)
        if root._pyro_name:
            _OWNERS[root._pyro_name] = weakref.ref(root)
    # parameters registered with pyro.module("name", net): "name$$$0.weight" <-> "name.0.weight"
    torch_names = {n for n, _ in module.named_parameters()}
    for name in list(store.keys()):
        if name.replace("$$$", ".") in torch_names and id(store._params[name]) not in ids:
            del store[name]
    for key in [k for k, ref in _OWNERS.items() if ref() is None]:
        del _OWNERS[key]
