"""The package layout: library modules at the root, the program in ``training``, tools in
``tools``, and the 0.1.0 import paths of moved modules still working."""

import importlib
import subprocess
import sys

import pytest

import gradmix_jax

MOVED = sorted(gradmix_jax._MOVED.items())


@pytest.mark.parametrize("old,new", MOVED)
def test_old_import_path_is_the_new_module(old, new):
    module = importlib.import_module(f"gradmix_jax.{old}")
    assert module is importlib.import_module(f"gradmix_jax.{new}")
    assert getattr(gradmix_jax, old) is module


def test_old_from_imports_and_monkeypatching_reach_the_same_objects(monkeypatch):
    from gradmix_jax.train_step import StepConfig, make_eval_fn, make_train_step
    from gradmix_jax.trainer import train_and_evaluate
    from gradmix_jax.training import objectives, openset_eval, train_step

    assert StepConfig is objectives.StepConfig and make_eval_fn is openset_eval.make_eval_fn
    assert make_train_step is train_step.make_train_step
    import gradmix_jax.trainer as old
    import gradmix_jax.training.trainer as new

    monkeypatch.setattr(old, "load_data", "patched")
    assert new.load_data == "patched" and train_and_evaluate is new.train_and_evaluate


def test_import_gradmix_jax_stays_light():
    """Importing the package imports neither the program nor jax."""
    code = (
        "import sys, gradmix_jax; print(sorted(m for m in sys.modules if m.startswith("
        "('jax', 'flax', 'gradmix_jax.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_validation_checks_the_library_constants():
    from gradmix_jax import attribution, augment, losses, mixing
    from gradmix_jax.training import objectives, openset_eval, validation

    choices = validation.CHOICES
    assert choices["mixing.method"] is mixing.METHODS
    assert choices["gradmix.fill"] is mixing.FILL_MODES
    assert choices["gradmix.placement"] is mixing.PLACEMENTS
    assert choices["gradmix.ratio_of"] is mixing.RATIO_OF
    assert choices["gradmix.ratio_per"] is mixing.RATIO_PER
    assert choices["gradmix.normalize"] is attribution.NORMALIZE_MODES
    assert choices["gradmix.loss_weight"] is losses.LOSS_WEIGHTS
    assert choices["gradmix.attribution_loss"] is objectives.ATTRIBUTION_LOSSES
    assert choices["augment.preset"] is augment.PRESETS
    assert choices["eval.features"] is openset_eval.FEATURES
    assert validation.OBJECTIVES is objectives.OBJECTIVES
