"""GradMix in JAX/Flax: attribution-based mixing augmentation for open-set recognition."""

__version__ = "0.1.0"

# The library modules resolve as attributes of the package (``gradmix_jax.losses``), imported on
# first use so ``import gradmix_jax`` stays light.
_SUBMODULES = ("attribution", "augment", "checkpoint", "data", "evaluation", "losses", "metrics",
               "mixing", "models", "osr", "parallel", "trained", "trainer", "train_step")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
