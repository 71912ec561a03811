"""gradmix_jax.taps with NNX state among the primals: an ``nnx.Rngs`` passed to ``__call__``.

The model (``DropNet``: conv -> BatchNorm -> relu -> Dropout(0.5) -> conv (tapped) -> mean pooling
-> linear, its dropout drawing from the ``rngs`` argument of ``__call__``) is defined here.
References never go through ``taps``: plain calls on clones of the model and rngs started from the
same state, ``nnx.grad`` for the parameter gradients and, for the tap gradient, ``nnx.grad``
w.r.t. a zero offset that a test-only subclass of the tapped conv adds to its output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gradmix_jax import taps

TAP = "conv2"
N, HW, CLASSES = 4, 8, 3


class DropNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(rate=0.5)  # no stream of its own: it draws from __call__'s rngs
        self.conv2 = nnx.Conv(4, 6, (3, 3), rngs=rngs)
        self.head = nnx.Linear(6, CLASSES, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        h = self.drop(nnx.relu(self.bn(self.conv1(x))), rngs=rngs)
        return self.head(self.conv2(h).mean(axis=(1, 2)))


class Offset(nnx.Variable):
    """The reference's additive perturbation of the tapped activation (not an nnx.Param)."""


class OffsetConv(nnx.Conv):
    """conv2 of the reference model: its output plus ``offset`` (zeros), so that ``nnx.grad``
    w.r.t. ``offset`` is dL/dA at conv2's output."""

    def __call__(self, x):
        return super().__call__(x) + self.offset[...]


