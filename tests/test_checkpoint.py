"""Resume after SIGKILL ends where an uninterrupted run ends; SIGTERM saves and exits; bad checkpoints."""

import json
import os
import signal
import subprocess
import time

import pytest

LONG = [
    "--config.num_steps=160",
    "--config.checkpoint_every_steps=40",
    "--config.log_every_steps=20",
    "--config.batch_size=16",
]


@pytest.fixture
def start_cli(repo_root, train_cli_command):
    """``start_cli(workdir, *extra)``: the tiny digits train CLI started in the background."""

    def start(workdir, *extra):
        cmd = train_cli_command(workdir, *extra)
        return subprocess.Popen(
            cmd, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    return start


def wait_for_checkpoint(proc, workdir, step, timeout=300):
    path = workdir / "checkpoints" / str(step)
    t0 = time.time()
    while not path.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, run_cli, start_cli, pipeline):
    args = (*LONG, f"--config.data.pipeline={pipeline}")
    full = tmp_path / "full"
    run_cli(full, *args)
    want = json.loads((full / "results.json").read_text())
    assert want["input_pipeline"] == pipeline

    killed = tmp_path / "killed"
    proc = start_cli(killed, *args)
    wait_for_checkpoint(proc, killed, 40)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    run_cli(killed, *args)
    got = json.loads((killed / "results.json").read_text())
    assert 40 <= got["resumed_from_step"] < 160
    assert got["final_train_loss"] == pytest.approx(want["final_train_loss"], rel=1e-5)
    assert got["auroc"] == pytest.approx(want["auroc"], abs=1e-6)
    assert got["closed_set_accuracy"] == pytest.approx(want["closed_set_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, start_cli):
    workdir = tmp_path / "run"
    proc = start_cli(workdir, *LONG)
    wait_for_checkpoint(proc, workdir, 40)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = [line for line in err.splitlines() if line.startswith("preempted at step")]
    assert line, err[-2000:]
    step = int(line[0].split()[3].rstrip(":"))
    assert step >= 40 and (workdir / "checkpoints" / str(step)).is_dir()
    assert not (workdir / "results.json").exists()


def test_incompatible_and_corrupt_checkpoints_are_refused(
    tmp_path, run_cli, repo_root, train_cli_command
):
    workdir = tmp_path / "run"
    run_cli(workdir, "--config.num_steps=2", "--config.checkpoint_every_steps=2")
    # another model size in the same workdir: a clear error, not a silent fresh start
    cmd = train_cli_command(workdir, "--config.num_steps=4", "--config.model.width=8")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and "checkpoint at step 2" in errors[0] and "does not match" in errors[0]
    )
    # corrupt the array data of the checkpoint
    for root, _, files in os.walk(workdir / "checkpoints" / "2"):
        for name in files:
            if name not in ("_CHECKPOINT_METADATA",):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\x00garbage")
    out = subprocess.run(cmd[:-1], capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint at step 2" in errors[0]


@pytest.mark.parametrize("pinned", [None, True])
def test_background_saver_snapshot_survives_donation(tmp_path, monkeypatch, pinned):
    """The saved values are the state at save time even though the next step donates (and
    overwrites) the state's buffers while the save is still running; with and without the copy
    to pinned host memory (by default not made on CPU, where the packed arrays are host memory)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from gradmix_jax.training import checkpoint

    state = {"w": jnp.arange(100_000, dtype=jnp.float32), "step": jnp.asarray(3, jnp.int32)}
    bump = jax.jit(lambda s: {"w": s["w"] + 1.0, "step": s["step"] + 1}, donate_argnums=0)
    saver = checkpoint.BackgroundSaver(checkpoint.make_manager(str(tmp_path)), state, pinned)
    kinds = {v.sharding.memory_kind for v in saver.snapshot(state).values()}
    assert kinds == ({"pinned_host"} if pinned else {state["w"].sharding.memory_kind})
    saver.save(3, state)
    for _ in range(5):
        state = bump(state)
    saver.save(8, state)
    saver.wait_until_finished()
    assert not saver.manager.is_saving_in_progress()
    assert saver.manager.all_steps() == [3, 8]
    template = {"w": jnp.zeros(100_000, jnp.float32), "step": jnp.asarray(0, jnp.int32)}
    restored = checkpoint.restore(saver.manager, 3, template)
    np.testing.assert_array_equal(restored["w"], np.arange(100_000, dtype=np.float32))
    assert int(restored["step"]) == 3
    assert float(checkpoint.restore_latest(saver.manager, template)["w"][0]) == 5.0

    # A save that fails on the background thread is re-raised in the training thread.
    def failing_save(step, args=None, force=False):
        raise OSError(f"disk full at step {step}")

    monkeypatch.setattr(saver.manager, "save", failing_save)
    saver.save(9, state)
    with pytest.raises(OSError, match="disk full at step 9"):
        saver.wait_until_finished()
    saver.wait_until_finished()  # the error is reported once
