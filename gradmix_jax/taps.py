"""Taps: activations of named submodules of any Flax model and the gradient w.r.t. them.

GradMix (and LayerCAM) needs, at a few layers of the network, the activation ``A`` and the
gradient ``dL/dA`` of a loss. ``vjp`` gets both from ONE forward pass of an unmodified model:

* **Linen**: the call of each tapped submodule is intercepted with ``flax.linen.intercept_methods``
  and a zero perturbation is added to its output. The perturbations are extra primals of a
  ``jax.vjp``, so the cotangent they receive is exactly ``dL/dA`` at that submodule's output.
* **NNX**: the model is split (``nnx.split``) into the differentiated state (``wrt``, default
  ``nnx.Param``) and the rest, merged again inside the differentiated function, and each tapped
  submodule *of that merged copy* gets, for the duration of the call only, a subclass whose
  ``__call__`` (or ``method``) adds the perturbation. The user's classes are never modified and
  the copy is restored before it is split again; updates to the rest of the state (BatchNorm
  statistics, RNG counts) are written back to the model, as NNX's own transforms do.

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
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["vjp", "activations", "normalize_taps", "for_model", "module_paths"]

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

    def __init__(self, model, recorder: _Recorder):
        self.model, self.recorder = model, recorder

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
                    f"model; its submodules: {module_paths(self.model)}"
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


def _split_nnx(primals, wrt):
    """Replace the (at most one) NNX module among ``primals`` by its ``wrt`` state.

    Returns (primals, nnx_info) with nnx_info None for a Linen / plain function, else
    (position, module, graphdef, rest state, wrt).
    """
    from flax import nnx

    positions = [i for i, p in enumerate(primals) if isinstance(p, nnx.Module)]
    if not positions:
        return primals, None
    if len(positions) > 1:
        raise ValueError(
            f"taps take at most one NNX module among the primals (the tap paths are relative to "
            f"it), got {len(positions)} at positions {positions}"
        )
    i = positions[0]
    wrt = nnx.Param if wrt is None else wrt
    graphdef, diff, rest = nnx.split(primals[i], wrt, ...)
    return (*primals[:i], diff, *primals[i + 1 :]), (i, primals[i], graphdef, rest, wrt)


def _call(fun, primals, nnx_info, recorder: _Recorder):
    """``fun(*primals)`` with the taps active; returns (out, new rest state of the NNX module)."""
    if nnx_info is None:
        with nn.intercept_methods(_linen_interceptor(recorder)):
            out = fun(*primals)
        recorder.check("Linen")
        return out, None
    from flax import nnx

    i, _, graphdef, rest, wrt = nnx_info
    # Variables made outside this trace cannot be updated inside it: rebuild them here.
    model = nnx.merge(graphdef, primals[i], jax.tree.map(lambda v: v, rest))
    with _NnxTaps(model, recorder):
        out = fun(*primals[:i], model, *primals[i + 1 :])
    recorder.check("NNX")
    _, _, new_rest = nnx.split(model, wrt, ...)
    return out, new_rest


def _write_back(nnx_info, new_rest) -> None:
    """Non-differentiated NNX state changed by the call (BatchNorm statistics) goes back."""
    if nnx_info is not None:
        from flax import nnx

        nnx.update(nnx_info[1], new_rest)


def activations(fun: Callable, *args, taps: Any, method: str = "__call__", wrt: Any = None):
    """``fun(*args)`` and the tap activations, without differentiation: ``(out, {name: A})``.

    Same ``taps`` / ``method`` as ``vjp``; an NNX module among ``args`` gets its state updates.
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
      *primals: what ``fun`` is differentiated w.r.t. (params, inputs, ...). At most one may be an
        ``nnx.Module``: it is differentiated w.r.t. its ``wrt`` state (default ``nnx.Param``) and
        its other state updates (BatchNorm statistics) are written back to it.
      taps: a submodule path, a sequence of them, or a mapping name -> path (module docstring).
      has_aux: ``fun`` returns ``(out, aux)``; aux is returned, not differentiated.
      method: the tapped submodules' method whose output is the activation.
      wrt: NNX filter of the differentiated state (default ``nnx.Param``).

    Returns:
      ``(out, vjp_fn, activations)`` (``+ (aux,)`` with ``has_aux``): ``activations`` maps each
      tap name to the submodule's output; ``vjp_fn(cotangent)`` returns
      ``(*primal_cotangents, tap_cotangents)`` with ``tap_cotangents`` a dict name -> ``dL/dA``
      shaped like the activation. The NNX module's cotangent is an ``nnx.State`` of its ``wrt``
      variables. All from the same forward pass.
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
