"""Run records are never lost: a finished run is left byte-identical, a resumed run continues its
history and train time, files are strict JSON written atomically."""

import json
import math
import os

import pytest

from gradmix_jax import files
from gradmix_jax.training import trainer
from gradmix_jax.training import workdir as records


@pytest.fixture
def tiny_config(make_digits_config):
    """``tiny_config(num_steps=4)``: a fresh tiny digits config on every call."""

    def make(num_steps=4):
        c = make_digits_config()
        c.num_steps, c.batch_size, c.model.width, c.model.feature_dim = num_steps, 16, 4, 8
        c.data.image_size, c.progress_bar, c.eval.id_samples = 8, False, 0
        c.log_every_steps, c.checkpoint_every_steps = 1, 2
        c.mixing.method = "none"
        return c

    return make


def _strict_load(path):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name} in {path}")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def _files(workdir):
    return {p: (workdir / p).read_bytes() for p in (records.RESULTS, records.HISTORY)}


def test_finished_run_is_left_untouched_and_reevaluates_on_request(tmp_path, tiny_config):
    summary = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    before = _files(tmp_path)
    mtimes = {p: os.stat(tmp_path / p).st_mtime_ns for p in before}
    again = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    assert again["already_finished"] is True and again["num_steps"] == 4
    assert _files(tmp_path) == before  # byte-identical
    assert {p: os.stat(tmp_path / p).st_mtime_ns for p in before} == mtimes  # not even rewritten
    # A non-semantic change (logging cadence) is still the same run.
    c = tiny_config()
    c.log_every_steps = 3
    assert trainer.train_and_evaluate(c, str(tmp_path))["already_finished"] is True
    # Explicit re-evaluation: same numbers, the run's train time and history kept.
    redo = trainer.train_and_evaluate(tiny_config(), str(tmp_path), reevaluate=True)
    assert "already_finished" not in redo
    assert redo["auroc"] == pytest.approx(summary["auroc"], abs=1e-6)
    assert redo["train_seconds"] == pytest.approx(summary["train_seconds"])
    assert redo["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    assert (
        json.loads(before[records.HISTORY])["history"]
        == _strict_load(tmp_path / records.HISTORY)["history"]
    )


class _PreemptAfter:
    """Stands in for the SIGTERM watch: reports a request after ``n`` checks (one per step)."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def requested(self):
        self.n -= 1
        return self.n < 0


def test_resumed_history_and_time_continue_the_interrupted_run(tmp_path, monkeypatch, tiny_config):
    full = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
    want = _strict_load(tmp_path / "full" / records.HISTORY)["history"]

    with monkeypatch.context() as m:
        m.setattr(trainer, "_SigtermWatch", lambda: _PreemptAfter(2))
        with pytest.raises(trainer.TrainingPreempted):
            trainer.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
    first = _strict_load(tmp_path / "cut" / records.HISTORY)
    assert [h["step"] for h in first["history"]] == [1, 2, 3]
    got = trainer.train_and_evaluate(tiny_config(), str(tmp_path / "cut"))
    assert got["resumed_from_step"] == 3
    history = _strict_load(tmp_path / "cut" / records.HISTORY)
    assert [h["step"] for h in history["history"]] == [h["step"] for h in want] == [1, 2, 3, 4]
    for a, b in zip(history["history"], want):
        for key in ("loss", "supcon", "simclr", "grad_norm", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    # The whole run's train time: both processes' timed steps (2 + 0: each first step compiles).
    assert got["train_seconds"] == pytest.approx(history["train_seconds"])
    assert history["train_seconds"] >= first["train_seconds"] > 0
    assert history["steps_timed"] == first["steps_timed"] + 0 == 2
    assert got["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=1e-5)
    _strict_load(tmp_path / "cut" / records.RESULTS)


def test_write_json_is_strict():
    payload = {"a": float("nan"), "b": [float("inf"), 1.5, {"c": -math.inf}], "d": None}
    text = json.dumps(files.strict(payload), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [None, 1.5, {"c": None}], "d": None}


def test_a_kill_during_a_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "results.json")
    files.write_json(path, {"auroc": 0.9})

    def killed(fd):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"auroc": 0.1, "other": list(range(1000))})
    assert _strict_load(path) == {"auroc": 0.9}


@pytest.mark.parametrize("case", ["file", "under_file", "read_only"])
def test_unusable_workdir_is_one_line_before_any_data(tmp_path, case, monkeypatch, tiny_config):
    from gradmix_jax.training.validation import ConfigError

    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    workdir = {"file": blocker, "under_file": blocker / "run", "read_only": tmp_path / "ro"}[case]
    if case == "read_only":
        workdir.mkdir()
        workdir.chmod(0o500)
        if os.access(workdir, os.W_OK):  # root ignores permission bits: simulate the refusal

            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(type(files.as_path(workdir)), "write_bytes", refuse)

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the workdir check")

    monkeypatch.setattr(trainer, "load_data", no_data)
    with pytest.raises(
        ConfigError, match=r"--workdir .* (cannot be created|is not a directory|is not writable)"
    ) as err:
        trainer.train_and_evaluate(tiny_config(), str(workdir))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob(".write_check*")) and blocker.read_text() == "not a folder"


def test_new_workdir_under_a_read_only_folder(tmp_path, monkeypatch, tiny_config):
    from gradmix_jax.training.validation import ConfigError

    monkeypatch.setattr(records.os, "access", lambda path, mode: False)  # as on a read-only mount
    with pytest.raises(ConfigError, match=f"cannot be created: {tmp_path} is not writable"):
        trainer.train_and_evaluate(tiny_config(), str(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()


def test_progress_bar_starts_after_the_compiling_step(capsys):
    bar = trainer._Progress(True, total=5, start=1)
    assert "compiling the train step (step 2 of 5)" in capsys.readouterr().err
    bar.set_postfix(loss="1.0")  # before the bar exists: nothing to show yet
    assert bar.bar is None
    bar.advance(2)  # the compiled step: the bar appears at 2 of 5, its clock starts now
    assert bar.bar.n == 2 and bar.bar.total == 5
    bar.advance(3)
    assert bar.bar.n == 3
    bar.close()
    quiet = trainer._Progress(False, total=5, start=0)
    quiet.advance(1)
    assert quiet.bar is None and "compiling" not in capsys.readouterr().err


def test_runs_saved_before_a_field_existed_still_match(digits_config):
    """A stored config without label_smoothing is a run at its default (0.0), not another run."""
    stored = json.loads(json.dumps(digits_config.to_dict()))
    del stored["label_smoothing"]
    assert records.config_differences(stored, digits_config) == []
    digits_config.label_smoothing = 0.1
    assert records.config_differences(stored, digits_config) == ["label_smoothing"]


def test_step_config_of_an_older_saved_config(digits_config):
    import ml_collections

    from gradmix_jax.training.objectives import StepConfig

    old = digits_config.to_dict()
    del old["label_smoothing"]
    assert StepConfig.from_config(ml_collections.ConfigDict(old)).label_smoothing == 0.0
