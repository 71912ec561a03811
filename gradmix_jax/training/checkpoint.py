"""Orbax checkpoints of the TrainState in ``<workdir>/checkpoints`` (async saves, resume)."""

from __future__ import annotations

import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gradmix_jax.files import as_path


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be restored into this run's state."""


#: The folder of a workdir that holds its checkpoints.
CHECKPOINTS = "checkpoints"


def make_manager(
    workdir: str, max_to_keep: int = 2, save_interval_steps: int = 1
) -> ocp.CheckpointManager:
    """The ``CheckpointManager`` of ``<workdir>/checkpoints`` (async saves, old steps deleted in
    the background).

    Arrays are written without compression: Orbax's default zstd adds CPU time to every save, time
    a save takes from training, for a small saving in bytes (see docs/checkpointing.md).
    Checkpoints written compressed (earlier versions) read back the same way.
    """
    directory = as_path(workdir) / CHECKPOINTS
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        save_interval_steps=save_interval_steps,
        enable_async_checkpointing=True,
        enable_background_delete=True,
    )
    # The handler named up front: a fresh process can read a checkpoint's metadata before any save.
    return ocp.CheckpointManager(
        directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler(use_compression=False)
    )


def _restore_args(manager: ocp.CheckpointManager, step: int, template):
    """Restores checkpoint ``step`` as ``template`` (arrays, ``jax.ShapeDtypeStruct`` with
    shardings, or NumPy arrays)."""
    return manager.restore(
        step,
        args=ocp.args.PyTreeRestore(
            template, restore_args=ocp.checkpoint_utils.construct_restore_args(template)
        ),
    )


# On-disk layout: the state's leaves (``jax.tree.leaves`` order) packed into one flat array per
# dtype, ``data_<dtype>``, plus ``layout``: per leaf [dtype group index, ndim, *shape] (int32).
# A few large arrays instead of ~250 small ones: the device-to-host copy is a few DMA transfers
# and Orbax's per-array host work (which holds the GIL, so it stalls the training thread)
# shrinks to a few arrays. ``unpack`` restores the pytree.
LAYOUT_KEY = "layout"
DATA_PREFIX = "data_"


def _dtype_name(leaf) -> str:
    return str(jnp.dtype(leaf.dtype))


def _dtype_groups(tree) -> list[str]:
    return sorted({_dtype_name(leaf) for leaf in jax.tree.leaves(tree)})


def layout_of(tree) -> np.ndarray:
    """int32 [dtype group index, ndim, *shape] per leaf of ``tree`` (arrays or abstract arrays)."""
    groups = _dtype_groups(tree)
    rows: list[int] = []
    for leaf in jax.tree.leaves(tree):
        rows += [groups.index(_dtype_name(leaf)), len(leaf.shape), *leaf.shape]
    return np.asarray(rows, np.int32)


def pack(state) -> dict[str, jax.Array]:
    """{'data_<dtype>': every leaf of that dtype raveled and concatenated}; jit it (one dispatch)."""
    groups: dict[str, list[jax.Array]] = {}
    for leaf in jax.tree.leaves(state):
        groups.setdefault(DATA_PREFIX + _dtype_name(leaf), []).append(leaf.ravel())
    return {k: jnp.concatenate(v) for k, v in groups.items()}


