"""Shared pieces of the evaluation runners (Tables 4-6): train-or-reuse a cell, load the trained
model, the cell's data, and evaluation results cached as JSON next to the cell's results.json."""

from __future__ import annotations

import json
from typing import Any, Callable

from experiments.common import run_cell
from gradmix_jax import files
from gradmix_jax.files import read_json  # noqa: F401  (the runners import it from here)

TrainFn = Callable[[Any, str], dict]
LoadFn = Callable[[str], Any]


def default_train(config, workdir: str) -> dict:
    from gradmix_jax.training import trainer

    return trainer.train_and_evaluate(config, workdir)


def default_load(workdir: str):
    from gradmix_jax.training.trained import load_trained

    return load_trained(workdir)


class Cell:
    """One trained configuration: trains it unless ``workdir/results.json`` exists; the model is
    loaded only when an evaluation is not cached yet (so a finished table re-renders instantly)."""

    def __init__(
        self, workdir: str, config, train_fn: TrainFn | None = None, load_fn: LoadFn | None = None
    ):
        from gradmix_jax.training.config_base import resolve_recipe

        self.workdir = workdir
        self.config = resolve_recipe(config)  # gradmix.recipe's fields filled in, as trained
        self.results = run_cell(workdir, config, train_fn or default_train)
        self._load_fn = load_fn or default_load
        self._trained = None

    @property
    def trained(self):
        if self._trained is None:
            self._trained = self._load_fn(self.workdir)
        return self._trained

    def features(self, images, which: str | None = None):
        """Eval-mode features [N, D] of uint8 images [N, H, W, C] (``config.eval.features`` by default)."""
        return self.trained.features(images, which=which or self.config.eval.features)


def cell_data(config):
    """The split the cell was trained on (the trainer's own loader: lazy where it streams)."""
    from gradmix_jax.training.pipeline import load_data

    return load_data(config)


def write_json(path: str, payload: dict) -> None:
    """``gradmix_jax.files.write_json`` (strict, atomic; the folder is made if needed)."""
    files.write_json(path, payload)


def cached_json(path: str, settings: dict, compute: Callable[[], dict]) -> dict:
    """``compute()`` once per ``settings``: reads ``path`` when its stored settings are equal,
    otherwise computes, stores ``{'settings': settings, **result}`` and returns it."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they come back from disk
    stored = read_json(path)
    if stored is not None and stored.get("settings") == settings:
        return stored
    payload = {"settings": settings, **compute()}
    write_json(path, payload)
    return payload


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"
