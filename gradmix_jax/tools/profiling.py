"""A profile of the compiled train step: a ``jax.profiler`` trace and the HLO text with counts of
the ops that cost time without doing model math (copies, transposes, custom calls...)."""

from __future__ import annotations

import re

import jax

from gradmix_jax.files import as_path, write_text_atomic

HLO_OPS = tuple(
    "convolution custom-call dot transpose copy fusion all-reduce all-gather while sort scatter "
    "gather".split()
)


def hlo_op_counts(hlo_text: str) -> dict[str, int]:
    """How often the ops that cost time without doing model math appear in compiled HLO text."""
    ops = re.findall(r"=\s*[^\s]+\s+([a-z][a-z0-9-]*)\(", hlo_text)
    kinds = HLO_OPS
    return {k: sum(op == k for op in ops) for k in kinds}


def profile_step(compiled, state, images, labels, idx, directory: str, steps: int = 3):
    """A ``jax.profiler`` trace of ``steps`` steps (view in TensorBoard/Perfetto) and the compiled
    step's HLO in ``directory``; returns the HLO op counts."""
    text = compiled.as_text()
    write_text_atomic(as_path(directory) / "train_step_gradmix.hlo.txt", text)
    with jax.profiler.trace(directory):
        for _ in range(steps):
            state, m = compiled(state, images, labels, idx)
        jax.block_until_ready((state, m))
    return {"dir": directory, "hlo_op_counts": hlo_op_counts(text)}
