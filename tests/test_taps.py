"""gradmix_jax.taps on models this project did not shape, against independent references.

The models (a Linen CNN ``Classifier`` -> ``backbone`` -> ``stem``/``stage1``/``stage2`` + ``head``;
a Linen model with a shared ``nn.Dense``; an NNX ``Net`` with blocks in an ``nnx.List``) are
defined here. References never go through ``taps``: activations come from Linen's
``capture_intermediates`` or from calling the NNX submodules by hand; tap gradients are checked
against central finite differences in float64 of the loss with an offset added to the
submodule's output by an interceptor (Linen) or a hand-written forward (NNX) of this file;
parameter gradients against plain ``jax.grad`` / ``nnx.grad``.
"""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradmix_jax import taps
from gradmix_jax.attribution import layercam

HERE = os.path.dirname(os.path.abspath(__file__))
LINEN_TAPS = ("backbone/stage1", "backbone/stage2")
LINEN_TAP_SHAPES = {"backbone/stage1": (4, 4, 4, 6), "backbone/stage2": (4, 2, 2, 9)}  # batch 4
NNX_TAPS = ("blocks/0", "blocks/1")


# ----------------------------------------------------------------------------- Linen models


class Stage(nn.Module):
    """conv (strided) -> BatchNorm -> relu, with this file's own names."""

    features: int
    strides: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(
            self.features,
            (3, 3),
            strides=self.strides,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train, dtype=self.dtype, param_dtype=self.dtype, name="norm"
        )(x)
        return nn.relu(x)


class Backbone(nn.Module):
    """Submodules made in ``setup`` (the Classifier's are ``compact``): both kinds of naming."""

    width: int = 3
    dtype: Any = jnp.float32

    def setup(self):
        self.stem = Stage(self.width, strides=1, dtype=self.dtype)
        self.stage1 = Stage(2 * self.width, dtype=self.dtype)
        self.stage2 = Stage(3 * self.width, dtype=self.dtype)

    def __call__(self, x, train: bool = False):
        return self.stage2(self.stage1(self.stem(x, train), train), train)


class Classifier(nn.Module):
    num_classes: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = Backbone(dtype=self.dtype, name="backbone")(x, train)
        pooled = features.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.dtype, name="head")(
            pooled
        )


class SharedDense(nn.Module):
    """``shared`` (one nn.Dense) runs twice per call, ``other`` once."""

    dtype: Any = jnp.float32

    def setup(self):
        self.shared = nn.Dense(5, dtype=self.dtype, param_dtype=self.dtype)
        self.other = nn.Dense(5, dtype=self.dtype, param_dtype=self.dtype)

    def __call__(self, x):
        return self.shared(jnp.tanh(self.other(jnp.tanh(self.shared(x)))))


class Quantizer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return jnp.argmax(x, axis=-1)  # an integer array: not differentiable


class WithIntegerTap(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, name="proj")(x)
        idx = Quantizer(name="quant")(h)
        return h * jax.nn.one_hot(idx, 4)


# ----------------------------------------------------------------------------- NNX model


class Block(nnx.Module):
    def __init__(self, cin, cout, *, strides, rngs, dtype=jnp.float32):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.conv = nnx.Conv(cin, cout, (3, 3), strides=strides, use_bias=False, **kw)
        self.bn = nnx.BatchNorm(cout, **kw)

    def __call__(self, x):
        return nnx.relu(self.bn(self.conv(x)))


class Net(nnx.Module):
    def __init__(self, rngs, dtype=jnp.float32):
        kw = dict(dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.stem = nnx.Conv(1, 3, (3, 3), **kw)
        self.blocks = nnx.List(
            [
                Block(3, 4, strides=2, rngs=rngs, dtype=dtype),
                Block(4, 5, strides=2, rngs=rngs, dtype=dtype),
            ]
        )
        self.unused = nnx.Linear(2, 2, **kw)  # a submodule that never runs
        self.head = nnx.Linear(5, 3, **kw)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))


class IntHead(nnx.Module):
    def __call__(self, x):
        return jnp.argmax(x, axis=-1)


class NetWithIntTap(nnx.Module):
    def __init__(self, rngs):
        self.proj = nnx.Linear(3, 4, rngs=rngs)
        self.quant = IntHead()

    def __call__(self, x):
        h = self.proj(x)
        return h * jax.nn.one_hot(self.quant(h), 4)