def loss_fn(logits, y):
    """Mean cross-entropy of logits [N, CLASSES] against integer labels y [N]."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def _data():
    kx, ky = jax.random.split(jax.random.key(3))
    return jax.random.normal(kx, (N, HW, HW, 1)), jax.random.randint(ky, (N,), 0, CLASSES)


def _setup():
    """(model, rngs, plain_model, plain_rngs): the plain pair a clone of the other, same state."""
    model, rngs = DropNet(nnx.Rngs(0)), nnx.Rngs(dropout=1)
    return model, rngs, nnx.clone(model), nnx.clone(rngs)


def _count(rngs) -> int:
    return int(rngs.dropout.count[...])


def _close(a, b, rtol=1e-5, atol=1e-6):
    a, b = (nnx.to_pure_dict(t) if isinstance(t, nnx.State) else t for t in (a, b))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def test_rngs_among_primals_advance_like_plain_calls():
    """Each taps.vjp draws the mask a plain call would, and the next call a new one."""
    model, rngs, plain, plain_rngs = _setup()
    x, _ = _data()
    outs, acts = [], []
    for step in (1, 2):
        out, _, a = taps.vjp(lambda m, r: m(x, r), model, rngs, taps=TAP)
        ref = plain(x, plain_rngs)
        assert _count(rngs) == _count(plain_rngs) == step
        np.testing.assert_allclose(out, ref, atol=1e-6)  # the same dropout mask as the plain call
        outs.append(out)
        acts.append(a[TAP])
    assert acts[0].shape == (N, HW, HW, 6)
    assert not np.allclose(acts[0], acts[1])  # a new mask (train-mode BN: same pre-dropout h)
    assert not np.allclose(outs[0], outs[1])
    assert type(rngs) is nnx.Rngs and type(model.conv2) is nnx.Conv


def test_param_grads_batch_stats_and_rngs_equal_nnx_grad():
    model, rngs, ref, ref_rngs = _setup()
    x, y = _data()
    out, vjp_fn, acts = taps.vjp(lambda m, r: m(x, r), model, rngs, taps=TAP)
    g_model, g_rngs, g_taps = vjp_fn(jax.grad(loss_fn)(out, y))
    ref_grads = nnx.grad(lambda m, r: loss_fn(m(x, r), y))(ref, ref_rngs)

    assert isinstance(g_model, nnx.State)
    _close(g_model, ref_grads)
    assert set(nnx.to_pure_dict(g_model)) == {"conv1", "bn", "conv2", "head"}
    # The rngs hold no nnx.Param: their cotangent is an empty state.
    assert isinstance(g_rngs, nnx.State) and jax.tree.leaves(g_rngs) == []
    assert set(g_taps) == {TAP} and g_taps[TAP].shape == acts[TAP].shape
    assert float(jnp.abs(g_taps[TAP]).max()) > 0
    # The written-back state: BatchNorm statistics (moved) and RNG counts as after nnx.grad.
    _close(nnx.state(model, nnx.BatchStat), nnx.state(ref, nnx.BatchStat), rtol=1e-6, atol=1e-7)
    assert not np.allclose(model.bn.mean[...], DropNet(nnx.Rngs(0)).bn.mean[...])
    assert _count(rngs) == _count(ref_rngs) == 1
    _close(nnx.state(model, nnx.Param), nnx.state(DropNet(nnx.Rngs(0)), nnx.Param), 0, 0)


def test_tap_gradient_equals_nnx_grad_of_an_offset():
    model, rngs, _, _ = _setup()
    ref, ref_rngs = nnx.clone(model), nnx.clone(rngs)
    conv = OffsetConv(4, 6, (3, 3), rngs=nnx.Rngs(9))
    nnx.update(conv, nnx.state(model.conv2))  # conv2's parameters
    conv.offset = Offset(jnp.zeros((N, HW, HW, 6)))
    ref.conv2 = conv
    x, y = _data()

    out, vjp_fn, _ = taps.vjp(lambda m, r: m(x, r), model, rngs, taps=TAP)
    _, _, g_taps = vjp_fn(jax.grad(loss_fn)(out, y))
    wrt_offset = nnx.DiffState(0, Offset)
    g_ref = nnx.grad(lambda m, r: loss_fn(m(x, r), y), argnums=wrt_offset)(ref, ref_rngs)
    np.testing.assert_allclose(g_taps[TAP], g_ref["conv2"]["offset"][...], rtol=1e-5, atol=1e-7)


def test_closed_over_nnx_state_raises_one_clear_error():
    model, rngs, _, _ = _setup()
    x, _ = _data()
    calls = {
        "vjp": lambda: taps.vjp(lambda m: m(x, rngs), model, taps=TAP),
        "under jit": lambda: nnx.jit(lambda m: taps.vjp(lambda m: m(x, rngs), m, taps=TAP))(model),
        # The model itself captured (train-mode BatchNorm statistics): no NNX primal at all.
        "closed-over model": lambda: taps.vjp(lambda x: model(x, nnx.Rngs(5)), x, taps=TAP),
    }
    for what, call in calls.items():
        with pytest.raises(taps.ClosedOverNnxStateError) as info:
            call()
        message = str(info.value)
        assert isinstance(info.value, ValueError), what
        assert "\n" not in message, what
        assert "closed over" in message and "pass it among the primals" in message, what
        assert "taps.vjp(lambda m, r: m(x, r), model, rngs, taps=...)" in message, what
    assert "nnx.Rngs" in str(pytest.raises(taps.ClosedOverNnxStateError, calls["vjp"]).value)
    # Nothing was written: the user's objects are as they were.
    assert _count(rngs) == 0 and type(model.conv2) is nnx.Conv
    _close(nnx.state(model), nnx.state(DropNet(nnx.Rngs(0))), 0, 0)
    # taps.activations traces nothing: eager, a captured rngs is simply used (and advances).
    taps.activations(lambda m, x: m(x, rngs), model, x, taps=TAP)
    assert _count(rngs) == 1


def test_activations_advance_rngs():
    model, rngs, plain, plain_rngs = _setup()
    x, _ = _data()
    out, acts = taps.activations(lambda m, r: m(x, r), model, rngs, taps=TAP)
    np.testing.assert_allclose(out, plain(x, plain_rngs), atol=1e-6)
    assert _count(rngs) == _count(plain_rngs) == 1
    # Nested among the primals (a tuple) they are found too.
    out2, acts2 = taps.activations(lambda mr: mr[0](x, mr[1]), (model, rngs), taps=TAP)
    np.testing.assert_allclose(out2, plain(x, plain_rngs), atol=1e-6)
    assert _count(rngs) == _count(plain_rngs) == 2
    assert not np.allclose(acts[TAP], acts2[TAP])
    _close(nnx.state(model, nnx.BatchStat), nnx.state(plain, nnx.BatchStat), rtol=1e-6, atol=1e-7)


def _step(model, rngs, x, y):
    """A train step's taps: (loss, param grads, tap grads)."""
    out, vjp_fn, _ = taps.vjp(lambda m, r: m(x, r), model, rngs, taps=TAP)
    loss, g_out = jax.value_and_grad(loss_fn)(out, y)
    g_model, _, g_taps = vjp_fn(g_out)
    return loss, g_model, g_taps


