"""GradMix in JAX/Flax: attribution-based mixing augmentation for open-set recognition.

The package root holds the library: pure, jit/vmap/grad-safe functions other JAX code can embed
(``taps``, ``attribution``, ``mixing``, ``augment``, ``losses``, ``osr``, ``metrics``, ``models``,
``evaluation``, ``attribution_analysis``, ``data``, ``files``). ``gradmix_jax.training`` is the
program built on it (trainer, train step, input pipeline, checkpoints, configs) and
``gradmix_jax.tools`` its benchmarks and FLOP counter; the library never imports either.
``python -m gradmix_jax.train`` and ``python -m gradmix_jax.evaluate`` are the command-line entry
points.
"""

import importlib

__version__ = "0.1.0"

# Library modules resolve as attributes of the package (``gradmix_jax.losses``), imported on first
# use so ``import gradmix_jax`` stays light.
_SUBMODULES = (
    "attribution",
    "attribution_analysis",
    "augment",
    "data",
    "evaluation",
    "files",
    "losses",
    "metrics",
    "mixing",
    "models",
    "osr",
    "taps",
)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