def nnx_forward(model: Net, x, offsets=None):
    """Net.__call__ written out by hand, with ``offsets`` added at the block outputs; returns
    (logits, {tap: block output before its offset})."""
    offsets = offsets or {}
    h = nnx.relu(model.stem(x))
    a0 = model.blocks[0](h)
    a1 = model.blocks[1](a0 + offsets.get("blocks/0", 0.0))
    logits = model.head((a1 + offsets.get("blocks/1", 0.0)).mean(axis=(1, 2)))
    return logits, {"blocks/0": a0, "blocks/1": a1}


# ----------------------------------------------------------------------------- references


def loss_fn(logits, labels):
    """Summed softmax cross-entropy (a scalar; a sum over examples, so per-shard sums add up)."""
    return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))


def _module_path(module) -> tuple[str, ...]:
    """The names from the root to ``module`` along its ``parent`` chain (not ``Module.path``)."""
    names = []
    while isinstance(module.parent, nn.Module):  # the root's parent is not a module
        names.append(module.name)
        module = module.parent
    return tuple(reversed(names))


def inject(offsets: dict[str, Any]):
    """A Linen interceptor adding ``offsets[path]`` to the ``__call__`` output at ``path``."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            key = "/".join(_module_path(context.module))
            if key in offsets:
                return out + offsets[key]
        return out

    return interceptor


def assert_directional_derivatives(loss_at, tap_grads, shapes, seed=0, eps=1e-5, rtol=1e-6):
    """<dL/dA, V> == (L(A + eps V) - L(A - eps V)) / (2 eps) for random V at every tap.

    ``loss_at(offsets)`` gets an offset for every tap (zero at all but the one probed): one
    compile of a jitted ``loss_at``.
    """
    rng = np.random.default_rng(seed)
    for name, shape in shapes.items():
        v = rng.normal(size=shape)
        zero = {k: np.zeros(s) for k, s in shapes.items()}
        plus = float(loss_at({**zero, name: eps * v}))
        minus = float(loss_at({**zero, name: -eps * v}))
        fd = (plus - minus) / (2 * eps)
        ad = float(np.sum(np.asarray(tap_grads[name], np.float64) * v))
        assert abs(fd) > 1e-6, (name, fd)  # a meaningful (non-zero) derivative
        np.testing.assert_allclose(ad, fd, rtol=rtol, err_msg=name)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _data(batch=4, size=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, size, size, 1)).astype(dtype)
    y = rng.integers(0, 3, size=(batch,)).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@jax.jit(static_argnums=0)
def _init_jit(model, key, x):
    return model.init(key, x)


def _linen_init(dtype=jnp.float32, seed=0, size=8):
    model = Classifier(dtype=dtype)
    variables = _init_jit(model, jax.random.key(seed), jnp.zeros((1, size, size, 1), dtype))
    # Non-trivial running statistics (eval mode must use them, not the batch's).
    rng = np.random.default_rng(seed + 100)

    def stat(path, s):
        if jax.tree_util.keystr(path).endswith("['mean']"):
            return jnp.asarray(rng.normal(scale=0.1, size=s.shape), dtype)
        return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), dtype)

    stats = jax.tree_util.tree_map_with_path(stat, variables["batch_stats"])
    return model, {"params": variables["params"], "batch_stats": stats}


def _linen_taps(model, variables, x, y, train, tap_spec=LINEN_TAPS):
    """taps.vjp of the Classifier; returns (logits, acts, tap grads, param grads, updates)."""

    def fun(params, x):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        if train:
            return model.apply(v, x, train=True, mutable=["batch_stats"])
        return model.apply(v, x), {}

    out, vjp_fn, acts, updates = taps.vjp(fun, variables["params"], x, taps=tap_spec, has_aux=True)
    ct = jax.grad(loss_fn)(out, y)
    param_grads, _, tap_grads = vjp_fn(ct)
    return out, acts, tap_grads, param_grads, updates


# One compile per (model, mode, taps): eager dispatch of every op costs more than compiling here.
linen_taps_jit = jax.jit(_linen_taps, static_argnums=(0, 4, 5))


@jax.jit(static_argnums=(0, 3))
def linen_reference(model, variables, x, train):
    """Plain apply with every submodule's output captured (flax's capture_intermediates)."""
    return model.apply(
        variables,
        x,
        train=train,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )


# ----------------------------------------------------------------------------- Linen


def test_linen_activations_equal_capture_intermediates():
    """Train mode through taps.vjp (BatchNorm on batch statistics, updates returned as aux), eval
    mode through taps.activations (and through taps.vjp in the LayerCAM test)."""
    model, variables = _linen_init()
    x, y = _data()
    out, acts, _, _, updates = linen_taps_jit(model, variables, x, y, True)
    ref, state = linen_reference(model, variables, x, True)
    inter = state["intermediates"]["backbone"]
    assert set(acts) == set(LINEN_TAPS)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acts["backbone/stage1"], inter["stage1"]["__call__"][0], atol=1e-6)
    np.testing.assert_allclose(acts["backbone/stage2"], inter["stage2"]["__call__"][0], atol=1e-6)
    assert {k: a.shape for k, a in acts.items()} == LINEN_TAP_SHAPES
    # The BatchNorm updates are the plain call's (and differ from the running statistics).
    _assert_trees_close(updates["batch_stats"], state["batch_stats"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(
        updates["batch_stats"]["backbone"]["stage1"]["norm"]["mean"],
        variables["batch_stats"]["backbone"]["stage1"]["norm"]["mean"],
    )

    # taps.activations: the same activations without differentiation; a mapping names them.
    out2, acts2 = jax.jit(
        lambda v, x: taps.activations(
            lambda v, x: model.apply(v, x, train=False),
            v,
            x,
            taps={"early": "backbone/stage1", "late": ("backbone", "stage2")},
        )
    )(variables, x)
    ref2, st2 = linen_reference(model, variables, x, False)
    inter2 = st2["intermediates"]["backbone"]
    np.testing.assert_allclose(out2, ref2, atol=1e-6)
    np.testing.assert_allclose(acts2["early"], inter2["stage1"]["__call__"][0], atol=1e-6)
    np.testing.assert_allclose(acts2["late"], inter2["stage2"]["__call__"][0], atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_linen_tap_gradients_equal_finite_differences_float64(train):
    with jax.enable_x64(True):
        model, variables = _linen_init(dtype=jnp.float64)
        x, y = _data(dtype=np.float64)
        _, acts, tap_grads, _, _ = linen_taps_jit(model, variables, x, y, train)
        assert all(g.dtype == jnp.float64 for g in tap_grads.values())

        @jax.jit
        def loss_at(offsets):
            with nn.intercept_methods(inject(offsets)):
                out = model.apply(variables, x, train=train, mutable=["batch_stats"])[0]
            return loss_fn(out, y)

        assert_directional_derivatives(loss_at, tap_grads, {k: a.shape for k, a in acts.items()})


def test_linen_param_gradients_equal_plain_grad():
    model, variables = _linen_init()
    x, y = _data()
    _, _, _, param_grads, _ = linen_taps_jit(model, variables, x, y, True)

    @jax.jit
    def plain(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        return loss_fn(model.apply(v, x, train=True, mutable=["batch_stats"])[0], y)

    ref = jax.jit(jax.grad(plain))(variables["params"])
    assert jax.tree.structure(param_grads) == jax.tree.structure(ref)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), param_grads, ref
    )


def test_linen_shared_model_unshared_tap():
    """The unshared submodule of a model with a shared one: activation and gradient."""
    model = SharedDense()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5)), jnp.float32)
    variables = model.init(jax.random.key(1), x)
    out, vjp_fn, acts = taps.vjp(lambda v: model.apply(v, x), variables, taps="other")
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    np.testing.assert_allclose(acts["other"], state["intermediates"]["other"]["__call__"][0])
    # The shared module's both outputs are recorded by capture_intermediates: it ran twice.
    assert len(state["intermediates"]["shared"]["__call__"]) == 2
    _, tap_grads = vjp_fn(jnp.ones_like(out))
    # out = shared(tanh(other_out)): dL/d other_out = (1 - tanh^2) * (ones @ W_shared^T).
    w = variables["params"]["shared"]["kernel"]
    ref = (1 - np.tanh(acts["other"]) ** 2) * (np.ones((2, 5)) @ np.asarray(w).T)
    np.testing.assert_allclose(tap_grads["other"], ref, rtol=1e-5, atol=1e-6)

    @jax.jit
    def jitted(v):
        out, vjp_fn, acts = taps.vjp(lambda v: model.apply(v, x), v, taps="other")
        return out, acts, vjp_fn(jnp.ones_like(out))

    _assert_trees_close(jitted(variables), (out, acts, vjp_fn(jnp.ones_like(out))))


def test_layercam_from_taps_equals_numpy():
    """Eval mode: the activations are capture_intermediates' and LayerCAM of them and of their
    gradients is relu(sum_c relu(g) * a) computed in NumPy."""
    model, variables = _linen_init()
    x, y = _data()
    _, acts, tap_grads, _, _ = linen_taps_jit(model, variables, x, y, False)
    inter = linen_reference(model, variables, x, False)[1]["intermediates"]["backbone"]
    for name in LINEN_TAPS:
        np.testing.assert_allclose(acts[name], inter[name[-6:]]["__call__"][0], atol=1e-6)
        a = np.asarray(acts[name], np.float64)
        g = np.asarray(tap_grads[name], np.float64)
        ref = np.maximum((np.maximum(g, 0) * a).sum(-1), 0)
        got = layercam(acts[name], tap_grads[name])
        assert got.shape == a.shape[:3]
        assert np.any(ref > 0)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def _linen_outputs(variables, x, y):
    model = Classifier()
    _, acts, tap_grads, param_grads, _ = _linen_taps(model, variables, x, y, train=False)
    return acts, tap_grads, param_grads


def test_linen_under_vmap_over_two_parameter_sets():
    """vmap over two Classifiers' stacked variables = each one on its own. (Under jit: the tests
    above run taps.vjp jitted against their references; eager vs jit: the SharedDense test.)"""
    model, v0 = _linen_init(seed=0)
    _, v1 = _linen_init(seed=1)
    x, y = _data()
    single = [linen_taps_jit(model, v, x, y, False)[1:4] for v in (v0, v1)]

    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), v0, v1)
    batched = jax.jit(jax.vmap(_linen_outputs, in_axes=(0, None, None)))(stacked, x, y)
    _assert_trees_close(jax.tree.map(lambda t: t[0], batched), single[0])
    _assert_trees_close(jax.tree.map(lambda t: t[1], batched), single[1])
    # The two parameter sets give different tap gradients (vmap did not broadcast one).
    assert not np.allclose(batched[1]["backbone/stage1"][0], batched[1]["backbone/stage1"][1])


def test_linen_grad_through_tap_gradients():
    """jax.grad of a function of the tap gradients (second order) equals the same through tap
    gradients taken by jax.grad w.r.t. offsets added by this file's interceptor."""
    model, variables = _linen_init()
    x, y = _data()

    def objective(tap_grads):
        return sum(jnp.sum(g**2) for g in tap_grads.values())

    def with_taps(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}
        return objective(linen_taps_jit(model, v, x, y, False)[2])

    def by_injection(params):
        v = {"params": params, "batch_stats": variables["batch_stats"]}

        def loss_at(offsets):
            with nn.intercept_methods(inject(offsets)):
                return loss_fn(model.apply(v, x), y)

        zeros = {k: jnp.zeros(shape) for k, shape in LINEN_TAP_SHAPES.items()}
        return objective(jax.grad(loss_at)(zeros))

    got = jax.jit(jax.grad(with_taps))(variables["params"])
    ref = jax.jit(jax.grad(by_injection))(variables["params"])
    _assert_trees_close(got, ref, rtol=1e-4, atol=1e-6)