def test_under_nnx_jit_and_jax_jit_rngs_advance_across_steps():
    model, rngs, plain, plain_rngs = _setup()
    x, y = _data()
    step = nnx.jit(_step)
    losses = []
    for k in (1, 2):
        loss, g_model, g_taps = step(model, rngs, x, y)
        ref = loss_fn(plain(x, plain_rngs), y)
        assert _count(rngs) == _count(plain_rngs) == k
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        losses.append(float(loss))
    assert losses[0] != losses[1]  # a new dropout mask in the second step
    _close(nnx.state(model, nnx.BatchStat), nnx.state(plain, nnx.BatchStat), rtol=1e-5, atol=1e-6)

    # jax.jit over the split state, merged and split again by hand (the functional NNX style).
    graphdef, state = nnx.split((model, rngs))

    @jax.jit
    def pure_step(state):
        model, rngs = nnx.merge(graphdef, state)
        loss, _, g_taps = _step(model, rngs, x, y)
        return loss, g_taps, nnx.state((model, rngs))

    for k in (3, 4):
        loss, _, state = pure_step(state)
        np.testing.assert_allclose(loss, loss_fn(plain(x, plain_rngs), y), rtol=1e-5)
        assert _count(nnx.merge(graphdef, state)[1]) == _count(plain_rngs) == k


def test_first_module_is_tapped_and_shared_state_is_written_once():
    x, _ = _data()
    model, rngs, plain, plain_rngs = _setup()
    other = DropNet(nnx.Rngs(1))
    plain_other = nnx.clone(other)

    def both(m, o, r):
        return m(x, r) + o(x, r)

    out, vjp_fn, acts = taps.vjp(both, model, other, rngs, taps=TAP)
    # By hand, in the same order: the first module's conv2 output is the activation.
    h = plain.drop(nnx.relu(plain.bn(plain.conv1(x))), rngs=plain_rngs)
    a = plain.conv2(h)
    ref = plain.head(a.mean(axis=(1, 2))) + plain_other(x, plain_rngs)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    np.testing.assert_allclose(acts[TAP], a, atol=1e-6)
    assert _count(rngs) == _count(plain_rngs) == 2
    _close(nnx.state(other, nnx.BatchStat), nnx.state(plain_other, nnx.BatchStat), 1e-6, 1e-7)
    _close(nnx.state(model, nnx.BatchStat), nnx.state(plain, nnx.BatchStat), 1e-6, 1e-7)
    g_model, g_other, g_rngs, _ = vjp_fn(jnp.ones_like(out))
    assert set(nnx.to_pure_dict(g_other)) == {"conv1", "bn", "conv2", "head"}
    assert jax.tree.leaves(g_rngs) == []
    # A path that exists in neither module names which module the paths are relative to.
    with pytest.raises(ValueError, match=r"'nope'.*first of the 2 nnx.Module.*'conv2'"):
        taps.vjp(both, model, other, rngs, taps="nope")

    # An nnx.Rngs the model holds and that is also passed: one object inside, advanced once.
    class Holds(nnx.Module):
        def __init__(self, rngs):
            self.rngs = rngs
            self.lin = nnx.Linear(3, 3, rngs=rngs)
            self.drop = nnx.Dropout(0.5)

        def __call__(self, x, rngs):
            assert rngs is self.rngs
            return self.drop(self.lin(x), rngs=rngs)

    held = nnx.Rngs(0, dropout=2)
    holder = Holds(held)
    xs = jnp.ones((2, 3))
    taps.vjp(lambda m, r: m(xs, r), holder, held, taps="lin")
    assert holder.rngs is held and _count(held) == 1
