"""The training progress bar counts finished steps: it never runs ahead of the device, the loop
dispatches at most ``RUN_AHEAD`` steps ahead of it, and its rate is the run's step time."""

import json
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gradmix_jax.training import checkpoint, trainer


class _Scalars:
    def write(self, step, values):
        pass


class _Bar:
    """Records, at every advance, how many steps the device had finished and dispatched."""

    def __init__(self, finished, dispatched):
        self.finished, self.dispatched, self.calls = finished, dispatched, []

    def advance(self, done):
        self.calls.append((done, len(self.finished), self.dispatched[0]))

    def set_postfix(self, **values):
        pass


def test_the_bar_advances_only_over_finished_steps(tmp_path):
    finished, dispatched = [], [0]

    # Called when the step executes (the steps run in order: each needs the last one's state).
    # An ordered callback would serialise dispatch with execution and hide any run-ahead.
    def on_device(step):
        finished.append(int(step))

    @jax.jit
    def step_fn(state, batch):
        step = state["step"] + 1
        # Some work, so that dispatch can run ahead of execution.
        w = state["w"] + jnp.tanh(batch @ batch.T).sum() * 1e-6
        jax.experimental.io_callback(on_device, None, step, ordered=False)
        return {"step": step, "w": w}, {"loss": jnp.sum(w)}

    def feed(step):
        dispatched[0] = step + 1
        return (jnp.ones((256, 256)),)

    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros((3,), jnp.float32)}
    saver = checkpoint.BackgroundSaver(checkpoint.make_manager(str(tmp_path)), state)
    config = ml_collections.ConfigDict(
        dict(seed=0, batch_size=2, log_every_steps=5, checkpoint_every_steps=20)
    )
    bar = _Bar(finished, dispatched)
    trainer._train_loop(
        config,
        str(tmp_path),
        step_fn,
        state,
        feed,
        saver,
        _Scalars(),
        bar,
        types.SimpleNamespace(requested=False),
        0,
        20,
        trainer._Record(str(tmp_path), 0),
    )
    saver.wait_until_finished()
    assert [done for done, _, _ in bar.calls] == list(range(1, 21))  # every step, in order
    for done, n_finished, n_dispatched in bar.calls:
        assert n_finished >= done  # never a step the device has not finished
        assert n_dispatched <= done + trainer.RUN_AHEAD + 1  # bounded run-ahead


def _bar_rate(stderr: str) -> float:
    """Steps per second of the bar's last line (tqdm prints 'x step/s' or 'x s/step')."""
    line = [seg for seg in stderr.replace("\r", "\n").splitlines() if seg.startswith("train:")][-1]
    match = re.search(r"([\d.]+)(step/s|s/step)", line)
    value = float(match.group(1))
    return value if match.group(2) == "step/s" else 1.0 / value


def test_the_bar_rate_is_the_step_time_of_train_history(tmp_path, make_digits_config, capsys):
    c = make_digits_config()
    c.num_steps, c.batch_size, c.model.width, c.model.feature_dim = 100, 32, 4, 16
    c.log_every_steps, c.checkpoint_every_steps, c.progress_bar = 50, 100, True
    c.eval.id_samples = 0
    trainer.train_and_evaluate(c, str(tmp_path))
    err = capsys.readouterr().err
    history = json.loads((tmp_path / "train_history.json").read_text())
    seconds_per_step = history["train_seconds"] / history["steps_timed"]
    assert np.isclose(1.0 / _bar_rate(err), seconds_per_step, rtol=0.25)
    # images/s appears with the first log step's window, never as a placeholder 0.
    assert "img_s=0," not in err and "img_s=" in err