def test_only_tap_gradients_need_no_backward_convolutions():
    """The gradient at the deepest tap (stage2 -> pool -> head) needs no convolution backward:
    the compiled function has the forward's three convolutions only."""
    model, variables = _linen_init()
    x, y = _data()

    def tap_grad_only(variables, x, y):
        fun = lambda p, x: model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x)  # noqa: E731
        out, vjp_fn, _ = taps.vjp(fun, variables["params"], x, taps="backbone/stage2")
        return vjp_fn(jax.grad(loss_fn)(out, y))[-1]

    def all_grads(variables, x, y):
        return _linen_outputs(variables, x, y)

    def n_convs(f):
        hlo = jax.jit(f).lower(variables, x, y).compile().as_text()
        return hlo.count(" convolution(")

    assert n_convs(tap_grad_only) == 3
    assert n_convs(all_grads) > 3


# ----------------------------------------------------------------------------- NNX


def _nnx_model(dtype=jnp.float32, seed=0, train=True):
    model = Net(nnx.Rngs(seed), dtype=dtype)
    rng = np.random.default_rng(seed + 7)
    for block in model.blocks:  # non-trivial running statistics, in the model's dtype
        mean, var = block.bn.mean, block.bn.var  # (nnx.BatchNorm makes them float32)
        mean.set_value(jnp.asarray(rng.normal(scale=0.1, size=mean.shape), dtype))
        var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, var.shape), dtype))
    model.train() if train else model.eval()
    return model


