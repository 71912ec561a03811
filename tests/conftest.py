"""Test-wide settings: cheap XLA compiles (the suite is compile-bound on CPU)."""

import os

# Backend optimisation level 0 roughly halves CPU compile time; results are the same computations.
# Subprocesses started by the tests (the CLI) inherit it.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
