"""Orbax checkpoints of the TrainState in ``<workdir>/checkpoints`` (async saves, resume)."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be restored into this run's state."""


def make_manager(workdir: str, max_to_keep: int = 2, save_interval_steps: int = 1
                 ) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           save_interval_steps=save_interval_steps,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory, options=options)


def restore_latest(manager: ocp.CheckpointManager, target):
    """Restores the newest checkpoint onto ``target``'s structure and shardings, or returns None."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises several types for shape/structure mismatches
        raise CheckpointError(
            f"checkpoint at step {step} in {manager.directory} does not match this config "
            f"(model size or optimizer changed?) or is corrupt: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Use a new --workdir or delete it.") from None


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.StandardSave(state), force=force)