def _nnx_taps(model, x, y):
    out, vjp_fn, acts = taps.vjp(lambda m, x: m(x), model, x, taps=NNX_TAPS)
    model_grads, _, tap_grads = vjp_fn(jax.grad(loss_fn)(out, y))
    return out, acts, tap_grads, model_grads


nnx_taps_jit = nnx.jit(_nnx_taps)


@jax.jit(static_argnums=0)
def _nnx_forward_jit(graphdef, state, x, offsets):
    return nnx_forward(nnx.merge(graphdef, state), x, offsets)


def nnx_reference(model):
    """``(x, offsets=None) -> (logits, activations)`` of ``nnx_forward`` on a copy of ``model`` as
    it is now (jitted; every call starts from that state)."""
    graphdef, state = nnx.split(nnx.clone(model))  # split's Variables are the model's own
    return lambda x, offsets=None: _nnx_forward_jit(graphdef, state, x, offsets)


def test_nnx_activations_equal_hand_written_forward():
    """Train mode through taps.vjp (jitted), eval mode through taps.activations (eager)."""
    model = _nnx_model(train=True)
    ref_model, plain_model = nnx.clone(model), nnx.clone(model)
    x, y = _data()
    out, acts, _, _ = nnx_taps_jit(model, x, y)
    ref_out, ref_acts = nnx_reference(ref_model)(x)
    np.testing.assert_allclose(ref_out, plain_model(x), atol=1e-6)  # the hand forward is Net's
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    assert set(acts) == set(NNX_TAPS)
    for name in NNX_TAPS:
        np.testing.assert_allclose(acts[name], ref_acts[name], atol=1e-6, err_msg=name)

    # taps.activations (eager, eval mode): integer path parts, a mapping of names.
    ref_model.eval()
    act_model = nnx.clone(ref_model)
    out2, acts2 = taps.activations(
        lambda m, x: m(x), act_model, x, taps={"first": ("blocks", 0), "second": "blocks/1"}
    )
    ref_out2, ref_acts2 = nnx_reference(ref_model)(x)
    np.testing.assert_allclose(out2, ref_out2, atol=1e-6)
    np.testing.assert_allclose(acts2["first"], ref_acts2["blocks/0"], atol=1e-6)
    np.testing.assert_allclose(acts2["second"], ref_acts2["blocks/1"], atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_nnx_tap_gradients_equal_finite_differences_float64(train):
    with jax.enable_x64(True):
        model = _nnx_model(dtype=jnp.float64, train=train)
        forward = nnx_reference(model)  # the state before the call, for every evaluation
        x, y = _data(dtype=np.float64)
        _, acts, tap_grads, _ = nnx_taps_jit(model, x, y)
        assert all(g.dtype == jnp.float64 for g in tap_grads.values())

        def loss_at(offsets):
            return loss_fn(forward(x, offsets)[0], y)

        assert_directional_derivatives(loss_at, tap_grads, {k: a.shape for k, a in acts.items()})


def test_nnx_param_gradients_equal_nnx_grad():
    model = _nnx_model(train=True)
    ref_model = nnx.clone(model)
    x, y = _data()
    _, _, _, model_grads = nnx_taps_jit(model, x, y)
    ref = nnx.jit(nnx.grad(lambda m: loss_fn(m(x), y)))(ref_model)
    assert isinstance(model_grads, nnx.State)
    _assert_trees_close(nnx.to_pure_dict(model_grads), nnx.to_pure_dict(ref))
    assert set(nnx.to_pure_dict(model_grads)) == {"stem", "blocks", "unused", "head"}


def test_nnx_grad_through_tap_gradients():
    """nnx.grad of a function of the tap gradients (second order) equals jax.grad of the same
    through tap gradients of the hand-written forward w.r.t. its offsets."""
    model = _nnx_model(train=False)
    x, y = _data()

    def objective(tap_grads):
        return sum(jnp.sum(g**2) for g in tap_grads.values())

    got = nnx.jit(nnx.grad(lambda m: objective(_nnx_taps(m, x, y)[2])))(nnx.clone(model))

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def by_hand(params):
        forward = lambda off: nnx_forward(nnx.merge(graphdef, params, rest), x, off)  # noqa: E731
        zeros = jax.tree.map(jnp.zeros_like, forward(None)[1])
        return objective(jax.grad(lambda off: loss_fn(forward(off)[0], y))(zeros))

    ref = jax.jit(jax.grad(by_hand))(params)
    _assert_trees_close(nnx.to_pure_dict(got), nnx.to_pure_dict(ref), rtol=1e-4, atol=1e-6)


def test_nnx_model_classes_and_batch_stats():
    """The user's objects keep their classes, the classes keep their methods, and the running
    statistics move exactly as in a plain train-mode call; parameters are untouched."""
    block_call, net_call, bn_call = Block.__call__, Net.__call__, nnx.BatchNorm.__call__
    model = _nnx_model(train=True)
    plain = nnx.clone(model)
    params_before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x, y = _data()

    _nnx_taps(model, x, y)
    plain(x)

    assert type(model) is Net
    assert type(model.blocks[0]) is Block and type(model.blocks[1]) is Block
    assert type(model.blocks[0].bn) is nnx.BatchNorm
    assert Block.__call__ is block_call and Net.__call__ is net_call
    assert nnx.BatchNorm.__call__ is bn_call
    assert "__call__" in Block.__dict__ and Block.__dict__["__call__"] is block_call
    stats, ref_stats = nnx.state(model, nnx.BatchStat), nnx.state(plain, nnx.BatchStat)
    _assert_trees_close(nnx.to_pure_dict(stats), nnx.to_pure_dict(ref_stats), rtol=1e-6, atol=1e-7)
    before_bn = _nnx_model(train=True).blocks[0].bn.mean[...]  # same seed: pre-call statistics
    assert not np.allclose(model.blocks[0].bn.mean[...], before_bn)  # they did move
    _assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params_before, 0, 0)

    # Eval mode: nothing moves.
    model.eval()
    frozen = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    _nnx_taps(model, x, y)
    _assert_trees_close(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), frozen, 0, 0)

    # A second call in train mode on both: still in step (the write-back is usable state).
    model.train()
    _nnx_taps(model, x, y)
    _nnx_taps(model, x, y)
    plain(x)
    plain(x)
    _assert_trees_close(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
        nnx.to_pure_dict(nnx.state(plain, nnx.BatchStat)),
        rtol=1e-6,
        atol=1e-7,
    )


