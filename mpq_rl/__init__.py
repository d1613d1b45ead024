"""mpq_rl: mixed-precision quantization search with reinforcement learning under hardware budgets.

Importing the package loads nothing heavy (the command line answers ``--help`` at once); ``import mpq_rl.envs``
registers the Gymnasium environment ``mpq_rl/BitWidth-v1``.
"""

__version__ = "0.1.0"
