"""GradMix in JAX/Flax: attribution-based mixing augmentation for open-set recognition.

The package root holds the library: pure, jit/vmap/grad-safe functions other JAX code can embed
(``taps``, ``attribution``, ``mixing``, ``augment``, ``losses``, ``osr``, ``metrics``, ``models``,
``evaluation``, ``attribution_analysis``, ``data``). ``gradmix_jax.training`` is the program built
on it (trainer, train step, input pipeline, checkpoints, configs) and ``gradmix_jax.tools`` its
benchmark and FLOP counter. ``python -m gradmix_jax.train`` and ``python -m gradmix_jax.evaluate``
are the command-line entry points.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Library modules resolve as attributes of the package (``gradmix_jax.losses``), imported on first
# use so ``import gradmix_jax`` stays light.
_SUBMODULES = (
    "attribution",
    "attribution_analysis",
    "augment",
    "data",
    "evaluation",
    "losses",
    "metrics",
    "mixing",
    "models",
    "osr",
    "taps",
    "training",
    "tools",
)

# Modules of the program that lived at the package root in 0.1.0 and keep their old import path
# (``import gradmix_jax.trainer`` is the very module object of ``gradmix_jax.training.trainer``).
_MOVED = {
    "checkpoint": "training.checkpoint",
    "config_base": "training.config_base",
    "parallel": "training.parallel",
    "trained": "training.trained",
    "train_step": "training.train_step",
    "trainer": "training.trainer",
    "validation": "training.validation",
    "workdir": "training.workdir",
    "benchmark": "tools.benchmark",
    "flops": "tools.flops",
}


class _MovedModule(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finder and loader of the old paths in ``_MOVED``: they import the new module itself."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModule) for f in sys.meta_path):
    sys.meta_path.append(_MovedModule())


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _MOVED:
        return importlib.import_module(f"{__name__}.{_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
