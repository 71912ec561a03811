"""Argument checks shared by the library functions (private).

Every check here reads only static facts -- Python types, array shapes and dtypes -- so it
holds the same way eagerly, under ``jax.jit`` (where arrays are tracers with a known shape and
dtype), ``jax.vmap`` and ``jax.grad``. None of them reads an array's values. Each raises one
single-line ``TypeError`` / ``ValueError`` that names the argument, the expected layout and what
was given.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def describe(value: object) -> str:
    """Short description of what was passed: ``'int 0'``, ``'float32 array of shape (2,)'``."""
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is not None and shape is not None:
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return f"a PRNG key array of shape {tuple(shape)}"
        return f"{np.dtype(dtype).name} array of shape {tuple(shape)}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


@functools.lru_cache(maxsize=None)
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """Shape of a legacy raw key (``jax.random.PRNGKey``) of the configured PRNG implementation."""
    del impl  # only the cache key
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def raw_key_shape() -> tuple[int, ...]:
    return _raw_key_shape(str(jax.config.jax_default_prng_impl))


def check_key(name: str, key: object) -> None:
    """One PRNG key: a typed key of shape ``()`` or a legacy raw ``uint32[2]`` key.

    Under ``jax.vmap`` over split keys the per-example key has exactly these shapes, so a
    function checked here works inside vmap too. Raises TypeError otherwise.
    """
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and shape is not None:
        shape = tuple(shape)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
            raise TypeError(
                f"{name} must be a single PRNG key (shape ()), got a PRNG key array of shape "
                f"{shape}: pass one key, e.g. {name}[0], or vmap over the keys"
            )
        if np.dtype(dtype) == np.uint32 and shape == raw_key_shape():
            return
    raise TypeError(
        f"{name} must be a PRNG key (jax.random.key(seed), or a raw uint32{list(raw_key_shape())} "
        f"key from jax.random.PRNGKey(seed)), got {describe(key)}"
    )


def check_floating_images(name: str, images: jax.Array, layout: str = "[B, H, W, C]") -> None:
    """``images`` has a floating-point dtype (callers check its rank against ``layout``)."""
    dtype = jnp.result_type(images)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name} must be floating point {layout}; got {np.dtype(dtype).name}: convert first, "
            f"e.g. {name}.astype(jnp.float32) / 255"
        )


def check_min_batch(name: str, shape: tuple[int, ...], layout: str, why: str) -> None:
    """Leading axis of ``shape`` (the batch) holds at least 2 samples."""
    if shape[0] < 2:
        raise ValueError(
            f"{name} must hold at least 2 samples ({layout} with B >= 2); got batch size "
            f"{shape[0]} (shape {tuple(shape)}): {why}"
        )


def plausible_size(a: int, b: int, height: int, width: int) -> bool:
    """``(a, b)`` could be a downsampled ``(height, width)``: fits inside, aspect within 2x."""
    if not (1 <= a <= height and 1 <= b <= width):
        return False
    aspect = (a / b) / (height / width)
    return 0.5 <= aspect <= 2.0


def looks_channels_first(shape: tuple[int, ...], height: int, width: int) -> bool:
    """A ``[B, a, b, c]`` shape that does not fit NHWC for ``(height, width)`` images but fits NCHW."""
    _, a, b, c = shape
    return not plausible_size(a, b, height, width) and plausible_size(b, c, height, width)
