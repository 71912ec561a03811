"""The packed on-disk layout: pack/unpack, layout checks, earlier versions' checkpoints,
uncompressed saves, mesh restore, and the train loop writing only checked states."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradmix_jax.training import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))


def _tree():
    # jax.tree.leaves orders dict keys: a, b, c, d, e.
    return {
        "a": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
        "b": jnp.asarray(7, jnp.int32),
        "c": jnp.asarray([1, 2], jnp.uint32),
        "d": jnp.asarray([0.5, 1.5, 2.5, 3.5], jnp.bfloat16),
        "e": jnp.asarray([10.0, 11.0, 12.0, 13.0, 14.0], jnp.float32),
    }


def test_layout_pack_unpack_under_jit():
    tree = _tree()
    # groups sorted by name: bfloat16=0, float32=1, int32=2, uint32=3; per leaf [group, ndim, *shape]
    want_layout = [1, 2, 2, 3, 2, 0, 3, 1, 2, 0, 1, 4, 1, 1, 5]
    np.testing.assert_array_equal(checkpoint.layout_of(tree), want_layout)
    packed = jax.jit(checkpoint.pack)(tree)
    assert sorted(packed) == ["data_bfloat16", "data_float32", "data_int32", "data_uint32"]
    np.testing.assert_array_equal(packed["data_float32"], [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(packed["data_int32"], [7])
    np.testing.assert_array_equal(packed["data_uint32"], [1, 2])
    assert packed["data_bfloat16"].dtype == jnp.bfloat16
    back = jax.jit(lambda p: checkpoint.unpack(p, tree))(packed)
    for k in tree:
        assert back[k].shape == tree[k].shape and back[k].dtype == tree[k].dtype
        np.testing.assert_array_equal(
            np.asarray(back[k], np.float64), np.asarray(tree[k], np.float64)
        )


def test_save_restore_and_refusals(tmp_path):
    tree = _tree()
    manager = checkpoint.make_manager(str(tmp_path / "packed"))
    checkpoint.save(manager, 4, tree)
    manager.wait_until_finished()
    manager.close()
    manager = checkpoint.make_manager(str(tmp_path / "packed"))  # as a new process opens it
    saved = manager.item_metadata(4).tree
    assert sorted(saved) == ["data_bfloat16", "data_float32", "data_int32", "data_uint32", "layout"]
    template = jax.tree.map(jnp.zeros_like, tree)
    got = checkpoint.restore_latest(manager, template)
    for k in tree:
        np.testing.assert_array_equal(
            np.asarray(got[k], np.float64), np.asarray(tree[k], np.float64)
        )
    # Same element counts per dtype, other shapes: refused by the layout check, not scrambled.
    swapped = dict(template, a=jnp.zeros((3, 2), jnp.float32))
    with pytest.raises(checkpoint.CheckpointError, match="step 4 .* does not match"):
        checkpoint.restore_latest(manager, swapped)
    # Another size: refused before any array is read.
    bigger = dict(template, e=jnp.zeros((6,), jnp.float32))
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.restore_latest(manager, bigger)


def _earlier_versions_manager(workdir):
    # make_manager as it was before uncompressed saves: StandardCheckpointHandler, zstd.
    ocp = checkpoint.ocp
    return ocp.CheckpointManager(
        str(workdir / "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=True),
        item_handlers=ocp.StandardCheckpointHandler(),
    )


@pytest.mark.parametrize("packed", [False, True])
def test_checkpoints_of_earlier_versions_restore(tmp_path, packed):
    tree = _tree()
    manager = _earlier_versions_manager(tmp_path)
    saved = (
        {checkpoint.LAYOUT_KEY: checkpoint.layout_of(tree), **checkpoint.pack(tree)}
        if packed
        else tree
    )  # packed, or the unpacked pytree of the first versions
    manager.save(2, args=checkpoint.ocp.args.StandardSave(saved))
    manager.wait_until_finished()
    manager.close()
    manager = checkpoint.make_manager(str(tmp_path))
    got = checkpoint.restore_latest(manager, jax.tree.map(jnp.zeros_like, tree))
    for k in tree:
        np.testing.assert_array_equal(
            np.asarray(got[k], np.float64), np.asarray(tree[k], np.float64)
        )
    assert int(got["b"]) == 7


def test_saves_are_uncompressed(tmp_path):
    # The packed float32 array's bytes are on disk as they are (no zstd): random floats barely
    # compress, so the test compares sizes against what the earlier (zstd) manager writes.
    big = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(1 << 20,)), jnp.float32)}
    now = checkpoint.make_manager(str(tmp_path / "now"))
    checkpoint.save(now, 1, big)
    zstd = _earlier_versions_manager(tmp_path / "zstd")
    zstd.save(1, args=checkpoint.ocp.args.StandardSave(checkpoint.pack(big)))
    now.wait_until_finished()
    zstd.wait_until_finished()
    sizes = {
        name: sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / name) for f in fs
        )
        for name in ("now", "zstd")
    }
    assert sizes["now"] >= 4 * (1 << 20)  # every float32 byte written
    assert sizes["zstd"] < 0.97 * sizes["now"]


_MESH_CHECK = r"""
import sys, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from gradmix_jax.training import checkpoint
mesh = Mesh(np.array(jax.devices()), ("data",))
repl = NamedSharding(mesh, P())
state = {"w": jax.device_put(jnp.arange(12.0).reshape(3, 4), repl),
         "step": jax.device_put(jnp.asarray(5, jnp.int32), repl)}
