"""CPU stand-in for the GPU checkpoint-stall question: does the saving thread's Python slow the
training loop through the GIL, and does a shorter switch interval or the trainer's pipelined
loop hide it?

    python scripts/ckpt_stall_cpu_proxy.py --json OUT.json [--modes none,production,production_si]

XLA runs on ONE core here (the other one is left to the saving thread), and the "step" is a
synthetic jitted function on the real ResNet18 width-64 ``TrainState`` (Adam; same ~250 leaves
and bytes as the benchmark's): it scales every float leaf (the state is donated and rewritten, as
in training) and runs a few matmuls, about as long as a GPU step. ``benchmark.checkpoint_stall``
then times it around two saves, synchronously (each step waited for) and pipelined (as the trainer
runs). Modes:

  none           a saver that saves nothing (the noise floor of the windows)
  production     ``checkpoint.BackgroundSaver`` as shipped
  production_si  the same with ``sys.setswitchinterval(5e-4)`` for the whole run
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                           " intra_op_parallelism_threads=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gradmix_jax import benchmark, checkpoint  # noqa: E402
from gradmix_jax.config_base import get_base_config  # noqa: E402
from gradmix_jax.models import model_from_config  # noqa: E402
from gradmix_jax.train_step import init_state, make_optimizer  # noqa: E402


class NoSaver:
    def __init__(self, manager, state):
        self.manager = manager

    def save(self, step, state, force=False):
        pass

    def in_progress(self):
        return False

    def wait_until_finished(self):
        pass


def make_step(matmuls: int):
    def step(state, x, labels, idx):
        y = x
        for _ in range(matmuls):
            y = jnp.tanh(y @ x)
        scale = 1.0 - 1e-6 * jnp.mean(y)
        state = jax.tree.map(
            lambda p: p * scale.astype(p.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, state)
        return state, {"loss": jnp.sum(y)}
    return jax.jit(step, donate_argnums=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--modes", default="none,production,production_si")
    ap.add_argument("--matmuls", type=int, default=6)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    c = get_base_config()
    c.model.width = 64
    model = model_from_config(c)
    tx, _ = make_optimizer(1e-3, 1e-5, 1000)
    state = init_state(model, tx, jax.random.key(0), (32, 32, 3))
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(args.size, args.size)) / args.size,
                    jnp.float32)
    step = make_step(args.matmuls)
    compiled = step.lower(state, x, None, None).compile()
    for _ in range(3):
        state, m = compiled(state, x, None, None)
    jax.block_until_ready(state)
    out = {"jax": jax.__version__, "state_bytes": nbytes,
           "leaves": len(jax.tree.leaves(state)), "runs": []}
    print(f"state {nbytes / 1e6:.0f} MB in {out['leaves']} leaves", flush=True)
    for _ in range(args.repeats):
        for mode in args.modes.split(","):
            sys.setswitchinterval(5e-4 if mode.endswith("_si") else 5e-3)
            make = NoSaver if mode == "none" else checkpoint.BackgroundSaver
            for pipelined in (False, True):
                st, state = benchmark.checkpoint_stall(compiled, state, x, None, None,
                                                       make_saver=make, pipelined=pipelined,
                                                       clean_steps=8)
                row = {"mode": mode, "timing": st["mode"],
                       "median_ms": 1e3 * st["median_step_seconds"],
                       "saves": [{"window": s["window_steps"], "worst": round(s["ratio"], 3),
                                  "mean": round(s["mean_ratio"], 3),
                                  "excess_ms": round(1e3 * s["excess_seconds"], 1)}
                                 for s in st["saves"]],
                       "steps_ms": [None if t is None else round(1e3 * t, 2)
                                    for t in st["step_seconds_all"]]}
                out["runs"].append(row)
                print(f"{mode:14s} {st['mode']:11s} median {row['median_ms']:.1f} ms",
                      row["saves"], flush=True)
            sys.setswitchinterval(5e-3)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
