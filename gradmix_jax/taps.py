"""Taps: activations of named submodules of any Flax model and the gradient w.r.t. them.

GradMix (and LayerCAM) needs, at a few layers of the network, the activation ``A`` and the
gradient ``dL/dA`` of a loss. ``vjp`` gets both from ONE forward pass of an unmodified model:

* **Linen**: the call of each tapped submodule is intercepted with ``flax.linen.intercept_methods``
  and a zero perturbation is added to its output. The perturbations are extra primals of a
  ``jax.vjp``, so the cotangent they receive is exactly ``dL/dA`` at that submodule's output.
* **NNX**: every NNX graph node among the primals (the model, an ``nnx.Rngs``, any other module)
  is split (``nnx.split``, all together, so shared references stay shared) into the
  differentiated state (``wrt``, default ``nnx.Param``) and the rest, merged again inside the
  differentiated function, and each tapped submodule *of the merged copy of the model* gets, for
  the duration of the call only, a subclass whose ``__call__`` (or ``method``) adds the
  perturbation. The user's classes are never modified and the copy is restored before it is split
  again; updates to the rest of the state (BatchNorm statistics, RNG counts) are written back to
  the user's objects, as NNX's own transforms do. The tapped model is the FIRST ``nnx.Module``
  among the primals (an ``nnx.Rngs`` never is); tap paths are relative to it. An NNX object that
  ``fun`` closes over instead cannot be updated from inside the trace: mutating one (dropout
  drawing from a captured ``rngs``) raises ``ClosedOverNnxStateError``; pass it among the
  primals: ``taps.vjp(lambda m, r: m(x, r), model, rngs, taps=...)``.

The perturbation shapes come from ``jax.eval_shape`` (an abstract trace, no compute). XLA folds the
``+ 0`` away; a backward that only needs tap gradients keeps only the part of the graph above the
lowest tap (dead-code elimination), so taps cost what their gradients need and nothing else.

Tap paths are submodule paths as Flax names them: ``"backbone/stage3"`` or
``("backbone", "stage3")`` (NNX list items by index: ``"blocks/2"``). ``taps`` is one path, a
sequence of paths (results keyed by the ``/``-joined path) or a mapping ``name -> path`` (keyed by
name). A path that matches no submodule call raises an error listing the submodules that ran; a
submodule that runs more than once per call (a shared module) raises too, since its activation
would be ambiguous.

Works under ``jax.jit``, ``jax.vmap``, ``jax.grad`` and inside ``shard_map``: everything is traced
Python, shapes are static.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "vjp",
    "activations",
    "normalize_taps",
    "for_model",
    "module_paths",
    "ClosedOverNnxStateError",
]

Path = tuple[str, ...]


def _as_path(path: Any) -> Path:
    if isinstance(path, str):
        parts = tuple(p for p in path.split("/") if p)
    elif isinstance(path, Sequence) and all(isinstance(p, (str, int)) for p in path):
        parts = tuple(str(p) for p in path)
    else:
        parts = ()
    if not parts:
        raise ValueError(
            f"a tap path must be a non-empty 'a/b' string or tuple of names, got {path!r}"
        )
    return parts


def normalize_taps(taps: Any) -> dict[str, Path]:
    """``taps`` (a path, a sequence of paths, or a mapping name -> path) as {name: path tuple}.

    Names of paths given without one are the ``/``-joined path.
    """
    if isinstance(taps, Mapping):
        items = [(str(name), _as_path(path)) for name, path in taps.items()]
    elif isinstance(taps, str):
        items = [(None, _as_path(taps))]
    elif isinstance(taps, Sequence):
        items = [(None, _as_path(path)) for path in taps]
    else:
        raise ValueError(
            f"taps must be a path, a sequence of paths or a mapping name -> path, got {taps!r}"
        )
    if not items:
        raise ValueError("taps must name at least one submodule path, got none")
    paths = [path for _, path in items]
    dup = sorted({"/".join(p) for p in paths if paths.count(p) > 1})
    if dup:
        raise ValueError(f"taps name the same submodule more than once: {dup}")
    return {"/".join(path) if name is None else name: path for name, path in items}


def for_model(model: Any, layers: Any) -> dict[str, Path]:
    """``normalize_taps`` where names the model defines in a ``tap_paths`` mapping are resolved.

    ``ContrastiveResNet.tap_paths`` maps ``conv2_2`` ... ``conv5_2`` to its blocks; any other
    entry of ``layers`` is taken as a path. Results are keyed by the entries of ``layers``.
    """
    if isinstance(layers, str):
        layers = (layers,)
    named = getattr(model, "tap_paths", None) or {}
    return normalize_taps({layer: named.get(layer, layer) for layer in layers})


@dataclasses.dataclass
class _Recorder:
    """What one traced call of ``fun`` did at the taps (trace-time Python state, never traced)."""

    spec: dict[str, Path]
    method: str
    perturbations: dict[str, Any] | None  # None: discovery pass (record shapes only)
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    hits: dict[str, int] = dataclasses.field(default_factory=dict)
    seen: set = dataclasses.field(default_factory=set)  # every (path, method) that ran

    def __post_init__(self):
        self.by_path = {path: name for name, path in self.spec.items()}

    def on_output(self, path: Path, out: Any) -> Any:
        """Called with the output of a tapped submodule; returns the (perturbed) output."""
        name = self.by_path[path]
        self.hits[name] = self.hits.get(name, 0) + 1
        if self.hits[name] > 1:
            return out  # reported by ``check``
        leaves = jax.tree.leaves(out)
        bad = [x.dtype for x in leaves if not jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
        if not leaves or bad:
            raise ValueError(
                f"tap {name!r} ({'/'.join(path)}): the submodule's {self.method} must return "
                f"floating-point arrays to be differentiated, got {jax.tree.map(_describe, out)}"
            )
        self.outputs[name] = out
        if self.perturbations is None:
            return out
        return jax.tree.map(jnp.add, out, self.perturbations[name])

    def check(self, where: str) -> None:
        missing = [n for n in self.spec if n not in self.hits]
        if missing:
            ran = sorted("/".join(p) for p, m in self.seen if m == self.method and p)
            name = missing[0]
            raise ValueError(
                f"tap {name!r} (path {'/'.join(self.spec[name])!r}) matched no {where} submodule "
                f"whose {self.method} ran; submodules that ran: {ran}"
            )
        shared = {n: k for n, k in self.hits.items() if k > 1}
        if shared:
            name, k = next(iter(shared.items()))
            raise ValueError(
                f"tap {name!r} (path {'/'.join(self.spec[name])!r}) ran {k} times in one call: a "
                "shared submodule has no single activation to attribute; tap a submodule that "
                "runs once per call"
            )


def _describe(x: Any) -> str:
    return f"{jnp.result_type(x)}{list(jnp.shape(x))}"


# --------------------------------------------------------------------------- Linen


def _linen_interceptor(recorder: _Recorder):
    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        out = next_fun(*args, **kwargs)
        if context.method_name != recorder.method:
            return out
        try:
            path = tuple(module.path)
        except Exception:  # an unbound module has no path: it cannot be a tap
            return out
        recorder.seen.add((path, context.method_name))
        if path in recorder.by_path:
            return recorder.on_output(path, out)
        return out

    return interceptor


# --------------------------------------------------------------------------- NNX

_NNX_LOCAL = threading.local()
_TAPPED_CLASSES: dict[tuple[type, str], type] = {}


def _tapped_class(cls: type, method: str) -> type:
    """A subclass of ``cls`` whose ``method`` reports its output to the active recorder.

    Only ever set as the ``__class__`` of a transient copy inside ``vjp``; cached per class.
    """
    key = (cls, method)
    if key not in _TAPPED_CLASSES:
        original = getattr(cls, method)

        def tapped(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            stack = getattr(_NNX_LOCAL, "stack", [])
            for recorder, instances in reversed(stack):
                if id(self) in instances:
                    return recorder.on_output(instances[id(self)], out)
            return out

        _TAPPED_CLASSES[key] = type(cls.__name__, (cls,), {method: tapped})
    return _TAPPED_CLASSES[key]


def _nnx_child(node: Any, part: str) -> Any:
    if isinstance(node, Mapping) and part in node:
        return node[part]
    if hasattr(node, part) and not part.isdigit():
        return getattr(node, part)
    if part.lstrip("-").isdigit():
        try:
            return node[int(part)]
        except (TypeError, IndexError, KeyError):
            pass
    raise KeyError(part)


def module_paths(model: Any) -> list[str]:
    """The ``/``-joined paths of every submodule of an NNX ``model`` (for messages and docs)."""
    from flax import nnx

    return sorted("/".join(str(p) for p in path) for path, _ in nnx.iter_modules(model) if path)


class _NnxTaps:
    """Context manager: swap the tapped submodules of ``model`` to their tapped classes."""

    def __init__(self, model, recorder: _Recorder, which: str = ""):
        self.model, self.recorder, self.which = model, recorder, which

    def __enter__(self):
        from flax import nnx

        instances, self.swapped = {}, []
        for name, path in self.recorder.spec.items():
            node = self.model
            try:
                for part in path:
                    node = _nnx_child(node, part)
            except KeyError:
                node = None
            if not isinstance(node, nnx.Module):
                raise ValueError(
                    f"tap {name!r} (path {'/'.join(path)!r}) matched no submodule of the NNX "
                    f"model{self.which}; its submodules: {module_paths(self.model)}"
                )
            self.recorder.seen.add((path, self.recorder.method))
            if id(node) in instances:
                other = "/".join(instances[id(node)])
                raise ValueError(
                    f"taps {other!r} and {'/'.join(path)!r} are the same NNX submodule (one "
                    "instance reachable at two paths): tap it once"
                )
            instances[id(node)] = path
            cls = type(node)
            self.swapped.append((node, cls))
            node.__class__ = _tapped_class(cls, self.recorder.method)
        if not hasattr(_NNX_LOCAL, "stack"):
            _NNX_LOCAL.stack = []
        _NNX_LOCAL.stack.append((self.recorder, instances))
        return self

    def __exit__(self, *exc):
        _NNX_LOCAL.stack.pop()
        for node, cls in self.swapped:
            node.__class__ = cls
        return False


# --------------------------------------------------------------------------- the VJP


class ClosedOverNnxStateError(ValueError):
    """``fun`` mutated an NNX object (``nnx.Rngs``, a module's statistics) it closed over."""


def _is_nnx_node(x: Any) -> bool:
    """Whether NNX treats ``x`` as a graph node: a module, an ``nnx.Rngs``, a Variable, ...

    JAX array refs are graph nodes to NNX too, but plain JAX: they stay ordinary primals.
    """
    if isinstance(x, jax.Array) or "flax.nnx" not in sys.modules:  # no NNX object can exist
        return False
    from flax.nnx import graph, variablelib

    return graph.is_graph_node(x) and not variablelib.is_array_ref(x)


@dataclasses.dataclass
class _NnxPrimals:
    """The NNX graph nodes among the primals, split once together (shared references kept)."""

    treedef: Any  # of the primals, with each graph node a leaf
    where: list[int]  # leaf indices of the graph nodes
    module: int | None  # index (among the nodes) of the tapped model: the first nnx.Module
    n_modules: int
    graphdef: Any  # of the tuple of nodes
    rest: Any  # their non-differentiated state (nnx.State keyed by node index)
    wrt: Any
    nodes: tuple  # the user's objects, written back to


def _split_nnx(primals, wrt):
    """Replace each NNX graph node among ``primals`` (at any depth) by its ``wrt`` state.

    Returns (primals, info) with info None when there is none (Linen / plain function: the
    primals are returned as they are), else an ``_NnxPrimals``. A node with no ``wrt`` state (an
    ``nnx.Rngs``) becomes an empty ``nnx.State``.
    """
    leaves, treedef = jax.tree.flatten(primals, is_leaf=_is_nnx_node)
    where = [i for i, leaf in enumerate(leaves) if _is_nnx_node(leaf)]
    if not where:
        return primals, None
    from flax import nnx

    nodes = tuple(leaves[i] for i in where)
    modules = [k for k, node in enumerate(nodes) if isinstance(node, nnx.Module)]
    wrt = nnx.Param if wrt is None else wrt
    # One split of all nodes: an object reachable from two of them (the model's own nnx.Rngs,
    # also passed on its own) is one object inside too, its state held by the first.
    graphdef, diff, rest = nnx.split(nodes, wrt, ...)
    for k, i in enumerate(where):
        leaves[i] = diff[k] if k in diff else nnx.State({})
    first = modules[0] if modules else None
    info = _NnxPrimals(treedef, where, first, len(modules), graphdef, rest, wrt, nodes)
    return jax.tree.unflatten(treedef, leaves), info


def _merge_nnx(primals, info: _NnxPrimals):
    """The primals with each graph node rebuilt (merged) from its traced ``wrt`` state."""
    from flax import nnx

    leaves = info.treedef.flatten_up_to(primals)
    diff = nnx.State({k: leaves[i] for k, i in enumerate(info.where)})
    # Variables made outside this trace cannot be updated inside it: rebuild them here.
    nodes = nnx.merge(info.graphdef, diff, jax.tree.map(lambda v: v, info.rest))
    for k, i in enumerate(info.where):
        leaves[i] = nodes[k]
    return jax.tree.unflatten(info.treedef, leaves), nodes


def _closed_over_error(err: Exception) -> ClosedOverNnxStateError:
    what = str(err).split(" (https://")[0].strip().splitlines()[0]
    if "Rng" in what:
        what += ", state of an nnx.Rngs"
    return ClosedOverNnxStateError(
        f"fun mutated an NNX object it closed over ({what}): pass it among the primals so that "
        "its updates are written back, e.g. taps.vjp(lambda m, r: m(x, r), model, rngs, taps=...)"
    )


def _call(fun, primals, nnx_info: _NnxPrimals | None, recorder: _Recorder):
    """``fun(*primals)`` with the taps active; returns (out, new rest state of the NNX nodes)."""
    from flax.errors import TraceContextError

    if nnx_info is None:
        with nn.intercept_methods(_linen_interceptor(recorder)):
            try:
                out = fun(*primals)
            except TraceContextError as err:
                raise _closed_over_error(err) from err
        recorder.check("Linen")
        return out, None
    from flax import nnx

    primals, nodes = _merge_nnx(primals, nnx_info)
    if nnx_info.module is None:  # NNX state (an nnx.Rngs) but no NNX model: Linen taps
        return _call(fun, primals, None, recorder)[0], nnx.split(nodes, nnx_info.wrt, ...)[2]
    which = ""
    if nnx_info.n_modules > 1:
        which = (
            f" (the first of the {nnx_info.n_modules} nnx.Module among the primals: the tapped one)"
        )
    with _NnxTaps(nodes[nnx_info.module], recorder, which):
        try:
            out = fun(*primals)
        except TraceContextError as err:
            raise _closed_over_error(err) from err
    recorder.check("NNX")
    _, _, new_rest = nnx.split(nodes, nnx_info.wrt, ...)
    return out, new_rest


def _write_back(nnx_info: _NnxPrimals | None, new_rest) -> None:
    """Non-differentiated NNX state changed by the call (BatchNorm statistics, RNG counts) goes
    back to the user's objects, as NNX's own transforms do."""
    if nnx_info is not None:
        from flax import nnx

        nnx.update(nnx_info.nodes, new_rest)


def activations(fun: Callable, *args, taps: Any, method: str = "__call__", wrt: Any = None):
    """``fun(*args)`` and the tap activations, without differentiation: ``(out, {name: A})``.

    Same ``taps`` / ``method`` / ``wrt`` as ``vjp``; the NNX objects among ``args`` (the model, an
    ``nnx.Rngs``) get their state updates (BatchNorm statistics, RNG counts) as in a plain call.
    """
    spec = normalize_taps(taps)
    split, nnx_info = _split_nnx(args, wrt)
    recorder = _Recorder(spec, method, None)
    out, new_rest = _call(fun, split, nnx_info, recorder)
    _write_back(nnx_info, new_rest)
    return out, recorder.outputs


def _zeros_like_abstract(s: jax.ShapeDtypeStruct) -> jax.Array:
    """Zeros shaped like ``s`` that vary over the same manual mesh axes as the activation.

    Inside ``shard_map`` an activation differs per device; a perturbation built as plain zeros
    would be typed as replicated, and its cotangent would come back summed over the devices.
    """
    zeros = jnp.zeros(s.shape, s.dtype)
    varying = tuple(sorted(getattr(getattr(s, "manual_axis_type", None), "varying", ()) or ()))
    return jax.lax.pcast(zeros, varying, to="varying") if varying else zeros


def vjp(
    fun: Callable,
    *primals,
    taps: Any,
    has_aux: bool = False,
    method: str = "__call__",
    wrt: Any = None,
):
    """``jax.vjp`` of ``fun`` that also differentiates w.r.t. the outputs of tapped submodules.

    Args:
      fun: calls the model (``model.apply(variables, x, ...)`` for Linen; ``model(x)`` on its
        NNX module argument) and returns a pytree of arrays (``(out, aux)`` with ``has_aux``).
      *primals: what ``fun`` is differentiated w.r.t. (params, inputs, ...). Each NNX graph node
        among them, at any depth (an ``nnx.Module``, an ``nnx.Rngs``, a Variable), reaches
        ``fun`` as itself: it is differentiated w.r.t. its ``wrt`` state (default
        ``nnx.Param``) and its other state updates (BatchNorm statistics, RNG counts) are
        written back to it, as ``nnx.grad`` does. The first ``nnx.Module`` is the tapped model.
        Pass every NNX object that ``fun`` updates here: one it closes over raises
        ``ClosedOverNnxStateError`` when ``fun`` mutates it (dropout draws from its ``rngs``).
      taps: a submodule path, a sequence of them, or a mapping name -> path (module docstring).
      has_aux: ``fun`` returns ``(out, aux)``; aux is returned, not differentiated.
      method: the tapped submodules' method whose output is the activation.
      wrt: NNX filter of the differentiated state (default ``nnx.Param``).

    Returns:
      ``(out, vjp_fn, activations)`` (``+ (aux,)`` with ``has_aux``): ``activations`` maps each
      tap name to the submodule's output; ``vjp_fn(cotangent)`` returns
      ``(*primal_cotangents, tap_cotangents)`` with ``tap_cotangents`` a dict name -> ``dL/dA``
      shaped like the activation. An NNX node's cotangent is an ``nnx.State`` of its ``wrt``
      variables, shaped like them (an ``nnx.Rngs``, which has none: an empty ``nnx.State``; a
      Variable: the Variable type holding its cotangent; state reachable from two primals goes
      to the first). All from the same forward pass.
    """
    spec = normalize_taps(taps)
    split, nnx_info = _split_nnx(primals, wrt)

    def traced(recorder, *args):
        out, new_rest = _call(fun, args, nnx_info, recorder)
        out, aux = out if has_aux else (out, None)
        return out, (recorder.outputs, aux, new_rest)

    # Abstract pass: the shape and dtype of every tap's output, and the errors, before any compute.
    shapes = jax.eval_shape(
        lambda *args: traced(_Recorder(spec, method, None), *args)[1][0], *split
    )
    zeros = jax.tree.map(_zeros_like_abstract, shapes)

    def with_taps(*args):
        *args, perturbations = args
        return traced(_Recorder(spec, method, perturbations), *args)

    out, raw_vjp, (acts, aux, new_rest) = jax.vjp(with_taps, *split, zeros, has_aux=True)
    _write_back(nnx_info, new_rest)
    # The perturbations are the last primal: raw_vjp returns (*primal_cts, tap_cts) as documented.
    return (out, raw_vjp, acts, aux) if has_aux else (out, raw_vjp, acts)
