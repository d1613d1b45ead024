"""mpq_rl: mixed-precision quantization search with reinforcement learning under hardware budgets."""

__version__ = "0.1.0"
