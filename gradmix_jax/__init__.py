"""GradMix in JAX/Flax: attribution-based mixing augmentation for open-set recognition."""

__version__ = "0.1.0"
