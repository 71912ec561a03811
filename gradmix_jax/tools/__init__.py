"""Tools around the program: the step benchmark (``python -m gradmix_jax.tools.benchmark``) and
the analytic FLOP counter it reports model FLOP utilisation with."""