def test_nnx_under_jit_and_vmap():
    x, y = _data()
    model = _nnx_model(train=True)
    eager_model, plain = nnx.clone(model), nnx.clone(model)
    _, e_acts, e_taps, e_grads = _nnx_taps(eager_model, x, y)

    @nnx.jit
    def step(m, x, y):
        _, acts, tap_grads, grads = _nnx_taps(m, x, y)
        return acts, tap_grads, grads

    acts, tap_grads, grads = step(model, x, y)
    _assert_trees_close(acts, e_acts)
    _assert_trees_close(tap_grads, e_taps)
    _assert_trees_close(nnx.to_pure_dict(grads), nnx.to_pure_dict(e_grads))
    plain(x)  # nnx.jit carries the written-back statistics out
    _assert_trees_close(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
        nnx.to_pure_dict(nnx.state(plain, nnx.BatchStat)),
        rtol=1e-6,
        atol=1e-7,
    )

    # jax.vmap over two models' states (split / merge inside).
    m0, m1 = _nnx_model(seed=0, train=False), _nnx_model(seed=1, train=False)
    graphdef, s0 = nnx.split(m0)
    _, s1 = nnx.split(m1)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)

    def per_model(state):
        _, acts, tap_grads, _ = _nnx_taps(nnx.merge(graphdef, state), x, y)
        return acts, tap_grads

    batched = jax.jit(jax.vmap(per_model))(stacked)
    for i, m in enumerate((m0, m1)):
        _, r_acts, r_taps, _ = _nnx_taps(nnx.clone(m), x, y)
        _assert_trees_close(jax.tree.map(lambda t: t[i], batched), (r_acts, r_taps))