saver = checkpoint.BackgroundSaver(checkpoint.make_manager(sys.argv[1]), state)
saver.save(5, state)
saver.wait_until_finished()
target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), state)
got = checkpoint.restore_latest(saver.manager, target)
assert len(jax.devices()) == 4
assert all(x.sharding == repl for x in jax.tree.leaves(got)), [x.sharding for x in jax.tree.leaves(got)]
np.testing.assert_array_equal(got["w"], np.arange(12.0).reshape(3, 4))
assert int(got["step"]) == 5
print("ok")
"""


def test_background_save_and_restore_on_a_4_device_mesh(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    out = subprocess.run(
        [sys.executable, "-c", _MESH_CHECK, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(HERE),
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


class _NoScalars:
    def __init__(self):
        self.steps = []

    def write(self, step, values):
        self.steps.append(step)


def test_train_loop_never_writes_a_non_finite_state(tmp_path):
    # The loop reads a log step's loss one step late and writes that step's snapshot only after the
    # check: with the loss (and state) NaN from step 6 on, checkpoints 2 and 4 are written, 6 not.
    import types

    import ml_collections

    from gradmix_jax.training import trainer

    @jax.jit
    def step_fn(state, batch):
        step = state["step"] + 1
        w = jnp.where(step >= 6, jnp.nan, state["w"] + 1.0)
        return {"step": step, "w": w}, {"loss": jnp.sum(w)}

    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((3,), jnp.float32)}
    saver = checkpoint.BackgroundSaver(checkpoint.make_manager(str(tmp_path)), state)
    config = ml_collections.ConfigDict(
        dict(seed=0, batch_size=2, log_every_steps=2, checkpoint_every_steps=2)
    )
    scalars = _NoScalars()
    with pytest.raises(trainer.NonFiniteLossError, match=r"loss is nan at step 6.*step 4"):
        trainer._train_loop(
            config,
            str(tmp_path),
            step_fn,
            state,
            lambda step: (jnp.zeros((2,)),),  # the step's inputs after the state
            saver,
            scalars,
            trainer._Progress(False, 10, 0),
            types.SimpleNamespace(requested=False),
            0,
            10,
            trainer._Record(str(tmp_path), 0),
        )
    saver.wait_until_finished()
    manager = checkpoint.make_manager(str(tmp_path))
    assert manager.all_steps() == [2, 4]
    got = checkpoint.restore_latest(manager, state)
    assert int(got["step"]) == 4
    np.testing.assert_array_equal(np.asarray(got["w"]), [4.0, 4.0, 4.0])
    assert scalars.steps == [1, 2, 4]  # step 6's metrics were not logged
    with open(tmp_path / "train_history.json") as f:  # the record matches the last checkpoint
        assert [h["step"] for h in json.load(f)["history"]] == [1, 2, 4]


def test_truncated_checkpoint_is_one_readable_line(tmp_path):
    """A data file cut short: the error names the step and TensorStore's reason, on one line,
    without the object reprs Orbax appends."""
    state = {"a": jnp.arange(50_000, dtype=jnp.float32), "b": jnp.ones((64, 64))}
    manager = checkpoint.make_manager(str(tmp_path), 2)
    checkpoint.save(manager, 1, state, force=True)
    manager.wait_until_finished()
    manager.close()
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "checkpoints") for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    manager = checkpoint.make_manager(str(tmp_path), 2)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.restore_latest(manager, state)
    message = str(info.value)
    assert "\n" not in message and "checkpoint at step 1" in message
    assert "<bound method" not in message and "object at 0x" not in message
    assert "delete it" in message
