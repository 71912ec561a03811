"""The training program: ``train_and_evaluate(config, workdir)`` and what it is made of.

``trainer`` (the loop, its records and the run's stages), ``train_step`` (the one jitted step),
``objectives`` (the loss terms), ``pipeline`` (device-resident data and per-step batch indices),
``openset_eval`` (the evaluation a run reports), ``checkpoint``, ``parallel`` (mesh and
shardings), ``validation`` (config checks), ``config_base`` (the base config), ``workdir`` (run
records on any epath filesystem) and ``trained`` (a finished run as a Python object).
"""