def test_nnx_dropout_rng_state_advances_like_a_plain_call():
    class Drop(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.out = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.out(self.drop(self.lin(x)))

    model = Drop(nnx.Rngs(0, dropout=1))
    plain = nnx.clone(model)
    x = jnp.ones((3, 4))
    out, _, acts = taps.vjp(lambda m, x: m(x), model, x, taps="drop")
    ref = plain(x)
    np.testing.assert_allclose(out, ref, atol=1e-6)  # the same dropout mask
    out2, _, _ = taps.vjp(lambda m, x: m(x), model, x, taps="drop")
    ref2 = plain(x)
    np.testing.assert_allclose(out2, ref2, atol=1e-6)  # the RNG advanced once per call
    assert not np.allclose(out, out2)


# ----------------------------------------------------------------------------- errors


def test_linen_errors():
    model, variables = _linen_init()
    x, y = _data()
    with pytest.raises(
        ValueError, match=r"backbone/stage9.*submodules that ran: \[.*backbone/stage1"
    ):
        _linen_taps(model, variables, x, y, train=False, tap_spec=["backbone/stage9"])
    with pytest.raises(ValueError, match=r"'backbone/stage1'.*'backbone/stage1/conv'"):
        _linen_taps(model, variables, x, y, train=False, tap_spec="nope")

    shared = SharedDense()
    xs = jnp.ones((2, 5))
    v = shared.init(jax.random.key(0), xs)
    with pytest.raises(ValueError, match="ran 2 times"):
        taps.vjp(lambda v: shared.apply(v, xs), v, taps="shared")
    with pytest.raises(ValueError, match="ran 2 times"):
        taps.activations(lambda v: shared.apply(v, xs), v, taps=["other", "shared"])

    quant = WithIntegerTap()
    vq = quant.init(jax.random.key(0), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"'quant'.*floating-point.*int32\[2\]"):
        taps.vjp(lambda v: quant.apply(v, jnp.ones((2, 3))), vq, taps="quant")


@pytest.mark.parametrize(
    "bad, match",
    [
        (3, "taps must be a path"),
        (None, "taps must be a path"),
        ([], "at least one"),
        ({}, "at least one"),
        ("", "non-empty"),
        ("///", "non-empty"),
        ([3.5], "non-empty"),
        ([("a", 1.0)], "non-empty"),
        ({"x": None}, "non-empty"),
        ({"x": "a/b", "y": "a//b"}, "more than once"),
    ],
)
def test_bad_taps_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        taps.normalize_taps(bad)
    model, variables = _linen_init()
    with pytest.raises(ValueError, match=match):
        taps.vjp(lambda v: model.apply(v, jnp.ones((1, 8, 8, 1))), variables, taps=bad)


def test_normalize_taps_forms():
    assert taps.normalize_taps("a/b") == {"a/b": ("a", "b")}
    assert taps.normalize_taps(["a", ("b", 0)]) == {"a": ("a",), "b/0": ("b", "0")}
    assert taps.normalize_taps({"x": "/a/b/"}) == {"x": ("a", "b")}
    # The same path twice is an error, in a sequence as under two names.
    with pytest.raises(ValueError, match="same submodule more than once"):
        taps.normalize_taps(["a/b", ("a", "b")])

    # for_model: names from the model's tap_paths mapping, anything else taken as a path.
    class Named(Classifier):
        tap_paths = {"early": "backbone/stage1"}

    assert taps.for_model(Named(), ["early", "backbone/stage2"]) == {
        "early": ("backbone", "stage1"),
        "backbone/stage2": ("backbone", "stage2"),
    }
    assert taps.for_model(Classifier(), "head") == {"head": ("head",)}
    with pytest.raises(ValueError, match="more than once"):
        taps.for_model(Named(), ["early", "backbone/stage1"])


def test_nnx_errors():
    model = _nnx_model(train=False)
    x, y = _data()
    other = _nnx_model(seed=1, train=False)
    # Two modules: the tap paths are relative to the first (tests/test_taps_nnx_state.py).
    with pytest.raises(ValueError, match=r"'blocks/5'.*first of the 2 nnx.Module among the prim"):
        taps.vjp(lambda a, b, x: a(x) + b(x), model, other, x, taps="blocks/5")
    with pytest.raises(ValueError, match=r"'blocks/5'.*its submodules: \[.*'blocks/0'.*'stem'"):
        taps.vjp(lambda m, x: m(x), model, x, taps="blocks/5")
    with pytest.raises(ValueError, match=r"'blocks/0/nope'.*'blocks/0/bn'"):
        taps.activations(lambda m, x: m(x), model, x, taps="blocks/0/nope")
    with pytest.raises(ValueError, match=r"'head/kernel'.*its submodules"):  # a Param, no module
        taps.vjp(lambda m, x: m(x), model, x, taps="head/kernel")
    with pytest.raises(ValueError, match=r"'unused'.*matched no NNX submodule whose __call__ ran"):
        taps.vjp(lambda m, x: m(x), model, x, taps="unused")

    class Twice(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return self.lin(self.lin(x))

    twice = Twice(nnx.Rngs(0))
    with pytest.raises(ValueError, match="ran 2 times"):
        taps.vjp(lambda m, x: m(x), twice, jnp.ones((1, 3)), taps="lin")
    assert type(twice.lin) is nnx.Linear  # an error leaves the user's model as it was

    int_model = NetWithIntTap(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"'quant'.*floating-point"):
        taps.vjp(lambda m, x: m(x), int_model, jnp.ones((2, 3)), taps="quant")
    assert type(int_model.quant) is IntHead


# ----------------------------------------------------------------------------- shard_map


def _varying(x) -> frozenset:
    """The mesh axes ``x`` varies over inside shard_map (its type's manual axes)."""
    return jax.typeof(x).manual_axis_type.varying


def test_shard_map_tap_gradient_varies_like_its_activation():
    """In-process (one device): inside shard_map the tap gradient of a batch-sharded activation
    must vary over 'data' like the activation (on 4 devices an invariant one is the shards' sum)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    model = SharedDense()
    x = jnp.ones((2, 5))
    variables = model.init(jax.random.key(0), x)
    seen = {}

    def per_shard(variables, x):
        out, vjp_fn, acts = taps.vjp(lambda v, x: model.apply(v, x), variables, x, taps="other")
        param_ct, x_ct, tap_cts = vjp_fn(jnp.ones_like(out))
        seen.update(
            act=_varying(acts["other"]), x_ct=_varying(x_ct), tap=_varying(tap_cts["other"])
        )
        return tap_cts["other"]

    mesh = jax.make_mesh((1,), ("data",))
    smap = jax.shard_map(per_shard, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    jax.jit(smap).trace(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    assert seen["act"] == seen["x_ct"] == {"data"}  # the input's cotangent does vary
    assert seen["tap"] == seen["act"]


@pytest.fixture(scope="module")
def shard_map_results(run_on_fake_devices):
    """tests/taps_multidevice_check.py's JSON: taps.vjp inside jax.shard_map (batch over 'data',
    4 fake CPU devices, train-mode BatchNorm: per-shard statistics) and the same function on one
    device on each shard's slice, for the Linen Classifier and the NNX Net."""
    result = run_on_fake_devices("taps_multidevice_check.py", 4, timeout=300)
    assert result.pop("devices") == 4
    return result


def _assert_shard_map_matches(results, kind, group):
    sharded, single = results[kind][group]["shard_map"], results[kind][group]["per_slice"]
    assert sharded and sharded.keys() == single.keys()
    for key in sharded:
        np.testing.assert_allclose(
            np.asarray(sharded[key]), np.asarray(single[key]), rtol=1e-5, atol=1e-6,
            err_msg=f"{kind} {group}: {key}",
        )  # fmt: skip


@pytest.mark.slow  # a subprocess: JAX start-up and six compiles, ~15 s of CPU
@pytest.mark.parametrize(
    "kind, group",
    [
        ("linen", "activations"),
        ("linen", "param_grads"),
        ("nnx", "activations"),
        ("nnx", "param_grads"),
        ("nnx", "batch_stats"),
        ("linen_check_vma_off", "activations"),
        ("linen_check_vma_off", "tap_grads"),
        ("linen_check_vma_off", "param_grads"),
    ],
)
def test_shard_map_equals_per_shard_single_device(shard_map_results, kind, group):
    """Each shard's activations equal the single-device ones of its slice; the psum of the
    shards' parameter gradients (and written-back NNX statistics) equals the slices' sum; with
    check_vma=False the shards' tap gradients are their slices' too."""
    _assert_shard_map_matches(shard_map_results, kind, group)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_shard_map_tap_gradients_are_per_shard(shard_map_results, kind):
    _assert_shard_map_matches(shard_map_results, kind, "tap_grads")


def test_nnx_one_instance_at_two_paths_is_named():
    class Aliased(nnx.Module):
        def __init__(self, rngs):
            self.p = nnx.Linear(2, 2, rngs=rngs)
            self.q = self.p

        def __call__(self, x):
            return self.q(self.p(x)).sum()

    model = Aliased(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"taps 'p' and 'q' are the same NNX submodule"):
        taps.vjp(lambda m, x: m(x), model, jnp.ones((2, 2)), taps=["p", "q"])
