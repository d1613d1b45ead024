"""Adaptive-precision training (MARViN / AdaPT): per-layer fixed-point formats that change during training.

:mod:`~mpq_rl.adapt.rule` is the rule (a state machine, no training inside), :mod:`~mpq_rl.adapt.fixed_point`
the number format, :mod:`~mpq_rl.adapt.speedup` the training speed-up model, :mod:`~mpq_rl.adapt.training` the
loop that applies them, and :mod:`~mpq_rl.adapt.run` the ``mpq-rl adapt`` command's run folder. See docs/adapt.md.
"""