def unpack(packed: dict[str, jax.Array], target):
    """Inverse of ``pack``: the arrays of ``target``'s structure, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(target)
    offsets: dict[str, int] = {}
    out = []
    for leaf in leaves:
        key = DATA_PREFIX + _dtype_name(leaf)
        start, size = offsets.get(key, 0), int(np.prod(leaf.shape, dtype=np.int64))
        out.append(packed[key][start : start + size].reshape(leaf.shape))
        offsets[key] = start + size
    return jax.tree.unflatten(treedef, out)


def _abstract(x):
    return ocp.utils.to_shape_dtype_struct(x) if isinstance(x, jax.Array) else x


def restore_latest(manager: ocp.CheckpointManager, target):
    """Restores the newest checkpoint onto ``target``'s structure and shardings, or returns None.

    ``target``: the state (arrays) or its abstract version (``jax.ShapeDtypeStruct`` with
    shardings). A checkpoint of another model size/optimizer, or a damaged one, raises
    ``CheckpointError``; it is never replaced by a fresh start.
    """
    step = manager.latest_step()
    return None if step is None else restore(manager, step, target)


def restore(manager: ocp.CheckpointManager, step: int, target):
    """Restores checkpoint ``step`` onto ``target`` (see ``restore_latest``)."""
    abstract = jax.tree.map(_abstract, target)
    try:
        saved = manager.item_metadata(step).tree
        if LAYOUT_KEY not in saved:  # the unpacked layout written before the packed one
            return _restore_args(manager, step, abstract)
        want = layout_of(abstract)
        sizes = {k: int(v.shape[0]) for k, v in jax.eval_shape(pack, abstract).items()}
        got = {k: tuple(v.shape) for k, v in saved.items()}
        if got != {LAYOUT_KEY: want.shape, **{k: (n,) for k, n in sizes.items()}}:
            raise ValueError(f"saved arrays {got} are not this state's {sizes}")
        # The packed arrays go where the (replicated) state lives.
        sharding = getattr(jax.tree.leaves(abstract)[0], "sharding", None)
        template = {
            LAYOUT_KEY: np.zeros(want.shape, np.int32),
            **{
                k: jax.ShapeDtypeStruct((n,), jnp.dtype(k[len(DATA_PREFIX) :]), sharding=sharding)
                for k, n in sizes.items()
            },
        }
        packed = _restore_args(manager, step, template)
        if not np.array_equal(np.asarray(packed.pop(LAYOUT_KEY)), want):
            raise ValueError("the saved leaf shapes differ from this state's")
        shardings = [getattr(a, "sharding", None) for a in jax.tree.leaves(abstract)]
        if any(s is None for s in shardings):
            return unpack(packed, abstract)
        treedef = jax.tree.structure(abstract)
        return jax.jit(
            lambda p: unpack(p, abstract), out_shardings=jax.tree.unflatten(treedef, shardings)
        )(packed)
    except Exception as e:  # orbax raises several types for shape/structure mismatches
        raise CheckpointError(
            f"checkpoint at step {step} in {manager.directory} does not match this config "
            f"(model size or optimizer changed?) or is corrupt: {_reason(e)}. Use a new --workdir "
            f"or delete it."
        ) from None


def _reason(error: BaseException) -> str:
    """One readable line for a restore failure: the innermost error of the chain (TensorStore's
    own message, e.g. a byte range beyond a truncated file), without the object reprs Orbax
    appends ("See full TensorStore details: <bound method ...>")."""
    chain = [error]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(nxt)
    for e in reversed(chain):
        text = re.split(r"\s*See full TensorStore details", str(e))[0]
        text = re.sub(r"<[^<>]*object at 0x[0-9a-f]+>|<bound method[^\n]*", "", text).strip()
        if text:
            return f"{type(e).__name__}: {text.splitlines()[0].rstrip('.')}"
    return type(error).__name__


_pack_jit = jax.jit(pack)


def _save_packed(
    manager: ocp.CheckpointManager, step: int, layout: np.ndarray, packed, force: bool
) -> bool:
    return manager.save(step, args=ocp.args.PyTreeSave({LAYOUT_KEY: layout, **packed}), force=force)


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
    """Saves ``state`` in the packed layout (synchronous device-to-host copy, async write)."""
    return _save_packed(manager, step, layout_of(state), _pack_jit(state), force)


def _has_pinned_host(device) -> bool:
    return any(m.kind == "pinned_host" for m in device.addressable_memories())


def _to_pinned_host(x: jax.Array) -> jax.Array:
    """One replica of the replicated ``x``, copied (asynchronously, by DMA) to pinned host memory
    (a sharded ``x`` is returned as it is: Orbax copies its shards)."""
    if not x.sharding.is_fully_replicated:
        return x
    one = x.addressable_shards[0].data if len(x.sharding.device_set) > 1 else x
    return jax.device_put(one, one.sharding.with_memory_kind("pinned_host"))


class BackgroundSaver:
    """Async saves that do not stall the training loop.

    Orbax's ``save`` returns only after the state is in host memory, and its per-array host work
    holds the GIL, so saving the state's many arrays stalls the training loop, also when ``save``
    runs on a background thread (see docs/checkpointing.md). Here a save is: one jitted ``pack`` of
    the state on the device (a few flat arrays, new buffers, so the next step may donate
    ``state``), on an accelerator a DMA of those into pinned host memory (both
    dispatched asynchronously), and ``manager.save`` of the few host arrays on a background thread.
    At most one save is in flight; the next ``save`` (and ``wait``) first waits for it and re-raises its
    error, if any. ``save`` is ``snapshot`` (the device part, before the next step donates the
    state) then ``write``; the trainer calls them apart, so that it can launch the next step
    before it reads the loss that decides whether the snapshot is written.

    With several processes (``jax.process_count() > 1``) ``manager.save`` runs on the calling
    thread: Orbax's multi-process save synchronises the processes, and doing that from a background
    thread while the training thread launches the next steps' cross-process collectives can order
    the two differently on different processes and deadlock.
    """

    def __init__(self, manager: ocp.CheckpointManager, state_template, pinned: bool | None = None):
        """``state_template``: the state (or abstract state with shardings); the packing is compiled
        now, so that the first save does not pay the compilation in the training loop.

        ``pinned``: whether ``snapshot`` also copies the packed arrays to pinned host memory. The
        default (None) does on one process with an accelerator that has such memory, not on CPU:
        there the packed arrays already are fresh host buffers, and the extra copy would take
        cores from the training step.
        """
        self.manager = manager
        self._thread = None
        self._error: BaseException | None = None
        abstract = jax.tree.map(_abstract, state_template)
        self._layout = layout_of(abstract)
        self._pack = jax.jit(pack).lower(abstract).compile()
        device = jax.local_devices()[0]
        if pinned is None:
            pinned = device.platform != "cpu"
        self._pinned = pinned and jax.process_count() == 1 and _has_pinned_host(device)

    def _run(self, step: int, packed, force: bool) -> None:
        try:
            _save_packed(self.manager, step, self._layout, packed, force)
        except BaseException as e:  # re-raised in the training thread
            self._error = e

    def wait(self) -> None:
        """Waits until the pending ``save`` call returned (the write may still be running)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def snapshot(self, state) -> dict[str, jax.Array]:
        """Dispatches the packing of ``state`` on the device (and, with ``pinned``, its DMA to
        pinned host memory) and returns the packed arrays; nothing waits. Call it before the next step
        donates ``state``; hand the result to ``write`` (or drop it to save nothing)."""
        packed = self._pack(state)
        if self._pinned:
            packed = {k: _to_pinned_host(v) for k, v in packed.items()}
        return packed

    def write(self, step: int, snapshot: dict[str, jax.Array], force: bool = False) -> None:
        """Saves a ``snapshot`` as checkpoint ``step`` (on a background thread with one process)."""
        self.wait()
        if jax.process_count() > 1:
            self._run(step, snapshot, force)
            self.wait()
            return
        self._thread = threading.Thread(
            target=self._run,
            args=(step, snapshot, force),
            name=f"checkpoint-save-{step}",
            daemon=True,
        )
        self._thread.start()

    def save(self, step: int, state, force: bool = False) -> None:
        """``write(step, snapshot(state))``."""
        self.write(step, self.snapshot(state), force)

    def wait_until_finished(self) -> None:
        """Every save is on disk (and committed) when this returns."""
        self.wait()
        self.manager.wait_until_finished()
