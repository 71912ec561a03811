"""Orbax checkpoints of the TrainState in ``<workdir>/checkpoints`` (async saves, resume)."""

from __future__ import annotations

import os
import threading

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


@jax.jit
def _snapshot(state):
    # A device-side copy (one dispatch): the training loop may donate ``state`` to the next step
    # while the snapshot is still being copied to the host.
    return jax.tree.map(lambda x: x.copy(), state)


class BackgroundSaver:
    """Async saves that do not stall the training loop.

    Orbax's ``save`` returns only after the state has been copied to host memory (the file write
    then runs in the background). For a ResNet18 state (~140 MB) that copy stalls the step that
    saves. Here the step's state is first copied ON the device (one jitted copy, fast and
    asynchronous), and ``manager.save`` runs on a helper thread with that snapshot, so the
    device-to-host copy overlaps the following steps. At most one save is in flight; the next
    ``save`` (and ``wait_until_finished``) first waits for it and re-raises its error, if any.

    With several processes (``jax.process_count() > 1``) ``save`` runs on the calling thread:
    Orbax's multi-process save synchronises the processes, and doing that from a helper thread
    while the training thread launches the next steps' cross-process collectives can order the
    two differently on different processes and deadlock.
    """

    def __init__(self, manager: ocp.CheckpointManager, state_template=None):
        """``state_template``: a state (or abstract state with shardings) to compile the snapshot
        copy for now, so that the first save does not pay that compilation in the training loop."""
        self.manager = manager
        self._thread = None
        self._error: BaseException | None = None
        self._copy = _snapshot if state_template is None else _snapshot.lower(state_template).compile()

    def _run(self, step: int, snapshot, force: bool) -> None:
        try:
            save(self.manager, step, snapshot, force=force)
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

    def save(self, step: int, state, force: bool = False) -> None:
        self.wait()
        if jax.process_count() > 1:
            save(self.manager, step, state, force=force)
            return
        snapshot = self._copy(state)
        self._thread = threading.Thread(target=self._run, args=(step, snapshot, force),
                                        name=f"checkpoint-save-{step}", daemon=True)
        self._thread.start()

    def in_progress(self) -> bool:
        """Whether a save is still being copied to the host or written (no waiting)."""
        if self._thread is not None and self._thread.is_alive():
            return True
        return self.manager.is_saving_in_progress()

    def wait_until_finished(self) -> None:
        """Every save is on disk (and committed) when this returns."""
        self.wait()
        self.manager.wait_until_finished()
